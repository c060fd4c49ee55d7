import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fmmm.datasets.robot import RobotDataset, episode_path, read_episode
from fmmm.envs.seeds import episode_seed

PYTHON = sys.executable
DEMO_TASK, DEMO_EPISODES = "pick_place", 3  # as collected by the demo_dataset fixture


def test_collected_demos_read_back_with_cameras_state_actions_and_provenance(demo_dataset):
    import mujoco

    dataset = RobotDataset(demo_dataset)
    assert dataset.num_episodes == DEMO_EPISODES
    assert dataset.camera_keys == ["observation.images.agentview", "observation.images.wrist"]
    assert dataset.info["mujoco_version"] == mujoco.__version__
    assert len(dataset.info["scene_sha256"]) == 64
    assert dataset.info["collection"]["seed_split"] == "train"
    for index, row in enumerate(dataset.episodes):
        assert row["success"] is True
        assert row["seed"] == episode_seed(DEMO_TASK, 0, row["attempt"], "train")
        episode = dataset.episode(index)
        length = row["length"]
        assert episode["observation.images.wrist"].shape == (length, 64, 64, 3)
        assert episode["observation.images.agentview"].dtype == np.uint8
        assert episode["observation.state"].shape == (length, 16)
        assert episode["action"].shape == (length, 7)
        assert np.all(np.abs(episode["action"]) <= 1)
        assert episode["next.success"][-1] and not episode["next.success"][0]
        assert dataset.tasks[episode["task_index"][0]] == row["tasks"][0]
        # pictures change as the arm moves
        assert np.any(
            episode["observation.images.agentview"][0]
            != episode["observation.images.agentview"][-1]
        )
    assert len(dataset) == sum(row["length"] for row in dataset.episodes)
    assert list(dataset[len(dataset) - 1]["index"].reshape(-1)) == [len(dataset) - 1]


def test_demos_replay_in_the_env_to_success(demo_dataset):
    """The recorded actions, replayed from the recorded seed, reproduce the success."""
    import fmmm.envs

    dataset = RobotDataset(demo_dataset)
    env = fmmm.envs.make_env(DEMO_TASK, render=False)
    row = dataset.episodes[0]
    observation, _ = env.reset(seed=row["seed"])
    episode = dataset.episode(0)
    np.testing.assert_array_equal(observation["state"], episode["observation.state"][0])
    for action in episode["action"]:
        observation, _, terminated, truncated, info = env.step(action)
    assert info["is_success"]


