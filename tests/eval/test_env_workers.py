import os
import signal
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest

from fmmm.eval.env_slots import EnvWorkerError
from fmmm.eval.rollout import LockstepWorker, evaluate
from fmmm.policies.factory import policy_registry


class _PixelPolicy:
    """A deterministic batch policy whose actions follow the camera images, so that rows equal
    only when every env renders the same pixels wherever it runs; `bad_slot` gets NaN actions and
    `interrupt_after` batches raise KeyboardInterrupt."""

    bad_slot: int | None = None
    interrupt_after: int | None = None

    def __init__(self):
        self.batches = 0

    def reset(self) -> None:
        self.reset_index(0)

    def reset_index(self, index: int) -> None:
        pass

    def act(self, observation: dict) -> np.ndarray:
        return self.act_batch([observation], [0])[0]

    def act_batch(self, observations: list[dict], indices: list[int]) -> np.ndarray:
        self.batches += 1
        if self.interrupt_after is not None and self.batches > self.interrupt_after:
            raise KeyboardInterrupt
        actions = []
        for observation, index in zip(observations, indices, strict=True):
            agentview = observation["agentview"].mean(axis=(0, 1)) / 255 - 0.5
            wrist = observation["wrist"].mean(axis=(0, 1)) / 255 - 0.5
            grip = 10 * observation["state"][6] - 0.5
            action = np.concatenate([agentview, wrist, [grip]]).astype(np.float32)
            actions.append(np.full(7, np.nan, np.float32) if index == self.bad_slot else action)
        return np.stack(actions)


class _ChunkedPixelPolicy(_PixelPolicy):
    """`_PixelPolicy` predicting chunks of 5 actions from the observation at the chunk's start
    and executing 3 of them (`execute`, `queued`), so envs may step ahead of each other."""

    execute = 3

    def __init__(self):
        super().__init__()
        self.queues: dict[int, list[np.ndarray]] = {}
        self.forward_batches: list[int] = []

    def reset_index(self, index: int) -> None:
        self.queues[index] = []

    def queued(self, index: int) -> int:
        return len(self.queues.get(index, []))

    def act_batch(self, observations: list[dict], indices: list[int]) -> np.ndarray:
        empty = [k for k, index in enumerate(indices) if not self.queues.get(index)]
        if empty:
            self.forward_batches.append(len(empty))
            chunks = super().act_batch(
                [observations[k] for k in empty], [indices[k] for k in empty]
            )
            for k, action in zip(empty, chunks, strict=True):
                steps = [action * (1 - 0.2 * step) for step in range(5)]
                self.queues[indices[k]] = steps[: self.execute]
        return np.stack([self.queues[index].pop(0) for index in indices])


_BUILT: list[_PixelPolicy] = []


def _load_pixel_policy(run_dir, config):
    def factory(env):
        policy = _ChunkedPixelPolicy() if config.get("chunked") else _PixelPolicy()
        _BUILT.append(policy)
        policy.bad_slot = config.get("bad_slot")
        policy.interrupt_after = config.get("interrupt_after")
        return policy

    return factory


@pytest.fixture
def pixel_policy(tmp_path):
    """A run directory of `_PixelPolicy` with the given settings."""
    if "pixel_test" not in policy_registry:
        policy_registry.register("pixel_test")(_load_pixel_policy)

    def make(**config) -> str:
        import json

        (tmp_path / "policy.json").write_text(json.dumps({"type": "pixel_test", **config}))
        return str(tmp_path)

    return make


def _rows(results: dict) -> list[dict]:
    return results["episodes"]


def _no_env_workers_left() -> bool:
    """No env worker process of this one is left, running or unreaped (Linux: /proc)."""
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if parent == os.getpid() and (b"fmmm.eval.env_slots" in command or not command):
            return False
    return True


