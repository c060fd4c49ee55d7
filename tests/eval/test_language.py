import itertools
import json
import subprocess
import sys

import pytest

import fmmm.envs
from fmmm.envs.env import INSTRUCTION_CHARSET
from fmmm.envs.seeds import episode_seed
from fmmm.envs.spec import (
    COLOURS,
    KINDS,
    PLAY_KINDS,
    SHAPES,
    ObjectSpec,
    TaskSpec,
    load_task,
    suite_task_names,
)
from fmmm.eval.env_slots import episode_steps
from fmmm.eval.language import (
    COLOUR_SYNONYMS,
    PARAPHRASES,
    SHAPE_ATTRIBUTES,
    SHAPE_SYNONYMS,
    STYLES,
    allowed_styles,
    choose_wording,
    describe,
    episode_wording,
    item_shape,
    paraphrases,
    placeholders,
    scene_items,
)

TASKS = suite_task_names()  # play specs make pretraining data; they are not evaluated


def _named(spec: TaskSpec) -> list[dict[str, str]]:
    """Every (object, target) an episode of `spec` can name, as placeholder -> item name."""
    if spec.kind == "stack":
        cubes = [o.name for o in spec.objects if o.shape == "cube"]
        return [{"object": o, "target": t} for o in spec.candidates for t in cubes if t != o]
    if spec.targets:
        return [{"object": o, "target": t.name} for o in spec.candidates for t in spec.targets]
    return [{"object": o} for o in spec.candidates]


def _training_instructions() -> set[str]:
    """Every instruction the training demonstrations can hold: templates filled with labels."""
    instructions = set()
    for name in TASKS:
        spec = load_task(name)
        scene = scene_items(spec)
        for named in _named(spec):
            labels = {p: scene[item].label for p, item in named.items()}
            instructions.add(spec.instruction.format(**labels))
    return instructions


def _referents(description: str, spec: TaskSpec) -> list[str]:
    """The items of the scene that `description` fits, read back from the words alone."""
    fits = []
    for item in scene_items(spec).values():
        colours = {item.colour, *COLOUR_SYNONYMS[item.colour]}
        shapes = {item_shape(item), *SHAPE_SYNONYMS[item_shape(item)]}
        first, _, rest = description.partition(" ")
        by_words = first in colours and rest in shapes | {"one"}
        by_shape = item_shape(item) in SHAPE_ATTRIBUTES.get(description, ())
        if by_words or by_shape:
            fits.append(item.name)
    return fits


def test_every_kind_colour_and_shape_has_unseen_words():
    assert set(PARAPHRASES) == set(KINDS) - set(PLAY_KINDS)
    assert set(COLOUR_SYNONYMS) == set(COLOURS)
    assert set(SHAPE_SYNONYMS) >= {*SHAPES, "plate", "square", "drawer"}
    for kind, sentences in PARAPHRASES.items():
        assert len(set(sentences)) >= 4, kind


@pytest.mark.parametrize("task", TASKS)
def test_no_unseen_wording_is_a_training_instruction(task):
    spec = load_task(task)
    training = _training_instructions()
    scene = scene_items(spec)
    count = 0
    for named in _named(spec):
        own = spec.instruction.format(**{p: scene[n].label for p, n in named.items()})
        for index, template in enumerate(paraphrases(spec)):
            assert placeholders(template) == placeholders(spec.instruction), template
            for style in allowed_styles(spec, template, index, named):
                options = [describe(scene[named[p]], scene, style) for p in placeholders(template)]
                for chosen in itertools.product(*options):
                    text = template.format(**dict(zip(placeholders(template), chosen)))
                    assert text != own and text not in training, (style, text)
                    assert own not in text, text  # no "please <training instruction>"
                    assert set(text) <= set(INSTRUCTION_CHARSET), text
                    count += 1
    assert count > 20


def test_the_task_own_sentence_comes_only_with_reworded_descriptions():
    spec = load_task("pick_place")
    named = {"object": "red_cube", "target": "green_plate"}
    assert "label" not in allowed_styles(spec, spec.instruction, 0, named)
    assert "label" in allowed_styles(spec, PARAPHRASES["pick_place"][0], 1, named)


@pytest.mark.parametrize("task", TASKS)
def test_attribute_descriptions_only_name_what_is_unique_in_the_scene(task):
    spec = load_task(task)
    scene = scene_items(spec)
    for item in scene.values():
        others = [o for o in scene.values() if o.name != item.name]
        unique_colour = all(o.colour != item.colour for o in others)
        assert bool(describe(item, scene, "colour_attribute")) == unique_colour
        for phrase in describe(item, scene, "shape_attribute"):
            assert item_shape(item) in SHAPE_ATTRIBUTES[phrase]
            assert not any(item_shape(o) in SHAPE_ATTRIBUTES[phrase] for o in others)
        for style in STYLES:
            for description in describe(item, scene, style):
                assert _referents(description, spec) == [item.name], description


