import json

import numpy as np
import pytest
import torch
from torch import nn

from fmmm.train.checkpoint import (
    capture_rng_state,
    checkpoint_problem,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from fmmm.train.optim import OptimConfig, build_optimizer, build_scheduler


def make(seed: int):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    net[2].weight = net[0].weight  # tied weights are stored once and re-tied on load
    opt = build_optimizer(net, OptimConfig(lr=0.1, warmup_steps=2))
    sched = build_scheduler(opt, OptimConfig(lr=0.1, warmup_steps=2), 10)
    return net, opt, sched


def train_steps(net, opt, sched, n):
    for _ in range(n):
        net(torch.randn(4, 3)).square().mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def test_checkpoint_round_trip_restores_model_optimizer_scheduler_and_rng(tmp_path):
    net, opt, sched = make(0)
    train_steps(net, opt, sched, 3)
    save_checkpoint(
        tmp_path,
        3,
        module=net,
        optimizer=opt,
        scheduler=sched,
        trainer_state={"data_offset": 7},
        rng_states=[capture_rng_state()],
    )
    train_steps(net, opt, sched, 2)
    reference = [p.detach().clone() for p in net.parameters()]
    expected_next, expected_np = torch.rand(5), np.random.rand(3)

    net2, opt2, sched2 = make(1)
    state, rngs = load_checkpoint(
        tmp_path / "step_000003", module=net2, optimizer=opt2, scheduler=sched2
    )
    assert state == {"data_offset": 7, "step": 3}
    restore_rng_state(rngs[0])
    train_steps(net2, opt2, sched2, 2)
    for a, b in zip(reference, net2.parameters()):
        assert torch.equal(a, b)
    assert net2[2].weight is net2[0].weight
    assert torch.equal(torch.rand(5), expected_next)
    assert np.array_equal(np.random.rand(3), expected_np)
    files = sorted(p.name for p in (tmp_path / "step_000003").iterdir())
    assert not any(name.endswith((".pt", ".pkl", ".bin")) for name in files)


def test_only_newest_k_checkpoints_are_kept_and_manifest_lists_checksums(tmp_path):
    net, opt, sched = make(0)
    for step in (1, 2, 3, 4):
        save_checkpoint(
            tmp_path,
            step,
            module=net,
            optimizer=opt,
            scheduler=sched,
            trainer_state={},
            rng_states=[capture_rng_state()],
            keep=2,
        )
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000004", "step_000003"]
    manifest = json.loads((tmp_path / "step_000004" / "manifest.json").read_text())
    assert len(manifest["files"]["model.safetensors"]) == 64 and manifest["step"] == 4


def test_truncated_or_unlisted_checkpoint_is_reported_and_skipped(tmp_path):
    net, opt, sched = make(0)
    for step in (1, 2):
        save_checkpoint(
            tmp_path,
            step,
            module=net,
            optimizer=opt,
            scheduler=sched,
            trainer_state={},
            rng_states=[capture_rng_state()],
        )
    (tmp_path / "step_000002" / "optimizer.safetensors").write_bytes(b"")
    assert "checksum mismatch in optimizer.safetensors" == checkpoint_problem(
        tmp_path / "step_000002"
    )
    with pytest.warns(UserWarning, match="step_000002"):
        assert latest_valid_checkpoint(tmp_path).name == "step_000001"
    (tmp_path / "step_000001" / "manifest.json").unlink()
    with pytest.warns(UserWarning):
        assert latest_valid_checkpoint(tmp_path) is None
    with pytest.raises(ValueError, match="not usable: no manifest"):
        load_checkpoint(tmp_path / "step_000001", module=net)


def test_cuda_rng_states_are_restored_in_device_order_past_ten_devices(monkeypatch):
    state = capture_rng_state()
    for device in range(12):
        state[f"cuda{device}"] = torch.full((4,), device, dtype=torch.uint8)
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 12)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.extend)
    restore_rng_state(state)
    assert [int(s[0]) for s in restored] == list(range(12))  # not cuda0, cuda1, cuda10, cuda11, ...