def _run_collect(out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [PYTHON, "-m", "fmmm.collect", "--task", DEMO_TASK, "--out", str(out), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_interrupted_parallel_collection_resumes_to_the_same_dataset(demo_dataset, tmp_path):
    out = tmp_path / "resumed"
    args = ["--episodes", str(DEMO_EPISODES), "--workers", "2"]
    command = [PYTHON, "-m", "fmmm.collect", "--task", DEMO_TASK, "--out", str(out), *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / ".staging").glob("attempt_*.json")) and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    staged = sorted(p.name for p in (out / ".staging").glob("attempt_*.json"))
    assert staged and not (out / "meta" / "info.json").exists()

    result = _run_collect(out, *args)
    assert result.returncode == 0, result.stderr
    resumed, reference = RobotDataset(out), RobotDataset(demo_dataset)
    assert resumed.episodes == reference.episodes
    assert resumed.stats == reference.stats
    for index in range(reference.num_episodes):
        a = read_episode(episode_path(out, index))
        b = read_episode(episode_path(demo_dataset, index))
        assert list(a) == list(b)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not (out / ".staging").exists()
    # a finished dataset re-run with the same arguments is left as it is
    before = os.stat(out / "meta" / "info.json").st_mtime_ns
    assert _run_collect(out, *args).returncode == 0
    assert os.stat(out / "meta" / "info.json").st_mtime_ns == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "no_such_task", "--episodes", "2"], "unknown task"),
        (["--task", DEMO_TASK, "--episodes", "0"], "--episodes"),
        (["--task", DEMO_TASK, "--episodes", "2", "--workers", "0"], "--workers"),
    ],
)
def test_bad_collect_arguments_exit_2_with_one_line(tmp_path, args, message):
    command = [PYTHON, "-m", "fmmm.collect", "--out", str(tmp_path / "d"), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and message in result.stderr
    assert result.stderr.count("\n") == 1


def test_collect_into_a_dataset_with_corrupt_meta_exits_2(tmp_path):
    (tmp_path / "d" / "meta").mkdir(parents=True)
    (tmp_path / "d" / "meta" / "info.json").write_text("{truncated")
    result = _run_collect(tmp_path / "d", "--episodes", "2")
    assert result.returncode == 2 and "corrupt" in result.stderr
    assert result.stderr.count("\n") == 1


def test_collect_refuses_to_mix_settings_into_a_finished_dataset(demo_dataset):
    result = _run_collect(demo_dataset, "--episodes", str(DEMO_EPISODES), "--seed", "7")
    assert result.returncode == 2 and "other settings" in result.stderr
    assert json.loads((demo_dataset / "meta" / "info.json").read_text())["collection"]["seed"] == 0


def test_the_dataset_is_the_first_kept_attempts_in_order_whatever_finished_first():
    from fmmm.collect import _selected

    def attempt(index: int, kept: bool) -> dict:
        return {"attempt": index, "kept": kept}

    done = {i: attempt(i, kept) for i, kept in enumerate([True, False, True, True, True])}
    assert [s["attempt"] for s in _selected(done, 3)] == [0, 2, 3]
    del done[2]  # attempt 2 still running: attempts 3 and 4 cannot be chosen yet
    assert _selected(done, 3) is None
    assert _selected(done, 1) == [attempt(0, True)]


def test_noisy_expert_executes_noisy_actions_and_labels_the_clean_one():
    from fmmm.collect import NoisyExpert

    clean = np.array([0.1, 0.2, -0.3, 0.05, 0.0, 0.0, -1.0], dtype=np.float32)

    class Fixed:
        def reset(self) -> None:
            pass

        def act(self, observation):
            return clean

    noisy = NoisyExpert(Fixed(), std=0.3)
    noisy.seed(1)
    executed = noisy.act({})
    np.testing.assert_array_equal(noisy.label, clean)
    assert not np.allclose(executed[:3], clean[:3])
    np.testing.assert_array_equal(executed[3:], clean[3:])  # rotation and gripper untouched
    assert np.all(np.abs(executed) <= 1)
    noisy.seed(1)
    np.testing.assert_array_equal(noisy.act({}), executed)


def test_dart_collection_records_clean_labels_from_perturbed_states(tmp_path):
    from fmmm.collect import collect

    collect("reach", 2, tmp_path / "plain", workers=1, progress=False)
    plain = RobotDataset(tmp_path / "plain")
    noisy_info = collect("reach", 2, tmp_path / "noisy", workers=1, progress=False, noise=0.5)
    noisy = RobotDataset(tmp_path / "noisy")
    assert noisy_info["collection"]["noise"] == 0.5 and "noise" not in plain.info["collection"]
    first_plain, first_noisy = plain.episode(0), noisy.episode(0)
    # same scene and first state; the first label is the expert's clean action in both
    np.testing.assert_array_equal(
        first_plain["observation.state"][0], first_noisy["observation.state"][0]
    )
    np.testing.assert_allclose(first_plain["action"][0], first_noisy["action"][0], atol=1e-6)
    # the executed action was perturbed, so the arm is elsewhere one step later
    assert not np.allclose(first_plain["observation.state"][1], first_noisy["observation.state"][1])
    with pytest.raises(ValueError, match="noise"):
        collect("reach", 1, tmp_path / "bad", workers=1, progress=False, noise=2.0)
