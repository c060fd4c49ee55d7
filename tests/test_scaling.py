"""Scale accounting: exact counts, FLOPs against a FLOP counter, memory, planner, CLI."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fmmm.models.backbone import Transformer, TransformerConfig, preset
from fmmm.models.multimodal import MultimodalConfig, MultimodalModel
from fmmm.scaling import (
    PRESETS,
    ModelShape,
    chinchilla_loss,
    compute_optimal,
    device_peak_flops,
    main,
    meta_parameter_count,
    per_gpu_memory,
    shape_of,
    training_memory,
)

VOCAB = 100
MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
DEBUG_YAML = str(MODEL_CONFIGS / "debug.yaml")
CONFIGS = [
    preset("debug"),
    TransformerConfig(dim=96, n_layers=3, n_heads=6, n_kv_heads=3, qk_norm=True),
    TransformerConfig(dim=64, n_layers=2, n_heads=4, n_experts=4, experts_top_k=2, ffn_hidden=96),
    TransformerConfig(dim=128, n_layers=1, n_heads=2, n_kv_heads=1, ffn_multiple_of=64),
]


class _LM(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, config.dim)
        self.backbone = Transformer(config)
        self.head = nn.Linear(config.dim, VOCAB, bias=False)

    def forward(self, ids):
        return self.head(self.backbone(self.embed(ids))[0])


@pytest.mark.parametrize("config", CONFIGS, ids=range(len(CONFIGS)))
def test_parameter_formula_equals_instantiated_module(config):
    real = sum(p.numel() for p in _LM(config).parameters())
    assert shape_of(config, VOCAB).parameters() == real
    assert meta_parameter_count(lambda: _LM(config)) == real


def test_meta_count_of_multimodal_model_allocates_nothing_and_is_exact():
    config = MultimodalConfig(backbone=preset("debug"), state_dim=7)
    assert meta_parameter_count(lambda: MultimodalModel(config)) == sum(
        p.numel() for p in MultimodalModel(config).parameters()
    )
    big = MultimodalConfig(backbone=TransformerConfig(dim=8192, n_layers=80, n_heads=64))
    assert meta_parameter_count(lambda: MultimodalModel(big)) > 60e9  # would need > 240 GB


# The README: "Preset counts agree with the published figures within 0.25%".
README_TOLERANCE = 0.0025


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_published_shapes_match_published_counts_within_readme_tolerance(name):
    shape = PRESETS[name]
    assert abs(shape.parameters() / shape.published - 1) < README_TOLERANCE


def test_mixtral_active_parameters_match_published_within_readme_tolerance():
    assert abs(PRESETS["mixtral-8x7b"].parameters(active=True) / 12.9e9 - 1) < README_TOLERANCE


@pytest.mark.parametrize("config", CONFIGS[:2] + CONFIGS[3:], ids=range(3))
def test_matmul_flops_equal_flop_counter_on_real_training_step(config):
    torch.manual_seed(0)
    model, length = _LM(config), 32
    with FlopCounterMode(display=False) as counter:
        model(torch.randint(0, VOCAB, (2, length))).sum().backward()
    shape = shape_of(config, VOCAB, seq_len=length)
    attention = 12 * config.n_layers * config.n_heads * config.head_dim * length
    norms = (2 * config.n_layers + 1) * config.dim + (
        2 * config.n_layers * config.head_dim if config.qk_norm else 0
    )
    # The counter sees the matmuls (not SDPA on CPU nor elementwise norms): 6 * (N - emb - norms).
    assert (
        counter.get_total_flops() / (2 * length) == shape.flops_per_token() - attention - 6 * norms
    )


def test_flops_per_token_follow_six_n_plus_attention_for_llama2_7b():
    shape = PRESETS["llama2-7b"]
    non_embedding = shape.parameters() - 32000 * 4096
    assert shape.flops_per_token(4096) == 6 * non_embedding + 12 * 32 * 32 * 128 * 4096


def test_memory_estimate_terms_and_checkpointing_saves_activations():
    shape = PRESETS["llama2-7b"]
    fp32 = training_memory(shape, 1, 4096, "fp32")
    mixed = training_memory(shape, 1, 4096, "bf16-mixed")
    assert fp32["weights"] == shape.parameters() * 4 and fp32["optimizer"] == 2 * fp32["weights"]
    assert mixed["activations"] < fp32["activations"]
    assert mixed["activations_checkpointed"] < mixed["activations"] / 5
    with pytest.raises(ValueError, match="precision"):
        training_memory(shape, 1, 16, "int3")


def test_compute_optimal_plan_spends_the_budget():
    budget = 5.76e23  # Chinchilla's budget
    plan = compute_optimal(budget)
    rule = plan["tokens_per_parameter"]
    assert rule["tokens"] == pytest.approx(20 * rule["parameters"])
    assert 6 * rule["parameters"] * rule["tokens"] == pytest.approx(budget)
    fit = plan["approach3"]
    assert 6 * fit["parameters"] * fit["tokens"] == pytest.approx(budget)
    # Approach 3 is the minimum of L(N, C / 6N) along the budget.
    for factor in (0.8, 1.25):
        n = fit["parameters"] * factor
        assert chinchilla_loss(n, budget / (6 * n)) > fit["loss"]
    assert math.isclose(chinchilla_loss(1e40, 1e40), 1.69, abs_tol=1e-6)
    with pytest.raises(ValueError, match="FLOP budget"):
        compute_optimal(-1)


def test_bad_shape_raises():
    with pytest.raises(ValueError, match="divisible"):
        ModelShape(dim=100, n_layers=1, n_heads=3, ffn_hidden=8, vocab_size=10)


def test_cli_prints_plan_for_preset_and_config(capsys):
    assert main(["--preset", "llama3-8b", "--flops", "1e22"]) == 0
    out = capsys.readouterr().out
    assert "8,030,261,248" in out and "approach3" in out and "GiB" in out
    assert main([DEBUG_YAML, "backbone.n_layers=3", "--seq-len", "128"]) == 0
    out = capsys.readouterr().out
    config = MultimodalConfig(
        backbone=preset("debug", n_layers=3, max_seq_len=256), state_dim=32, embed_dim=64
    )
    assert f"{sum(p.numel() for p in MultimodalModel(config).parameters()):,}" in out


def test_cli_bad_input_exits_two_with_one_line_error():
    result = subprocess.run(
        [sys.executable, "-m", "fmmm.scaling", DEBUG_YAML, "backbone.n_heads=3"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "n_heads" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--gpus", "0"], "--gpus must be >= 1"),
        (["--gpus", "8", "--gpu-memory", "-1"], "--gpu-memory"),
    ],
)
def test_gpu_plan_flags_that_cannot_be_meant_are_refused(flags, message, capsys):
    assert main([DEBUG_YAML, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.parametrize("path", sorted(MODEL_CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_model_configs_load_and_count(path):
    from fmmm.config import load_config

    config = load_config(MultimodalConfig, path)
    assert meta_parameter_count(lambda: MultimodalModel(config)) > 0


def _measured_peak_bytes(config: MultimodalConfig, batch_size: int, seq_len: int) -> float:
    """Peak live tensor memory of an AdamW training step, tracked per allocation (MemTracker)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    torch.manual_seed(0)
    model = MultimodalModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, config.text_vocab_size, (batch_size, seq_len))

    def step():
        hidden, _ = model.backbone(model.embed(ids))  # plain causal: fused attention on CPU too
        logits = model.lm_head(hidden)  # (B, T, V)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # AdamW state exists from here on, as in every later step
    tracker = MemTracker()
    tracker.track_external(model, optimizer)
    with tracker:
        step()
    return sum(tracker.get_tracker_snapshot("peak")[torch.device("cpu")].values()) / 2


