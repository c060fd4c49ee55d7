"""Fault drills: a process killed while writing, every checkpoint corrupt, a full disk. Each is
followed by a re-run that completes with nothing lost; a failure is one line, exit 2."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmmm.train import checkpoint as ckpt
from fmmm.train.metrics import read_jsonl

from .conftest import CliResult, assert_one_line_error, checksums, cli_env, unchanged

FAULTS = Path(__file__).with_name("_faults.py")
TOY = ["train.batch_size=8", "train.checkpoint.keep=2", "train.logging.tensorboard=false",
       "train.logging.progress=false", "train.prefetch=false"]  # fmt: skip


def start(fault: str, target: str, *args) -> subprocess.Popen:
    """`target` (a module, or `toy`) running under `fault` (see _faults.py), in the background."""
    command = [sys.executable, str(FAULTS), fault, target, *map(str, args)]
    env = cli_env(TQDM_DISABLE="1")  # a progress bar is not an error line
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def run(fault: str, target: str, *args) -> CliResult:
    process = start(fault, target, *args)
    stdout, stderr = process.communicate(timeout=300)
    return CliResult(process.returncode, stdout, stderr)


def kill_when(process: subprocess.Popen, ready, timeout: float = 120) -> None:
    """SIGKILL `process` as soon as `ready()` holds; fail if it ended first."""
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, f"finished before the kill: {process.communicate()[1]}"
        assert time.time() < deadline, "the moment to kill never came"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate()


def losses(run_dir: Path) -> dict[int, float]:
    rows = read_jsonl(run_dir / "metrics.jsonl")
    steps = [row["step"] for row in rows]
    assert len(steps) == len(set(steps)), f"a step is logged twice: {steps}"
    return {row["step"]: row["loss"] for row in rows}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted toy runs of 4 and 8 steps, to compare resumed runs against."""
    root = tmp_path_factory.mktemp("reference")
    for steps in (4, 8):
        result = run("none", "toy", root / str(steps), f"train.steps={steps}",
                     "train.checkpoint.every=2", *TOY)  # fmt: skip
        assert result.returncode == 0, result.stderr
    return {steps: losses(root / str(steps)) for steps in (4, 8)}


@pytest.mark.slow
def test_sigkill_inside_checkpoint_writes_then_resume_loses_nothing(tmp_path, reference):
    run_dir = tmp_path / "run"
    args = [run_dir, "train.steps=8", "train.checkpoint.every=2", *TOY]
    for step in (4, 6):  # killed inside the writes of two different checkpoints
        process = start("slow:0.3", "toy", *args)
        partial = run_dir / "ckpt" / f".{ckpt.step_dir_name(step)}.*.tmp"
        kill_when(process, lambda partial=partial: any(partial.parent.glob(partial.name)))
        assert not any(ckpt.checkpoint_problem(p) for p in ckpt.list_checkpoints(run_dir / "ckpt"))
    result = run("none", "toy", *args)
    assert result.returncode == 0, result.stderr
    assert losses(run_dir) == reference[8]  # every step once, bit-exact
    assert not list((run_dir / "ckpt").glob(".*"))


def test_all_checkpoints_corrupt_restarts_with_logs_trimmed_and_a_valid_checkpoint_kept(
    tmp_path, reference
):
    run_dir = tmp_path / "run"
    first = run("none", "toy", run_dir, "train.steps=10", "train.checkpoint.every=2", *TOY)
    assert first.returncode == 0, first.stderr
    for folder in ckpt.list_checkpoints(run_dir / "ckpt"):  # steps 10 and 8
        weights = folder / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:64])
    result = run("none", "toy", run_dir, "train.steps=4", "train.checkpoint.every=2", *TOY)
    assert result.returncode == 0, result.stderr
    assert losses(run_dir) == reference[4]
    events = read_jsonl(run_dir / "events.jsonl")
    assert max(row["step"] for row in events) == 4
    assert sum(row["event"] == "corrupt_checkpoint" for row in events) == 2
    valid = [p.name for p in ckpt.list_checkpoints(run_dir / "ckpt") if ckpt.is_valid(p)]
    assert valid == ["step_000004", "step_000002"]  # keep=2 counts valid ones only


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_what_was_written(
    tmp_path, reference
):
    run_dir = tmp_path / "run"
    args = [run_dir, "train.checkpoint.every=2", *TOY]
    assert run("none", "toy", *args, "train.steps=4").returncode == 0
    # writes 1 and 2 trim the logs on resume; write 3 is the step-6 checkpoint's weights
    with unchanged(run_dir / "ckpt"):
        full = run("enospc:3", "toy", *args, "train.steps=8")
    assert_one_line_error(full, "no space left on device")
    again = run("none", "toy", *args, "train.steps=8")
    assert again.returncode == 0, again.stderr
    assert losses(run_dir) == reference[8]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from fmmm.collect import collect

    root = tmp_path_factory.mktemp("drills") / "reach"
    collect("reach", 2, root, seed=0, workers=1, progress=False)
    return root


