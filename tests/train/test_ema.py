import shutil

import pytest
import torch
from _train_toy import ToyModule, ToyStream
from safetensors.torch import load_file

from fmmm.config import load_config
from fmmm.train.checkpoint import EMA_FILE
from fmmm.train.trainer import Trainer, TrainerConfig

BASE = [
    "steps=12",
    "batch_size=8",
    "logging.tensorboard=false",
    "logging.progress=false",
    "checkpoint.every=1",
    "checkpoint.keep=0",
    "optim.warmup_steps=2",
    "optim.lr=5e-2",
    "prefetch=false",
]


def make_trainer(run_dir, *overrides, evaluate=None):
    cfg = load_config(TrainerConfig, None, [*BASE, *overrides])
    torch.manual_seed(cfg.seed)
    module = ToyModule(dropout=0.0)
    return Trainer(cfg, module, ToyStream(cfg.batch_size, []), run_dir, evaluate=evaluate)


def weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_the_average_follows_the_warmed_up_decay_over_every_applied_step(tmp_path):
    decay = 0.9
    trainer = make_trainer(tmp_path, f"ema_decay={decay}")
    trainer.train()
    ckpts = tmp_path / "ckpt"
    expected = weights(ckpts / "step_000000" / "model.safetensors")
    for step in range(1, 13):
        current = weights(ckpts / f"step_{step:06d}" / "model.safetensors")
        factor = min(decay, (1 + step) / (10 + step))
        expected = {k: factor * v + (1 - factor) * current[k] for k, v in expected.items()}
        stored = weights(ckpts / f"step_{step:06d}" / EMA_FILE)
        for name, value in expected.items():
            torch.testing.assert_close(stored[name], value, rtol=1e-5, atol=1e-6)
    # the trained module is the average, which differs from the last optimizer weights
    final = dict(trainer.module.named_parameters())
    for name, value in expected.items():
        torch.testing.assert_close(final[name].detach(), value, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(expected[k], current[k]) for k in expected)


def test_evaluation_sees_the_average_and_training_goes_on_from_its_own_weights(tmp_path):
    seen = []

    def evaluate(model):
        seen.append({k: v.detach().clone() for k, v in model.named_parameters()})
        return {"x": 0.0}

    trainer = make_trainer(tmp_path, "ema_decay=0.9", "eval_every=6", evaluate=evaluate)
    trainer.train()
    assert len(seen) == 2  # step 6, and the end
    ckpt6 = tmp_path / "ckpt" / "step_000006"
    average6, raw6 = weights(ckpt6 / EMA_FILE), weights(ckpt6 / "model.safetensors")
    for name, value in seen[0].items():
        torch.testing.assert_close(value, average6[name])
    # step 7 started from the optimizer's weights: the same run without an average has them
    plain = make_trainer(tmp_path / "plain", "eval_every=6")
    plain.train()
    raw7 = weights(tmp_path / "ckpt" / "step_000007" / "model.safetensors")
    plain7 = weights(tmp_path / "plain" / "ckpt" / "step_000007" / "model.safetensors")
    for name in raw7:
        torch.testing.assert_close(raw7[name], plain7[name])
    assert any(not torch.allclose(average6[k], raw6[k]) for k in raw6)


def test_resume_restores_the_average_exactly(tmp_path):
    whole = make_trainer(tmp_path / "whole", "ema_decay=0.95")
    whole.train()
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "ckpt").mkdir(parents=True)
    shutil.copytree(
        tmp_path / "whole" / "ckpt" / "step_000005", resumed_dir / "ckpt" / "step_000005"
    )
    resumed = make_trainer(resumed_dir, "ema_decay=0.95")
    resumed.train()
    assert resumed.step == 12
    a = weights(tmp_path / "whole" / "ckpt" / "step_000012" / EMA_FILE)
    b = weights(resumed_dir / "ckpt" / "step_000012" / EMA_FILE)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_resuming_a_run_without_an_average_asks_for_ema_decay_0(tmp_path):
    make_trainer(tmp_path, "steps=3").train()
    with pytest.raises(ValueError, match="written with train.ema_decay=0"):
        make_trainer(tmp_path, "steps=6", "ema_decay=0.9").train()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["ema_decay=1.0"], r"train.ema_decay must be in \[0, 1\)"),
        (["ema_decay=-0.1"], r"train.ema_decay must be in \[0, 1\)"),
        (["ema_decay=0.9", "distributed=fsdp"], "not supported with train.distributed=fsdp"),
    ],
)
def test_bad_ema_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(TrainerConfig, None, [*BASE, *overrides])