def test_round_one_names_a_cylinder_only_when_nothing_else_is_round():
    lift, reach, pick_place = (scene_items(load_task(t)) for t in ("lift", "reach", "pick_place"))
    assert "round one" in describe(lift["green_cylinder"], lift, "shape_attribute")
    # a ball in reach and plates in pick_place are round too
    assert describe(reach["blue_cylinder"], reach, "shape_attribute") == ["cylindrical one"]
    assert "round one" not in describe(pick_place["blue_cylinder"], pick_place, "shape_attribute")
    assert describe(lift["red_cube"], lift, "shape_attribute") == []  # two cubes
    twins = TaskSpec(
        name="twins",
        kind="stack",
        instruction="stack the {object} on the {target}",
        objects=[ObjectSpec("red_cube"), ObjectSpec("red_ball", shape="ball")],
    )
    scene = scene_items(twins)
    assert describe(scene["red_cube"], scene, "colour_attribute") == []
    assert describe(scene["red_ball"], scene, "shape_attribute") == ["round one", "spherical one"]


def test_wording_is_drawn_from_the_episode_seed_alone():
    spec = load_task("pick_place")
    seeds = [episode_seed("pick_place", 0, i, "eval") for i in range(40)]
    first = [choose_wording(spec, "red_cube", "green_plate", s) for s in seeds]
    again = [choose_wording(spec, "red_cube", "green_plate", s) for s in seeds]
    assert first == again
    assert len({w.paraphrase for w in first}) == len(paraphrases(spec))
    assert len({w.style for w in first}) >= 4
    # another env instance, as in another worker process, tells the episode the same words
    told = []
    for _ in range(2):
        env = fmmm.envs.make_env("pick_place", render=False)
        steps = episode_steps(env, seeds[3], wording="unseen")
        told.append(next(steps)["instruction"])
        steps.close()
        env.close()
    assert told[0] == told[1] != load_task("pick_place").instruction


@pytest.mark.parametrize("task", TASKS)
def test_unseen_instruction_names_the_episode_own_object(task):
    env = fmmm.envs.make_env(task, render=False)
    spec = env.unwrapped.spec_task
    try:
        for index in range(6):
            seed = episode_seed(task, 0, index, "eval")
            steps = episode_steps(env, seed, wording="unseen")
            instruction = next(steps)["instruction"]
            steps.close()
            wording = episode_wording(env, seed)
            assert instruction == wording.instruction
            scene = env.unwrapped.episode_record()
            for placeholder, description in wording.descriptions.items():
                assert f"the {description}" in instruction
                assert _referents(description, spec) == [scene[placeholder]], description
    finally:
        env.close()


def test_wording_both_reports_templates_and_unseen_on_the_same_episodes(tmp_path):
    from fmmm.eval.rollout import evaluate

    command = [sys.executable, "-m", "fmmm.eval", "--policy", "scripted", "--task", "reach"]
    command += ["--episodes", "2", "--wording", "both", "--num-envs", "2", "--out", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "templates" in run.stdout and "unseen only" in run.stdout and "McNemar" in run.stdout
    language = json.loads((tmp_path / "language.json").read_text())
    reach = language["summary"]["reach"]  # the scripted expert ignores language
    assert (reach["success_templates"], reach["success_unseen"], reach["loss"]) == (1, 1, 0)
    assert (reach["only_templates"], reach["only_unseen"], reach["p_value"]) == (0, 0, 1)
    assert sum(s["episodes"] for s in reach["unseen_by_style"].values()) == 2
    runs = language["runs"]
    assert runs["templates"]["wording"] == "templates" and runs["unseen"]["wording"] == "unseen"
    assert all(row["wording"] is None for row in runs["templates"]["episodes"])
    seeds = [row["seed"] for row in runs["templates"]["episodes"]]
    assert seeds == [row["seed"] for row in runs["unseen"]["episodes"]]
    for pair, row in zip(language["episodes"], runs["unseen"]["episodes"]):
        assert row["wording"]["style"] in STYLES and pair["wording"] == row["wording"]
        assert row["instruction"] != "reach the " + row["scene"]["object"].replace("_", " ")
    # one env in this process gives the rows of the two env workers
    here = evaluate("scripted", ["reach"], 2, wording="unseen", progress=False)
    assert [(r["instruction"], r["wording"]) for r in here["episodes"]] == [
        (r["instruction"], r["wording"]) for r in runs["unseen"]["episodes"]
    ]


@pytest.mark.parametrize("wording", ["unseen", "both"])
def test_instruction_and_unseen_wording_together_are_one_line_error(capsys, wording):
    from fmmm.eval.__main__ import main

    args = ["--policy", "scripted", "--task", "reach", "--instruction", "touch the {object}"]
    assert main([*args, "--wording", wording]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --instruction and --wording") and error.count("\n") == 1
