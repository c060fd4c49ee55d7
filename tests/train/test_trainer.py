import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import _train_toy
import pytest
import torch

from fmmm.train.checkpoint import list_checkpoints
from fmmm.train.metrics import read_jsonl

TOY = Path(__file__).with_name("_train_toy.py")
BASE = [
    "train.steps=40",
    "train.batch_size=16",
    "train.logging.tensorboard=false",
    "train.logging.progress=false",
    "train.checkpoint.every=10",
    "train.optim.warmup_steps=5",
    "train.optim.lr=1e-2",
    "train.prefetch=false",
]


def losses(run_dir: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_jsonl(run_dir / "metrics.jsonl")}


def events(run_dir: Path, kind: str) -> list[dict]:
    return [row for row in read_jsonl(run_dir / "events.jsonl") if row["event"] == kind]


def launch(run_dir: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(TOY), str(run_dir), *BASE, *overrides],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_sigkill_then_resume_reproduces_uninterrupted_losses_exactly(tmp_path):
    reference = _train_toy.run(str(tmp_path / "ref"), BASE)
    assert reference.status == "completed"
    run_dir = tmp_path / "killed"
    proc = launch(run_dir, "train.prefetch=true", "sleep=0.03")
    wait_for(run_dir / "ckpt" / "step_000020", proc)
    time.sleep(0.1)  # let it run past the checkpoint, so metrics after it must be replayed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = losses(run_dir)
    assert 20 < max(written) < 40, "the run must die between checkpoint 20 and the end"
    resumed = _train_toy.run(str(run_dir), BASE)
    assert resumed.status == "completed" and resumed.step == 40
    assert [e["path"] for e in events(run_dir, "resume")][-1].endswith("step_000020")
    assert losses(run_dir) == losses(tmp_path / "ref")  # bitwise, every step
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 40


def test_sigterm_writes_checkpoint_and_exits_cleanly(tmp_path):
    proc = launch(tmp_path, "sleep=0.03", "train.steps=400")
    wait_for(tmp_path / "ckpt" / "step_000010", proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "status=preempted" in out
    newest = list_checkpoints(tmp_path / "ckpt")[0]
    step = int(newest.name.split("_")[1])
    assert step == max(losses(tmp_path)) and 10 <= step < 400
    assert events(tmp_path, "preempted")
    resumed = _train_toy.run(str(tmp_path), [*BASE, f"train.steps={step + 5}"])
    assert resumed.step == step + 5 and events(tmp_path, "resume")[-1]["step"] == step


def test_resume_skips_corrupt_newest_checkpoint_with_warning(tmp_path):
    _train_toy.run(str(tmp_path), [*BASE, "train.steps=30"])
    ckpt_dir = tmp_path / "ckpt"
    assert [p.name for p in list_checkpoints(ckpt_dir)] == [
        "step_000030",
        "step_000020",
        "step_000010",
    ]
    weights = ckpt_dir / "step_000030" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="skipping corrupt checkpoint .*step_000030.*checksum"):
        result = _train_toy.run(str(tmp_path), [*BASE, "train.steps=35"])
    assert events(tmp_path, "resume")[-1]["path"].endswith("step_000020")
    assert events(tmp_path, "corrupt_checkpoint")
    assert result.step == 35


def test_planted_spike_step_is_skipped_and_training_continues(tmp_path):
    _train_toy.run(str(tmp_path / "clean"), BASE)
    result = _train_toy.run(str(tmp_path / "spiked"), [*BASE, "poison=[25]"])
    skips = events(tmp_path / "spiked", "skip")
    assert [s["data_step"] for s in skips] == [25]
    assert result.skipped_steps == 1 and result.rollbacks == 0 and result.step == 40
    final = losses(tmp_path / "spiked")[40]
    assert torch.isfinite(torch.tensor(final)) and final < 3 * losses(tmp_path / "clean")[40] + 1


def test_persistent_spike_rolls_back_and_skips_the_bad_data_window(tmp_path):
    result = _train_toy.run(str(tmp_path), [*BASE, "poison=[23,24,25]"])
    rollbacks = events(tmp_path, "rollback")
    assert len(rollbacks) == 1 and rollbacks[0]["path"].endswith("step_000020")
    skipped = [s["data_step"] for s in events(tmp_path, "skip")]
    assert skipped == [23, 24, 25]  # then rolled back to step 20 with data resuming at step 26
    assert result.step == 40 and result.rollbacks == 1
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if not r["skipped"])
    final = json.loads((list_checkpoints(tmp_path / "ckpt")[0] / "trainer.json").read_text())
    assert final["data_offset"] == 26 - 20  # after rollback to step 20, data resumes at step 26


def test_gradient_accumulation_matches_the_whole_batch_in_one_step(tmp_path):
    whole = _train_toy.run(str(tmp_path / "whole"), [*BASE, "train.steps=8", "dropout=0"])
    accumulated = _train_toy.run(
        str(tmp_path / "accum"), [*BASE, "train.steps=8", "dropout=0", "train.grad_accum=4"]
    )
    assert whole.step == accumulated.step == 8
    for step, loss in losses(tmp_path / "whole").items():
        assert losses(tmp_path / "accum")[step] == pytest.approx(loss, rel=1e-5)


def test_prefetch_is_auto_off_on_cpu_and_on_on_accelerators_unless_set():
    from fmmm.train.trainer import TrainerConfig, use_prefetch

    assert TrainerConfig().prefetch is None
    assert use_prefetch(None, "cpu") is False and use_prefetch(None, "cuda") is True
    assert use_prefetch(True, "cpu") is True and use_prefetch(False, "cuda") is False
