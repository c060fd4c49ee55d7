"""Task specs are data: every shipped spec loads, and bad specs fail with one line naming the problem."""

from __future__ import annotations

import pytest

from fmmm.config import ConfigError
from fmmm.envs import gym_id, task_names
from fmmm.envs.spec import KINDS, load_task


def test_at_least_five_tasks_ship_and_cover_distinct_kinds():
    names = task_names()
    assert len(names) >= 5
    assert len({load_task(n).kind for n in names}) >= 5


@pytest.mark.parametrize("name", task_names())
def test_every_shipped_spec_loads_with_instruction_and_step_limit(name):
    spec = load_task(name)
    assert spec.name == name and spec.kind in KINDS
    assert spec.max_steps >= 1 and spec.candidates


def test_gym_id_is_camel_case_under_fmmm():
    assert gym_id("pick_place") == "fmmm/PickPlace-v0"
    assert gym_id("open_drawer") == "fmmm/OpenDrawer-v0"


def test_task_variant_from_yaml_file_needs_no_code(tmp_path):
    from fmmm.envs import make_env

    path = tmp_path / "reach_two.yaml"
    path.write_text(
        "kind: reach\n"
        "instruction: 'touch the {object}'\n"
        "max_steps: 7\n"
        "objects:\n"
        "  - {name: orange_ball, shape: ball, colour: orange}\n"
        "  - {name: white_cube, shape: cube, colour: white}\n"
    )
    env = make_env(str(path), render=False)
    obs, _ = env.reset(seed=0)
    assert obs["instruction"] in ("touch the orange ball", "touch the white cube")
    assert env.max_steps == 7


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ConfigError, match="unknown task 'nope'.*pick_place"):
        load_task("nope")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("max_steps=0", "max_steps"),
        ("kind=juggle", "kind"),
        ("instruction='grab the {thing}'", "placeholder"),
        ("candidates=[purple_cube]", "candidates"),
        ("init.x=[0.6,0.3]", "init.x"),
        ("success.distance=-1", "success.distance"),
        ("colour_of_sky=blue", "colour_of_sky"),
    ],
)
def test_bad_spec_values_raise_config_error_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_task("pick_place", [override])
    assert "\n" not in str(info.value)


def test_bad_object_colour_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("kind: reach\nobjects:\n  - {name: cube, shape: cube, colour: mauve}\n")
    with pytest.raises(ConfigError, match="mauve"):
        load_task(path)
