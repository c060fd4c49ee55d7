"""Instruction wordings never seen in training, as data, and the choice of one per episode.

Training instructions are a task spec's template with `{object}` / `{target}` filled with labels
("pick up the red cube and place it on the green plate"). An unseen wording changes the sentence
(a paraphrase of the task kind: another verb or sentence form), the descriptions of what it
names, or both, and never gives a training instruction back:

    label             red cube       the training description (with a paraphrase only)
    colour_synonym    crimson cube
    shape_synonym     red block
    synonyms          crimson block
    colour_attribute  red one        only when nothing else in the scene has that colour
    shape_attribute   round one      only when the phrase fits no other shape in the scene

In these templates `{object}` and `{target}` stand for the episode's object and target described
in the wording's style, filled here from their specs (colour, shape), not from their labels. They
name what the episode names, so the env's success, which is relative to those, scores each episode
against the object its wording names. The wording of an episode is drawn from its seed alone, so
it does not depend on `--num-envs` or on which worker ran the episode.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import numpy as np

from fmmm.envs.spec import DrawerSpec, ObjectSpec, TargetSpec, TaskSpec
from fmmm.envs.tasks import fill_template

WORDINGS = ("templates", "unseen")  # what an evaluation tells the policy

# Per task kind: other verbs and sentence forms, never a kind's training template. The characters
# stay within the env's instruction charset (no '?').
PARAPHRASES: dict[str, tuple[str, ...]] = {
    "reach": (
        "touch the {object}",
        "move the gripper to the {object}",
        "could you go over to the {object}, please",
        "the gripper belongs at the {object}.",
    ),
    "lift": (
        "lift the {object}",
        "raise the {object} off the table",
        "grab the {object} and hold it up",
        "the {object} should end up in the air.",
    ),
    "push": (
        "slide the {object} onto the {target}",
        "nudge the {object} over to the {target}",
        "could you shove the {object} to the {target}, please",
        "the {object} needs to end up on the {target}.",
    ),
    "pick_place": (
        "move the {object} onto the {target}",
        "the {object} goes on the {target}.",
        "could you put the {object} on the {target}, please",
        "take the {object} and set it down on the {target}",
    ),
    "stack": (
        "put the {object} on top of the {target}",
        "place the {object} onto the {target}",
        "the {object} goes on top of the {target}.",
        "could you pile the {object} onto the {target}, please",
    ),
    "open_drawer": (
        "pull the {object} open",
        "pull out the {object}",
        "the {object} should be open.",
        "could you slide the {object} out, please",
    ),
}

COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "green": ("emerald", "jade"),
    "blue": ("navy", "azure"),
    "yellow": ("golden", "lemon"),
    "purple": ("violet", "plum"),
    "orange": ("amber", "tangerine"),
    "white": ("ivory", "snowy"),
    "black": ("ebony", "jet"),
}
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "cube": ("block", "box"),
    "cylinder": ("can", "tube"),
    "ball": ("sphere", "orb"),
    "plate": ("dish", "saucer"),
    "square": ("pad", "mat"),
    "drawer": (),  # no synonym that still says drawer: colour synonyms and attributes only
}
# attribute phrase -> the shapes it fits; it describes an item only when no other item of the
# scene has one of those shapes ("round one" is no name for a cylinder beside a ball)
SHAPE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "round one": ("cylinder", "ball", "plate"),
    "boxy one": ("cube",),
    "cylindrical one": ("cylinder",),
    "spherical one": ("ball",),
    "flat one": ("plate", "square"),
    "flat round one": ("plate",),
}
STYLES = (
    "label",
    "colour_synonym",
    "shape_synonym",
    "synonyms",
    "colour_attribute",
    "shape_attribute",
)
_STREAM = 0x1A46  # the wording's own random stream of an episode seed, apart from the env's

Item = ObjectSpec | TargetSpec | DrawerSpec


def item_shape(item: Item) -> str:
    """The shape word of an object, target or drawer ("drawer" for a drawer)."""
    return item.shape if isinstance(item, (ObjectSpec, TargetSpec)) else "drawer"


def scene_items(spec: TaskSpec) -> dict[str, Item]:
    """Every object, target and drawer of the task by name: what a description must tell apart."""
    return {item.name: item for item in (*spec.objects, *spec.targets, *spec.drawers)}


def describe(item: Item, scene: dict[str, Item], style: str) -> list[str]:
    """Every description of `item` in `style` (no article: "crimson block"), empty when the style
    cannot name it alone among `scene`."""
    colour, shape = item.colour, item_shape(item)
    others = [other for other in scene.values() if other.name != item.name]
    colours, shapes = COLOUR_SYNONYMS[colour], SHAPE_SYNONYMS[shape]
    if style == "label":
        return [item.label]
    if style == "colour_synonym":
        return [f"{word} {shape}" for word in colours]
    if style == "shape_synonym":
        return [f"{colour} {word}" for word in shapes]
    if style == "synonyms":
        return [f"{word} {noun}" for word in colours for noun in shapes]
    if style == "colour_attribute":
        return [] if any(other.colour == colour for other in others) else [f"{colour} one"]
    if style == "shape_attribute":
        return [
            phrase
            for phrase, fits in SHAPE_ATTRIBUTES.items()
            if shape in fits and not any(item_shape(other) in fits for other in others)
        ]
    raise ValueError(f"unknown description style {style!r}; known: {', '.join(STYLES)}")


def paraphrases(spec: TaskSpec) -> list[str]:
    """The sentences of the unseen wordings of `spec`: at index 0 its own template (only with
    reworded descriptions), then its kind's paraphrases."""
    if spec.kind not in PARAPHRASES:
        raise ValueError(f"task {spec.name}: no unseen wordings for kind {spec.kind!r}")
    return [spec.instruction, *(p for p in PARAPHRASES[spec.kind] if p != spec.instruction)]


