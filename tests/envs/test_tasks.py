"""Each success detector reads the simulator state: true on a constructed success state, false on
near misses (wrong object, still held, not seated, not open enough)."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest

from fmmm.envs import make_env


def _env(task: str):
    env = make_env(task, render=False)
    env.reset(seed=0)
    return env


def _put(env, name: str, xyz) -> None:
    adr = env.task.qpos_adr[name]
    env.data.qpos[adr : adr + 3] = xyz
    env.data.qpos[adr + 3 : adr + 7] = [1.0, 0.0, 0.0, 0.0]


def _park_others(env, keep: set[str]) -> None:
    """Move every other object to a far corner of the table, out of the way."""
    for k, name in enumerate(n for n in env.task.qpos_adr if n not in keep):
        _put(env, name, [0.75, -0.4 + 0.1 * k, env.task.rest_height(name)])


def _check(env) -> bool:
    mujoco.mj_forward(env.model, env.data)
    return env.task.is_success(env.data)


def test_reach_detects_the_gripper_at_the_named_object_only():
    env = _env("reach")
    task = env.task
    ee = task.ee_pos(env.data)
    _park_others(env, {task.object_name})
    _put(env, task.object_name, ee + [0.0, 0.0, -0.02])
    assert _check(env)
    _put(env, task.object_name, ee + [0.0, 0.1, -0.02])
    assert not _check(env)
    other = next(n for n in task.qpos_adr if n != task.object_name)
    _put(env, other, ee + [0.0, 0.0, -0.02])  # the wrong object at the gripper
    assert not _check(env)


def test_lift_detects_the_object_raised_above_its_rest_height():
    env = _env("lift")
    name = env.task.object_name
    xy = env.task.object_pos(env.data)[:2]
    lift = env.spec_task.success.lift_height
    _put(env, name, [*xy, env.task.rest_height() + lift + 0.01])
    assert _check(env)
    _put(env, name, [*xy, env.task.rest_height() + lift - 0.01])
    assert not _check(env)


def test_push_detects_the_object_within_distance_of_the_target():
    env = _env("push")
    task = env.task
    goal = task.target_pos(env.data)
    _park_others(env, {task.object_name})
    _put(env, task.object_name, [goal[0] + 0.02, goal[1], task.rest_height()])
    assert _check(env)
    _put(env, task.object_name, [goal[0] + 0.06, goal[1], task.rest_height()])
    assert not _check(env)


def test_pick_place_needs_the_object_on_target_resting_and_released():
    env = _env("pick_place")
    task = env.task
    goal = task.target_pos(env.data)
    _park_others(env, {task.object_name})
    _put(env, task.object_name, [goal[0], goal[1], task.rest_height()])
    assert _check(env)
    _put(env, task.object_name, [goal[0], goal[1], task.rest_height() + 0.05])  # hovering
    assert not _check(env)
    _put(env, task.object_name, [goal[0] + 0.08, goal[1], task.rest_height()])  # off target
    assert not _check(env)


def test_pick_place_is_not_success_until_the_gripper_lets_go():
    from fmmm.envs.experts import ScriptedExpert

    env = make_env("pick_place", render=False)
    obs, _ = env.reset(seed=2)
    expert = ScriptedExpert(env)
    while expert.phase != "release":
        obs, _, _, truncated, info = env.step(expert.act(obs))
        assert not truncated and not info["is_success"]
    task = env.task
    # Lowered onto the target, still held: the object is on the target but not placed.
    assert np.linalg.norm(task.object_pos(env.data)[:2] - task.target_pos(env.data)[:2]) < 0.03
    assert task.touching_fingers(env.data, task.object_name)
    assert not task.is_success(env.data)
    for _ in range(10):
        obs, _, terminated, _, info = env.step(expert.act(obs))
        if terminated:
            break
    assert info["is_success"] and not task.touching_fingers(env.data, task.object_name)


def test_stack_needs_the_object_seated_on_the_named_base():
    env = _env("stack")
    task = env.task
    base = task.object_pos(env.data, task.target_name)
    on_top = base + [0.0, 0.0, task.rest_height(task.target_name) + task.rest_height()]
    _put(env, task.object_name, on_top)
    assert _check(env)
    _put(env, task.object_name, on_top + [0.03, 0.0, 0.0])  # overhanging
    assert not _check(env)
    _put(env, task.object_name, on_top + [0.0, 0.0, 0.03])  # not seated
    assert not _check(env)
    third = next(n for n in task.qpos_adr if n not in (task.object_name, task.target_name))
    third_pos = task.object_pos(env.data, third)
    _put(env, task.object_name, third_pos + [0.0, 0.0, 0.04])  # on the wrong cube
    assert not _check(env)


def test_open_drawer_detects_only_the_named_drawer_open_far_enough():
    env = _env("open_drawer")
    task = env.task
    other = next(d.name for d in env.spec_task.drawers if d.name != task.object_name)
    needed = env.spec_task.success.open_distance
    env.data.qpos[task.slide_adr[other]] = 0.19
    assert not _check(env)
    env.data.qpos[task.slide_adr[task.object_name]] = needed - 0.02
    assert not _check(env)
    env.data.qpos[task.slide_adr[task.object_name]] = needed + 0.02
    assert _check(env)


@pytest.mark.parametrize("task", ["reach", "lift", "push", "pick_place", "stack", "open_drawer"])
def test_no_task_starts_solved(task):
    env = make_env(task, render=False)
    for seed in range(10):
        _, info = env.reset(seed=seed)
        assert not info["is_success"]


def test_initial_objects_respect_the_minimum_distance():
    env = make_env("pick_place", render=False)
    spec = env.spec_task
    for seed in range(10):
        env.reset(seed=seed)
        points = [env.task.object_pos(env.data, o.name)[:2] for o in spec.objects]
        points += [env.data.mocap_pos[env.task.mocap[t.name]][:2] for t in spec.targets]
        for i in range(len(points)):
            for j in range(i):
                assert np.linalg.norm(points[i] - points[j]) >= spec.init.min_distance - 1e-9


def test_play_names_a_relation_and_succeeds_only_at_that_place():
    from fmmm.envs.tasks import PLAY_COLOUR_WORDS, PLAY_OPENINGS, PLAY_RELATIONS, PLAY_SHAPE_WORDS

    env = make_env("play_blocks", render=False)
    seen, labelled = set(), 0
    for seed in range(40):
        env.reset(seed=seed)
        task = env.unwrapped.task
        seen.add(task.relation)
        thing = task.things[task.target_name]
        instruction = env.unwrapped.episode_record()["instruction"]
        opening, _, rest = instruction.partition(f" {task.relation} the ")
        assert opening in PLAY_OPENINGS and rest == task.description
        colour, shape = rest.split(" ")  # the description names the thing's colour and shape
        assert colour in PLAY_COLOUR_WORDS[thing.colour] and shape in PLAY_SHAPE_WORDS[thing.shape]
        labelled += rest == thing.label
        goal = task.goal(env.unwrapped.data)
        anchor = task.target_pos(env.unwrapped.data)
        expected = anchor + np.asarray(PLAY_RELATIONS[task.relation])
        np.testing.assert_allclose(goal[:2], expected[:2])
        assert goal[2] >= 0.05
    assert seen == set(PLAY_RELATIONS) and 10 <= labelled <= 35
    # The detector fires at the named place and not 3 cm beside it.
    env.reset(seed=0)
    task, data = env.unwrapped.task, env.unwrapped.data
    goal = task.goal(data)
    assert not task.is_success(data)  # the arm starts away from it
    assert task.is_success.__func__(_EePinned(task, goal), data)
    assert not task.is_success.__func__(_EePinned(task, goal + [0.03, 0.0, 0.0]), data)


class _EePinned:
    """A stand-in for a Play task whose gripper sits at `ee` (the detector's own arithmetic)."""

    def __init__(self, task, ee):
        self._task, self._ee = task, np.asarray(ee)
        self.spec = task.spec

    def ee_pos(self, data):
        return self._ee

    def goal(self, data):
        return self._task.goal(data)


def test_the_suite_leaves_the_play_specs_out():
    import fmmm.envs

    suite = fmmm.envs.expand_tasks("all")
    assert suite == ["lift", "open_drawer", "pick_place", "push", "reach", "stack"]
    assert {"play_blocks", "play_shapes"} <= set(fmmm.envs.task_names())
    assert fmmm.envs.expand_tasks("play_blocks,play_shapes") == ["play_blocks", "play_shapes"]
