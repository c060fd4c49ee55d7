"""FSDP2, sharded checkpoints and per-block compile on CPU (gloo), through the real Trainer."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import _train_lm
import pytest
import torch
from _ports import free_port

from fmmm.models.multimodal import MultimodalModel
from fmmm.train import checkpoint as ckpt
from fmmm.train.metrics import read_jsonl
from fmmm.train.parallel import FSDPConfig, bucket_length, length_buckets, parallelize

LM = Path(__file__).with_name("_train_lm.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")
BASE = [
    "train.steps=3",
    "train.batch_size=8",
    "train.logging.tensorboard=false",
    "train.logging.progress=false",
    "train.checkpoint.every=1",
    "train.checkpoint.keep=0",
    "train.optim.lr=1e-2",
    "train.optim.warmup_steps=1",
    "train.prefetch=false",
    "train.peak_flops=1e9",
]
FSDP = ["train.distributed=fsdp"]


def losses(run_dir: Path) -> list[float]:
    return [row["loss"] for row in read_jsonl(run_dir / "metrics.jsonl")]


def command(run_dir: Path, processes: int, *overrides: str) -> list[str]:
    launcher = [sys.executable]
    if processes > 1:
        port = str(free_port())
        launcher = [str(TORCHRUN), "--nproc_per_node", str(processes), "--master_port", port]
    return [*launcher, str(LM), str(run_dir), *BASE, *overrides]


def train(run_dir: Path, processes: int = 1, *overrides: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command(run_dir, processes, *overrides),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 3 steps on one process (no sharding) and sharded over two processes."""
    root = tmp_path_factory.mktemp("parallel")
    train(root / "one", 1)
    train(root / "fsdp2", 2, *FSDP)
    return root


def test_fsdp_on_two_processes_matches_one_process_losses_and_parameters(runs):
    assert losses(runs / "fsdp2") == pytest.approx(losses(runs / "one"), abs=1e-5)
    one = MultimodalModel.from_pretrained(runs / "one" / "model").state_dict()
    sharded = MultimodalModel.from_pretrained(runs / "fsdp2" / "model").state_dict()  # consolidated
    initial = MultimodalModel(_train_lm.tiny_config()).state_dict()
    for name, value in one.items():
        assert torch.allclose(sharded[name], value, atol=1e-5), name
    moved = sum(not torch.equal(initial[k], one[k]) for k in ("lm_head.weight", "embed.weight"))
    assert moved == 2  # the comparison is over parameters that training changed


def test_sharded_checkpoint_of_two_processes_resumes_on_one_to_the_same_losses(runs, tmp_path):
    run_dir = tmp_path / "resumed"
    shutil.copytree(runs / "fsdp2", run_dir)
    for step in (2, 3):
        shutil.rmtree(run_dir / "ckpt" / ckpt.step_dir_name(step))
    assert ckpt.is_sharded(run_dir / "ckpt" / "step_000001")
    train(run_dir, 1, *FSDP)
    assert losses(run_dir) == pytest.approx(losses(runs / "fsdp2"), abs=1e-5)
    resumed = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "resume"]
    assert resumed[-1]["path"].endswith("step_000001")


def test_sharded_checkpoint_loads_without_processes_into_the_plain_model(runs):
    state = ckpt.load_sharded_model_state(runs / "fsdp2" / "ckpt" / "step_000003", "model.")
    model = MultimodalModel(_train_lm.tiny_config())
    model.load_state_dict(state)
    final = MultimodalModel.from_pretrained(runs / "fsdp2" / "model").state_dict()
    assert all(torch.equal(final[k], v) for k, v in model.state_dict().items())