def _data_files(root: Path) -> dict[str, str]:
    """Checksums keyed relative to `root`, videos left out (their encoder stamps no run twice
    alike on every platform); meta and data files are compared byte for byte."""
    return {
        str(Path(k).relative_to(root)): v
        for k, v in checksums(root).items()
        if not k.endswith(".mp4")
    }


def test_a_full_disk_during_an_export_keeps_the_earlier_export(dataset, tmp_path):
    out = tmp_path / "lerobot"
    assert run("none", "fmmm.datasets", "export-lerobot", dataset, out).returncode == 0
    with unchanged(dataset, tmp_path):
        result = run("enospc:1", "fmmm.datasets", "export-lerobot", dataset, out, "--overwrite")
    assert_one_line_error(result, "no space left on device")


def test_a_killed_export_is_completed_by_a_rerun_and_the_earlier_export_survives(dataset, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "out"
    for folder in (reference, out):
        assert run("none", "fmmm.datasets", "export-lerobot", dataset, folder).returncode == 0
    earlier = checksums(out)
    process = start("slow:0.5", "fmmm.datasets", "export-lerobot", dataset, out, "--overwrite")
    kill_when(process, lambda: any(p.name.startswith(".out.") for p in tmp_path.iterdir()))
    assert checksums(out) == earlier
    result = run("none", "fmmm.datasets", "export-lerobot", dataset, out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert _data_files(out) == _data_files(reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "reference"]  # no temp left


def test_a_killed_collect_is_completed_by_a_rerun_with_nothing_lost(tmp_path):
    from fmmm.collect import collect

    reference = tmp_path / "reference"
    collect("reach", 4, reference, seed=0, workers=1, progress=False)
    neighbour = tmp_path / "notes.txt"
    neighbour.write_text("the user's own file")
    out = tmp_path / "demos"
    args = ["--task", "reach", "--episodes", "4", "--out", out]
    with unchanged(neighbour, reference):
        process = start("slow:0.3", "fmmm.collect", *args)
        kill_when(process, lambda: bool(list((out / ".staging").glob("attempt_*.json"))))
        assert not (out / "meta" / "info.json").exists()
        result = run("none", "fmmm.collect", *args)
    assert result.returncode == 0, result.stderr
    assert _data_files(out) == _data_files(reference)


def test_a_killed_dedup_is_completed_by_a_rerun_to_identical_output(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for shard in range(4):
        rows = [
            {"text": f"document {i % 7} about robots and arms number {i % 7}"} for i in range(40)
        ]
        rows += [{"text": f"unique text {shard} {i}"} for i in range(20)]
        (inputs / f"part{shard}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    with unchanged(inputs):
        assert run("none", "fmmm.data", "dedup", "-i", inputs, "-o", out).returncode == 0
        finished = checksums(out)
        shutil.rmtree(out)  # the same output again, this time interrupted
        process = start("slow:0.2", "fmmm.data", "dedup", "-i", inputs, "-o", out)
        kill_when(process, lambda: (out / ".work").exists())
        assert not (out / "report.json").exists()
        result = run("none", "fmmm.data", "dedup", "-i", inputs, "-o", out)
    assert result.returncode == 0, result.stderr
    visible = {k: v for k, v in checksums(out).items() if "/.work" not in k}
    assert visible == {k: v for k, v in finished.items() if "/.work" not in k}
