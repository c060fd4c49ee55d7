"""Meta-World tasks behind fmmm's env contract (`fmmm/envs/metaworld.py`).

The metaworld package is in the `dev` extra, so these run in CI; without it (a plain install)
only the tests that need no Meta-World env run.
"""

import importlib.util
import json
import sys

import numpy as np
import pytest

import fmmm.envs
from fmmm.envs import metaworld as mw

requires_metaworld = pytest.mark.skipif(
    importlib.util.find_spec("metaworld") is None,
    reason='metaworld is not installed (pip install -e ".[metaworld]")',
)
MT10 = [
    "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
    "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
]  # fmt: skip


def test_task_names_expand_suites_lists_and_all():
    assert fmmm.envs.expand_tasks("metaworld:mt10") == ["metaworld:" + t for t in MT10]
    assert fmmm.envs.expand_tasks("all") == fmmm.envs.suite_task_names()
    assert fmmm.envs.expand_tasks("reach, metaworld:push-v3,reach") == [
        "reach",
        "metaworld:push-v3",
    ]
    with pytest.raises(ValueError, match="unknown task 'metaworld:nope'.*metaworld:mt10"):
        fmmm.envs.expand_tasks("metaworld:nope")
    assert all(text and text == text.strip() for text in mw.INSTRUCTIONS.values())


def test_without_metaworld_installed_a_task_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "metaworld", None)  # import metaworld raises ImportError
    with pytest.raises(ValueError, match=r'pip install -e "\.\[metaworld\]"'):
        fmmm.envs.make_env("metaworld:reach-v3")


@requires_metaworld
def test_env_follows_the_fmmm_contract_with_meta_worlds_action_space():
    from gymnasium.utils.env_checker import check_env

    env = fmmm.envs.make_env("metaworld:reach-v3", image_size=16)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=3)
    assert obs["agentview"].shape == obs["wrist"].shape == (16, 16, 3)
    assert obs["agentview"].dtype == np.uint8 and obs["state"].shape == (4,)
    assert obs["instruction"] == "reach the goal position" and info == {"is_success": False}
    assert env.action_space.shape == (4,)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        env.step(np.zeros(7, dtype=np.float32))
    _, reward, terminated, truncated, info = env.step(np.zeros(4, dtype=np.float32))
    assert isinstance(info["is_success"], bool) and "success" in info and reward >= 0
    env.close()


@requires_metaworld
def test_reset_draws_the_layout_from_the_seed_only():
    env = fmmm.envs.make_env("metaworld:push-v3", render=False)
    layouts = []
    for seed in (7, 8, 7):
        env.reset(seed=seed)
        layouts.append(env.unwrapped.episode_record())
    assert layouts[0] == layouts[2] != layouts[1]
    other = fmmm.envs.make_env("metaworld:push-v3", render=False)
    other.reset(seed=7)
    assert other.unwrapped.episode_record() == layouts[0]


@requires_metaworld
def test_metadata_records_the_mujoco_and_metaworld_versions():
    import mujoco

    record = fmmm.envs.make_env("metaworld:door-open-v3", render=False).metadata_record()
    assert record["mujoco_version"] == mujoco.__version__
    assert record["metaworld_version"] == "3.1.1" and len(record["scene_sha256"]) == 64
    assert record["task"] == "metaworld:door-open-v3" and record["control_hz"] == 80.0


@requires_metaworld
@pytest.mark.parametrize("task", ["metaworld:drawer-close-v3", "metaworld:pick-place-v3"])
def test_meta_worlds_scripted_policy_succeeds_as_the_scripted_policy(task):
    from fmmm.eval.rollout import run_episode
    from fmmm.policies.factory import load_policy

    env = fmmm.envs.make_env(task, render=False)
    result = run_episode(env, load_policy("scripted")(env), seed=1, policy_seed=1)
    assert result["success"] and result["length"] < env.max_steps


@requires_metaworld
def test_collect_and_eval_clis_run_a_meta_world_suite(tmp_path, capsys):
    from fmmm.collect import main as collect_main
    from fmmm.eval.__main__ import main as eval_main

    tasks = "metaworld:reach-v3,metaworld:drawer-close-v3"
    out = tmp_path / "demos"
    assert collect_main(["--task", tasks, "--episodes", "1", "--out", str(out)]) == 0
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["total_episodes"] == 2 and info["total_tasks"] == 2
    assert info["collection"]["tasks"] == tasks.split(",")
    assert info["features"]["action"]["shape"] == [4]
    assert info["features"]["observation.state"]["names"][-1] == "gripper_opening"
    assert set(info["env"]) == set(tasks.split(",")) and info["mujoco_version"]
    assert not (out / ".tasks").exists()
    rows = [json.loads(line) for line in (out / "meta" / "episodes.jsonl").read_text().splitlines()]
    assert [row["tasks"] for row in rows] == [["reach the goal position"], ["close the drawer"]]
    capsys.readouterr()
    code = eval_main(["--policy", "scripted", "--task", tasks, "--episodes", "2", "--seed", "3"])
    assert code == 0
    table = capsys.readouterr().out
    assert "metaworld:reach-v3" in table and "metaworld:drawer-close-v3" in table
    assert table.count("100.0%") >= 2