@pytest.mark.parametrize("checkpointing", [False, True], ids=["full", "checkpointed"])
def test_memory_accounting_of_small_config_is_within_20_percent_of_measured_peak(checkpointing):
    from fmmm.config import load_config

    overrides = [f"backbone.checkpoint_activations={str(checkpointing).lower()}"]
    config = load_config(MultimodalConfig, MODEL_CONFIGS / "small.yaml", overrides)
    batch_size, seq_len = 8, 256
    exact = meta_parameter_count(lambda: MultimodalModel(config))
    shape = shape_of(config.backbone, config.vocab_size, config.tie_embeddings, seq_len)
    plan = per_gpu_memory(shape, batch_size, seq_len, "fp32", 1, exact)["ddp"]
    estimate = plan["total_checkpointed" if checkpointing else "total"]
    measured = _measured_peak_bytes(config, batch_size, seq_len)
    assert abs(estimate / measured - 1) < 0.2, (estimate / 2**20, measured / 2**20)


def test_fsdp_plan_shards_the_states_and_only_fsdp_fits_7b_on_8_gpus():
    from fmmm.config import load_config

    config = load_config(MultimodalConfig, MODEL_CONFIGS / "7b.yaml")
    shape = shape_of(config.backbone, config.vocab_size, config.tie_embeddings, 4096)
    plans = per_gpu_memory(shape, 1, 4096, "bf16-mixed", gpus=8)
    ddp, fsdp = plans["ddp"], plans["fsdp"]
    for key in ("weights", "gradients", "optimizer"):
        assert fsdp[key] == pytest.approx(ddp[key] / 8)
    assert fsdp["activations"] == ddp["activations"] and 0 < fsdp["gathered"] < ddp["weights"] / 8
    assert ddp["total_checkpointed"] > 80 * 2**30 > fsdp["total"]
    assert per_gpu_memory(shape, 1, 4096, gpus=1)["fsdp"]["total"] == ddp["total"]


def test_cli_plans_ddp_and_fsdp_per_gpu_and_says_what_fits(capsys):
    assert main([str(MODEL_CONFIGS / "7b.yaml"), "--seq-len", "4096", "--gpus", "8",
                 "--gpu-memory", "80"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "per GPU on 8 GPUs" in out and "FSDP" in out
    fits = next(line for line in out.splitlines() if line.strip().startswith("fits in 80 GiB"))
    assert fits.split()[-2:] == ["no", "yes"]  # DDP, FSDP


def test_peak_flops_come_from_the_gpu_table_or_a_cached_cpu_probe(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert device_peak_flops("cuda", "bf16") == 989e12
    assert device_peak_flops("cuda", "fp32") == 989e12 / 2
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Mystery GPU")
    with pytest.raises(ValueError, match="peak_flops"):
        device_peak_flops("cuda")
    probed = device_peak_flops("cpu")
    assert 1e8 < probed < 1e14 and device_peak_flops("cpu") == probed