def test_sharded_checkpoint_resumes_to_identical_losses_after_sigkill(tmp_path):
    steps = ["train.steps=8", "train.checkpoint.every=3", *FSDP]
    train(tmp_path / "ref", 1, *steps)
    run_dir = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        command(run_dir, 1, *steps, "sleep=0.15"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 120
    while not (run_dir / "ckpt" / "step_000003").exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "checkpoint 3 never appeared"
        time.sleep(0.02)
    time.sleep(0.3)  # past the checkpoint, so later metrics must be replayed
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 3 < len(losses(run_dir)) < 8, "the run must die between checkpoint 3 and the end"
    train(run_dir, 1, *steps)
    assert losses(run_dir) == losses(tmp_path / "ref")  # bitwise, every step


def test_compile_recompiles_at_most_once_per_length_bucket():
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    torch.manual_seed(0)
    compiled, eager = _train_lm.TinyLM(), _train_lm.TinyLM()
    eager.load_state_dict(compiled.state_dict())
    parallelize(compiled, "ddp", FSDPConfig(), compile_backend=counting_backend)
    buckets = length_buckets(_train_lm.MAX_LEN, 4)
    lengths = [5, 40, 12, 20, 48, 9]
    try:
        for step, length in enumerate(lengths):
            ids = torch.randint(0, _train_lm.VOCAB, (2 + step % 4, bucket_length(length, buckets)))
            out = compiled({"ids": ids})
            out["loss"].backward()
            assert out["loss"].item() == pytest.approx(eager({"ids": ids})["loss"].item(), abs=1e-5)
    finally:
        torch._dynamo.reset()
    assert len({bucket_length(n, buckets) for n in lengths}) == len(buckets) == 4
    assert 1 <= len(graphs) <= len(buckets)  # two blocks share one graph; batch sizes vary freely


def test_train_compile_from_the_config_matches_eager_losses_with_bounded_compiles(tmp_path):
    from torch._dynamo.utils import counters

    overrides = [*BASE, "train.steps=4", "train.checkpoint.every=0", "variable_length=true"]
    eager = _train_lm.run(str(tmp_path / "eager"), overrides)
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled = _train_lm.run(
            str(tmp_path / "compiled"),
            [*overrides, "train.compile=true", "train.compile_backend=eager"],
        )
        graphs = counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    assert compiled.step == eager.step == 4
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), abs=1e-5)
    assert 1 <= graphs <= len(length_buckets(_train_lm.MAX_LEN, 4)), graphs


def test_length_buckets_double_up_to_the_context():
    assert length_buckets(48, 4) == (8, 16, 24, 48)
    assert length_buckets(2048, 4) == (256, 512, 1024, 2048)
    assert bucket_length(17, (8, 16, 24, 48)) == 24
    assert bucket_length(60, (8, 16)) == 60


@pytest.mark.slow
def test_fsdp_pretraining_recipe_matches_one_process_and_saves_a_loadable_model(tmp_path):
    from fmmm import encoders

    root = Path(__file__).resolve().parents[2]
    overrides = [f"data.cache_dir={tmp_path / 'cache'}", "train.logging.progress=false",
                 "objectives.masked=0", "train.steps=2"]  # fmt: skip
    accelerate = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu",
                  "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no", "--main_process_port", str(free_port())]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, launcher, extra in (
        ("one", [sys.executable], []),
        ("fsdp2", accelerate, ["train.distributed=fsdp"]),
    ):
        result = subprocess.run(
            [
                *launcher,
                "-m",
                "fmmm.train",
                "configs/pretrain/smoke.yaml",
                f"out_dir={tmp_path / name}",
                *overrides,
                *extra,
            ],  # fmt: skip
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    one, sharded = (read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("one", "fsdp2"))
    for a, b in zip(one, sharded, strict=True):
        for key in ("loss", "contrastive_image_loss", "contrastive_audio_loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), key
    evals = [e for e in read_jsonl(tmp_path / "fsdp2" / "events.jsonl") if e["event"] == "eval"]
    assert len(evals) == 2  # at the start and the end, on the sharded module
    reference = MultimodalModel.from_pretrained(tmp_path / "one" / "model").state_dict()
    consolidated = MultimodalModel.from_pretrained(tmp_path / "fsdp2" / "model").state_dict()
    assert all(torch.allclose(consolidated[k], v, atol=1e-5) for k, v in reference.items())
    assert encoders.load(tmp_path / "fsdp2" / "model", "image") is not None
