"""The env contract (docs/architecture.md): spaces, observations, gymnasium ids, vector envs,
seeded determinism across processes, provenance, bad input."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import fmmm.envs
from fmmm.envs import gym_id, make_env, task_names


def rollout_digest(task: str, seed: int, steps: int) -> str:
    """sha256 of the initial state and the states along a fixed action sequence (state-only env)."""
    env = make_env(task, render=False, terminate_on_success=False)
    obs, _ = env.reset(seed=seed)
    digest = hashlib.sha256(env.data.qpos.tobytes() + obs["instruction"].encode())
    actions = np.random.default_rng(1234).uniform(-1.0, 1.0, size=(steps, 7)).astype(np.float32)
    for action in actions:
        obs, *_ = env.step(action)
        digest.update(obs["state"].tobytes())
    digest.update(env.data.qpos.tobytes())
    env.close()
    return digest.hexdigest()


@pytest.mark.parametrize("task", task_names())
def test_gymnasium_env_checker_passes(task):
    env = gym.make(gym_id(task), image_size=32)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


def test_observation_contract_with_cameras():
    env = make_env("pick_place", image_size=48)
    obs, info = env.reset(seed=3)
    assert set(obs) == {"agentview", "wrist", "state", "instruction"}
    for camera in ("agentview", "wrist"):
        assert obs[camera].shape == (48, 48, 3) and obs[camera].dtype == np.uint8
        assert obs[camera].std() > 5  # a real image, not a blank buffer
    assert obs["state"].shape == (16,) and obs["state"].dtype == np.float32
    assert obs["instruction"].startswith("pick up the ") and " on the " in obs["instruction"]
    assert info["is_success"] is False
    obs, reward, terminated, truncated, info = env.step(np.zeros(7, dtype=np.float32))
    assert isinstance(info["is_success"], bool) and isinstance(reward, float)
    assert not terminated and not truncated
    env.close()


def test_state_only_mode_has_no_images():
    env = make_env("reach", render=False)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"state", "instruction"}
    assert set(env.observation_space.spaces) == {"state", "instruction"}
    assert env._renderer is None


def test_state_reports_end_effector_pose_and_gripper_opening():
    env = make_env("reach", render=False)
    obs, _ = env.reset(seed=0)
    state = obs["state"]
    np.testing.assert_allclose(state[:6], env.data.qpos[:6], atol=1e-6)
    np.testing.assert_allclose(state[7:10], env.data.site_xpos[env.ee_site], atol=1e-6)
    columns = state[10:].reshape(2, 3)  # first two columns of the rotation matrix
    rotation = env.data.site_xmat[env.ee_site].reshape(3, 3)
    np.testing.assert_allclose(columns, rotation[:, :2].T, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(columns, axis=1), 1.0, atol=1e-5)
    assert abs(float(columns[0] @ columns[1])) < 1e-5
    assert state[6] == pytest.approx(0.08, abs=1e-3)  # opens wide at reset
    for _ in range(5):
        obs, *_ = env.step(np.array([0, 0, 0, 0, 0, 0, 1.0], dtype=np.float32))
    assert obs["state"][6] < 0.01  # closed on nothing


def test_end_effector_moves_by_a_bounded_delta_in_the_commanded_direction():
    env = make_env("reach", render=False)
    obs, _ = env.reset(seed=0)
    start = obs["state"][7:10].copy()
    for _ in range(3):
        obs, *_ = env.step(np.array([1.0, 0, 0, 0, 0, 0, -1], dtype=np.float32))
    moved = obs["state"][7:10] - start
    assert 0.06 < moved[0] <= 3 * env.max_pos_delta + 1e-3
    assert abs(moved[1]) < 0.01 and abs(moved[2]) < 0.01


def test_wrist_image_is_upright_far_objects_appear_at_the_top():
    env = make_env("reach", image_size=64)
    env.reset(seed=0)
    task, data = env.task, env.data
    ee = task.ee_pos(data)
    # Put the red cube on the table 10 cm beyond the gripper (away from the robot, +x).
    adr = task.qpos_adr["red_cube"]
    data.qpos[adr : adr + 3] = [ee[0] + 0.1, ee[1], 0.02]
    other = [n for n in task.qpos_adr if n != "red_cube"]
    for k, name in enumerate(other):
        data.qpos[task.qpos_adr[name] : task.qpos_adr[name] + 3] = [0.3, 0.45 + 0.1 * k, 0.02]
    import mujoco

    mujoco.mj_forward(env.model, data)
    image = env._camera("wrist").astype(int)
    red = (image[..., 0] > 150) & (image[..., 1] < 80) & (image[..., 2] < 80)
    rows = np.nonzero(red)[0]
    assert rows.size > 5 and rows.mean() < 32
    env.close()


def test_gymnasium_make_registers_every_task_with_time_limit():
    assert sorted(fmmm.envs.register_envs()) == sorted(gym_id(t) for t in task_names())
    env = gym.make("fmmm/Reach-v0", render=False)
    env.reset(seed=0)
    steps, truncated = 0, False
    while not truncated:
        _, _, terminated, truncated, _ = env.step(np.zeros(7, dtype=np.float32))
        assert not terminated
        steps += 1
    assert steps == env.spec.max_episode_steps == fmmm.envs.load_task("reach").max_steps
    env.close()


def test_success_terminates_the_episode():
    from fmmm.envs.experts import ScriptedExpert

    env = make_env("reach", render=False)
    obs, _ = env.reset(seed=1)
    expert = ScriptedExpert(env)
    for _ in range(env.max_steps):
        obs, reward, terminated, truncated, info = env.step(expert.act(obs))
        if terminated or truncated:
            break
    assert terminated and info["is_success"] and reward == 1.0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_envs_step_in_batches(mode):
    envs = gym.make_vec("fmmm/Reach-v0", num_envs=2, vectorization_mode=mode, render=False)
    obs, infos = envs.reset(seed=[0, 1])
    assert obs["state"].shape == (2, 16)
    assert len(obs["instruction"]) == 2
    actions = np.zeros((2, 7), dtype=np.float32)
    obs, rewards, terminated, truncated, infos = envs.step(actions)
    assert rewards.shape == (2,) and infos["is_success"].shape == (2,)
    envs.close()


def test_same_seed_same_initial_state_and_trajectory_in_another_process():
    here = rollout_digest("pick_place", seed=7, steps=15)
    assert here == rollout_digest("pick_place", seed=7, steps=15)
    code = (
        "import importlib.util, sys; "
        "spec = importlib.util.spec_from_file_location('env_test', sys.argv[1]); "
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
        "print(module.rollout_digest('pick_place', seed=7, steps=15))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, __file__],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert result.stdout.strip() == here
    assert rollout_digest("pick_place", seed=8, steps=15) != here


def test_reset_draws_only_from_the_env_generator():
    env = make_env("stack", render=False)
    env.reset(seed=5)
    first = env.data.qpos.copy()
    np.random.seed(0)  # the global generators must not matter
    env.reset(seed=5)
    np.testing.assert_array_equal(env.data.qpos, first)
    env.reset()  # no seed: continues the env's generator, a new initial state
    assert not np.array_equal(env.data.qpos, first)


def test_metadata_record_pins_mujoco_version_and_scene_hash():
    import mujoco

    env = make_env("push", render=False)
    record = env.metadata_record()
    assert record["mujoco_version"] == mujoco.__version__
    assert len(record["scene_sha256"]) == 64
    assert (
        record["scene_sha256"] == make_env("push", render=False).metadata_record()["scene_sha256"]
    )
    assert (
        record["scene_sha256"] != make_env("stack", render=False).metadata_record()["scene_sha256"]
    )
    assert record["task_spec"]["kind"] == "push"
    env.reset(seed=0)
    assert set(env.episode_record()) >= {"object", "target", "instruction"}


def test_rgb_array_render_mode_returns_the_agent_view():
    env = gym.make("fmmm/Lift-v0", render_mode="rgb_array", image_size=32)
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
    env.close()
    env.close()  # closing twice is harmless


@pytest.mark.parametrize(
    ("action", "message"),
    [(np.zeros(6), "shape"), (np.full(7, np.nan), "NaN")],
)
def test_bad_actions_raise_value_error(action, message):
    env = make_env("reach", render=False)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=message):
        env.step(action)


def test_bad_constructor_arguments_raise_value_error():
    with pytest.raises(ValueError, match="image_size"):
        make_env("reach", image_size=0)
    with pytest.raises(ValueError, match="control_hz"):
        make_env("reach", control_hz=7.0)
    with pytest.raises(ValueError, match="render_mode"):
        make_env("reach", render_mode="human")


@pytest.mark.parametrize("task", ["reach", "pick_place"])
def test_state_is_continuous_along_expert_trajectories(task):
    """No jumps such as a quaternion's sign flip near the home pose: between two control steps
    the orientation entries change by far less than their range."""
    from fmmm.envs.experts import ScriptedExpert
    from fmmm.envs.seeds import episode_seed

    env = make_env(task, render=False)
    largest = 0.0
    for index in range(10):
        obs, _ = env.reset(seed=episode_seed(task, 0, index, "train"))
        expert = ScriptedExpert(env)
        expert.reset()
        previous = obs["state"]
        for _ in range(env.spec_task.max_steps):
            obs, _, terminated, truncated, _ = env.step(expert.act(obs))
            largest = max(largest, float(np.abs(obs["state"][10:] - previous[10:]).max()))
            previous = obs["state"]
            if terminated or truncated:
                break
    assert largest < 0.3, largest
