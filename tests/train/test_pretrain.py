import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _ports import free_port

from fmmm.train.metrics import read_jsonl

CONFIG = "configs/pretrain/smoke.yaml"
ROOT = Path(__file__).resolve().parents[2]
QUIET = ["train.logging.progress=false"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("corpus_cache"))


def train(run_dir, cache_dir, *overrides, launcher=(sys.executable, "-m", "fmmm.train")):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*launcher, CONFIG, f"out_dir={run_dir}", f"data.cache_dir={cache_dir}", *QUIET]
    result = subprocess.run(
        [*command, *overrides], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return read_jsonl(Path(run_dir) / "metrics.jsonl")


def test_smoke_pretraining_logs_every_objective_and_fills_the_run_dir(tmp_path, cache_dir):
    rows = train(tmp_path, cache_dir)
    assert [r["step"] for r in rows] == list(range(1, 7))
    for key in ("ar_loss", "contrastive_image_loss", "contrastive_audio_loss", "masked_loss"):
        assert key in rows[0], key
    assert all(r["tokens_per_second"] > 0 for r in rows)
    for name in ("config.yaml", "model/config.json", "model/model.safetensors",
                 "model/tokenizers/text/text_tokenizer.json", "tokenizers/image/image_tokenizer.json"):  # fmt: skip
        assert (tmp_path / name).is_file(), name
    assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and 0 < summary["mfu"] < 1
    evals = [e for e in read_jsonl(tmp_path / "events.jsonl") if e["event"] == "eval"]
    assert len(evals) == 2  # before training and at the end
    assert evals[-1]["eval/image_to_text_chance"] == pytest.approx(1 / 16)
    assert 0 <= evals[-1]["eval/image_to_text_recall@1"] <= 1


def test_resumed_pretraining_replays_the_same_losses(tmp_path, cache_dir):
    overrides = ["train.steps=4", "train.checkpoint.every=2", "train.eval_at_start=false"]
    first = train(tmp_path, cache_dir, *overrides)
    shutil.rmtree(tmp_path / "ckpt" / "step_000004")  # as if killed after checkpoint 2
    second = train(tmp_path, cache_dir, *overrides)
    assert [r["loss"] for r in second] == [r["loss"] for r in first]


@pytest.mark.slow
def test_two_processes_with_half_batches_match_one_process_with_the_whole_batch(
    tmp_path, cache_dir
):
    overrides = ["objectives.masked=0", "train.steps=2", "train.eval_at_start=false"]
    one = train(tmp_path / "one", cache_dir, *overrides)
    accelerate = Path(sys.executable).with_name("accelerate")
    launcher = (str(accelerate), "launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(free_port()), "-m", "fmmm.train")  # fmt: skip
    two = train(tmp_path / "two", cache_dir, *overrides, launcher=launcher)
    assert len(one) == len(two) == 2
    for a, b in zip(one, two):
        for key in ("loss", "contrastive_image_loss", "contrastive_video_loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key
        assert b["tokens"] == a["tokens"]  # both saw the same global batch