def placeholders(template: str) -> list[str]:
    """The placeholder names of `template` in order ("object", "target")."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


@dataclass(frozen=True)
class Wording:
    """An episode's unseen wording: the instruction the policy is told and how it was made."""

    instruction: str
    paraphrase: int  # index into `paraphrases(spec)`; 0 is the task's own sentence
    template: str
    style: str
    descriptions: dict[str, str]  # placeholder -> description, e.g. {"object": "crimson block"}

    def record(self) -> dict[str, Any]:
        """The results.json `wording` field of the episode's row."""
        return {
            "paraphrase": self.paraphrase,
            "template": self.template,
            "style": self.style,
            "descriptions": dict(self.descriptions),
        }


def allowed_styles(
    spec: TaskSpec, template: str, paraphrase: int, named: dict[str, str]
) -> list[str]:
    """The styles that describe every item `template` names (`named`: placeholder -> item name)
    alone in the scene; not "label" with the task's own sentence (that is the training one)."""
    scene = scene_items(spec)
    return [
        style
        for style in STYLES
        if (paraphrase > 0 or style != "label")
        and all(describe(scene[named[p]], scene, style) for p in placeholders(template))
    ]


def choose_wording(spec: TaskSpec, object_name: str, target_name: str | None, seed: int) -> Wording:
    """The unseen wording of the episode `seed` that names `object_name` (and `target_name`):
    a sentence, then a style that can name both, then a description of each, all drawn from
    the seed."""
    rng = np.random.default_rng([seed, _STREAM])
    named = {"object": object_name}
    if target_name is not None:
        named["target"] = target_name
    sentences = [
        (index, template)
        for index, template in enumerate(paraphrases(spec))
        # the task's own sentence without placeholders would read as in training
        if set(placeholders(template)) <= set(named) and (index > 0 or placeholders(template))
    ]
    if not sentences:
        raise ValueError(f"task {spec.name}: no unseen wording names {sorted(named)}")
    paraphrase, template = sentences[int(rng.integers(len(sentences)))]
    styles = allowed_styles(spec, template, paraphrase, named)
    style = styles[int(rng.integers(len(styles)))]
    scene = scene_items(spec)
    descriptions = {}
    for placeholder in placeholders(template):
        options = describe(scene[named[placeholder]], scene, style)
        descriptions[placeholder] = options[int(rng.integers(len(options)))]
    instruction = fill_template(template, descriptions, spec.name)
    return Wording(instruction, paraphrase, template, style, descriptions)


def episode_wording(env: Any, seed: int) -> Wording:
    """The unseen wording of the episode that `env` has just been reset to with `seed`."""
    unwrapped = env.unwrapped
    task = getattr(unwrapped, "task", None)
    spec = getattr(task, "spec", None)
    if not isinstance(spec, TaskSpec):
        name = getattr(unwrapped, "task_name", type(unwrapped).__name__)
        raise ValueError(f"--wording unseen needs a tabletop task (objects with specs), not {name}")
    return choose_wording(spec, task.object_name, task.target_name, seed)