def test_env_workers_give_the_rows_of_one_env_in_this_process(pixel_policy):
    run_dir = pixel_policy()
    one = evaluate(run_dir, ["reach", "lift"], 2, base_seed=4, num_envs=1, progress=False)
    two = evaluate(run_dir, ["reach", "lift"], 2, base_seed=4, num_envs=2, progress=False)
    assert _rows(two) == _rows(one)
    assert {row["length"] for row in _rows(one)} == {40, 50}  # the policy never finishes early
    assert _no_env_workers_left()


def test_several_envs_run_in_worker_processes_and_one_here(pixel_policy):
    worker = LockstepWorker(pixel_policy(), 0, processes=True)
    with worker:
        rows = list(worker.rows([("reach", 0), ("reach", 1), ("reach", 2)], 3))
        slots = worker.slots
        pids = {slot.process.pid for slot in slots}
        assert len(pids) == 3 and os.getpid() not in pids
    assert sorted(row["episode"] for row in rows) == [0, 1, 2]
    assert all(slot.process.returncode is not None for slot in slots)
    assert _no_env_workers_left()
    alone = LockstepWorker(pixel_policy(), 0, processes=True)
    with alone:
        list(alone.rows([("reach", 0)], 1))
        assert [slot.remote for slot in alone.slots] == [False]


def test_scripted_videos_and_instructions_do_not_depend_on_env_workers(tmp_path):
    template = "put the {object} on the {target}"
    runs = {}
    for envs in (1, 2):
        video_dir = tmp_path / str(envs)
        runs[envs] = evaluate(
            "scripted",
            ["pick_place"],
            2,
            num_envs=envs,
            video_dir=video_dir,
            instruction=template,
            progress=False,
        )
    assert _rows(runs[2]) == _rows(runs[1])
    for row in _rows(runs[1]):
        assert row["video"] and "{" not in row["instruction"]
        one = imageio.mimread(tmp_path / "1" / row["video"])
        two = imageio.mimread(tmp_path / "2" / row["video"])
        assert len(one) == row["length"] + 1 and np.array_equal(np.stack(one), np.stack(two))


def test_chunked_policies_step_ahead_with_the_rows_of_one_env(pixel_policy):
    run_dir = pixel_policy(chunked=True)
    one = evaluate(run_dir, ["reach", "lift"], 2, base_seed=2, num_envs=1, progress=False)
    _BUILT.clear()
    two = evaluate(run_dir, ["reach", "lift"], 2, base_seed=2, num_envs=2, progress=False)
    assert _rows(two) == _rows(one)
    stepped = _BUILT[-1]  # the last built: the one that acted for both envs
    assert stepped.forward_batches and set(stepped.forward_batches) == {1}
    steps = sum(row["length"] for row in _rows(two))
    assert len(stepped.forward_batches) == sum(-(-row["length"] // 3) for row in _rows(two))
    assert steps > len(stepped.forward_batches)
    assert _no_env_workers_left()


def test_a_worker_error_names_the_episode_and_ends_the_workers(pixel_policy):
    run_dir = pixel_policy(bad_slot=1)
    with pytest.raises(ValueError, match=r"reach episode 1 \(seed \d+\): .*non-finite") as error:
        evaluate(run_dir, ["reach"], 3, num_envs=2, progress=False)
    assert "\n" not in str(error.value)
    assert _no_env_workers_left()


def test_a_dead_worker_is_reported_not_waited_for(pixel_policy):
    worker = LockstepWorker(pixel_policy(), 0, processes=True)
    items = [("reach", index) for index in range(4)]
    with worker, pytest.raises(EnvWorkerError, match=r"code -9 while running reach episode"):
        rows = worker.rows(items, 2)
        next(rows)
        os.kill(worker.slots[1].process.pid, signal.SIGKILL)
        list(rows)
    assert _no_env_workers_left()


def test_an_interrupted_evaluation_ends_its_workers(pixel_policy):
    run_dir = pixel_policy(interrupt_after=5)
    with pytest.raises(KeyboardInterrupt):
        evaluate(run_dir, ["reach"], 2, num_envs=2, progress=False)
    assert _no_env_workers_left()
