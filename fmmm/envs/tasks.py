"""Task kinds: initial-state sampling and success detection from the simulator state.

Each kind (`reach`, `lift`, `push`, `pick_place`, `stack`, `open_drawer`) is registered by name;
a task spec (`tasks/*.yaml`) picks one and supplies its objects, ranges and thresholds. The `play`
kind is not a task of the suite: its episodes move the gripper to a place named relative to a
random object or target, under an instruction that says so, and make pretraining data.
"""

from __future__ import annotations

import string
from typing import Any

import mujoco
import numpy as np

from fmmm.envs.spec import ObjectSpec, TaskSpec
from fmmm.registry import Registry

KIND_REGISTRY = Registry("task kind")
PLACEHOLDERS = ("object", "target")  # what an instruction template may name


class Task:
    """Base task: places every object (and target) at reset; subclasses define success."""

    def __init__(self, spec: TaskSpec, model: mujoco.MjModel):
        self.spec = spec
        self.model = model
        self.ee_site = model.site("ee").id
        self.finger_geoms = np.array([model.geom("finger_left").id, model.geom("finger_right").id])
        self.objects = {o.name: o for o in spec.objects}
        self.body = {o.name: model.body(o.name).id for o in spec.objects}
        self.qpos_adr = {
            o.name: model.jnt_qposadr[model.joint(f"{o.name}_joint").id] for o in spec.objects
        }
        self.geom = {o.name: model.geom(o.name).id for o in spec.objects}
        self.mocap = {t.name: model.body_mocapid[model.body(t.name).id] for t in spec.targets}
        self.mocap.update(
            {d.name: model.body_mocapid[model.body(f"{d.name}_cabinet").id] for d in spec.drawers}
        )
        self.labels = {o.name: o.label for o in spec.objects}
        self.labels.update({t.name: t.label for t in spec.targets})
        self.labels.update({d.name: d.label for d in spec.drawers})
        self.object_name = spec.candidates[0]
        self.target_name: str | None = None

    # ----- reset -----
    def reset(self, rng: np.random.Generator, data: mujoco.MjData) -> None:
        """Pick what the instruction names and place the scene; only `rng` is drawn from."""
        self.object_name = str(rng.choice(self.spec.candidates))
        self.target_name = self.choose_target(rng)
        self.place_all(rng, data, self.fixed_positions(rng))

    def choose_target(self, rng: np.random.Generator) -> str | None:
        if not self.spec.targets:
            return None
        return str(rng.choice([t.name for t in self.spec.targets]))

    def fixed_positions(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {}

    def sample_xy(self, rng: np.random.Generator, taken: list[np.ndarray]) -> np.ndarray:
        init = self.spec.init
        for _ in range(1000):
            xy = np.array([rng.uniform(*init.x), rng.uniform(*init.y)])
            if all(np.linalg.norm(xy - other) >= init.min_distance for other in taken):
                return xy
        raise RuntimeError(
            f"task {self.spec.name}: cannot place the objects {init.min_distance} m apart in the init region; widen init.x/init.y"
        )

    def place_all(
        self, rng: np.random.Generator, data: mujoco.MjData, fixed: dict[str, np.ndarray]
    ) -> None:
        taken = list(fixed.values())
        positions = dict(fixed)
        names = [o.name for o in self.spec.objects] + [t.name for t in self.spec.targets]
        for name in names:
            if name not in positions:
                positions[name] = self.sample_xy(rng, taken)
                taken.append(positions[name])
        for obj in self.spec.objects:
            yaw = rng.uniform(*self.spec.init.yaw)
            adr = self.qpos_adr[obj.name]
            data.qpos[adr : adr + 3] = [*positions[obj.name], obj.rest_height]
            data.qpos[adr + 3 : adr + 7] = [np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        for target in self.spec.targets:
            data.mocap_pos[self.mocap[target.name]] = [*positions[target.name], 0.001]
        jitter = self.spec.init.drawer_jitter
        for drawer in self.spec.drawers:
            shift = rng.uniform(-jitter, jitter, size=2)
            data.mocap_pos[self.mocap[drawer.name]] = [*(np.asarray(drawer.pos) + shift), 0.0]

    # ----- language -----
    def instruction(self, template: str | None = None) -> str:
        """The episode's instruction: `template` (default: the spec's) with {object} and {target}
        filled from the labels of what this episode names."""
        fields = {"object": self.labels[self.object_name]}
        if self.target_name is not None:
            fields["target"] = self.labels[self.target_name]
        if template is None:
            return self.spec.instruction.format(**fields)
        return fill_template(template, fields, self.spec.name)

    # ----- state views (privileged; used by the detectors and the scripted experts) -----
    def object_pos(self, data: mujoco.MjData, name: str | None = None) -> np.ndarray:
        return data.xpos[self.body[name or self.object_name]].copy()

    def object_yaw(self, data: mujoco.MjData, name: str | None = None) -> float:
        mat = data.xmat[self.body[name or self.object_name]].reshape(3, 3)
        return float(np.arctan2(mat[1, 0], mat[0, 0]))

    def target_pos(self, data: mujoco.MjData) -> np.ndarray:
        if self.target_name in self.mocap:
            return data.mocap_pos[self.mocap[self.target_name]].copy()
        return self.object_pos(data, self.target_name)

    def ee_pos(self, data: mujoco.MjData) -> np.ndarray:
        return data.site_xpos[self.ee_site].copy()

    def touching_fingers(self, data: mujoco.MjData, name: str) -> bool:
        """Whether either finger is in contact with object `name` (the object is held)."""
        if data.ncon == 0:
            return False
        pairs = data.contact.geom[: data.ncon]
        with_object = (pairs == self.geom[name]).any(axis=1)
        with_finger = np.isin(pairs, self.finger_geoms).any(axis=1)
        return bool((with_object & with_finger).any())

    def rest_height(self, name: str | None = None) -> float:
        return self.objects[name or self.object_name].rest_height

    def episode_record(self) -> dict[str, Any]:
        return {"object": self.object_name, "target": self.target_name}

    def is_success(self, data: mujoco.MjData) -> bool:
        raise NotImplementedError


@KIND_REGISTRY.register("reach")
class Reach(Task):
    """Bring the gripper's grasp point within `success.distance` of the named object's centre."""

    def is_success(self, data: mujoco.MjData) -> bool:
        gap = np.linalg.norm(self.ee_pos(data) - self.object_pos(data))
        return bool(gap < self.spec.success.distance)


@KIND_REGISTRY.register("lift")
class Lift(Task):
    """Raise the named object `success.lift_height` above its resting height."""

    def is_success(self, data: mujoco.MjData) -> bool:
        height = self.object_pos(data)[2] - self.rest_height()
        return bool(height > self.spec.success.lift_height)


@KIND_REGISTRY.register("push")
class Push(Task):
    """Slide the named object until its centre is within `success.distance` of the target's."""

    def fixed_positions(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        init = self.spec.init
        for _ in range(1000):
            start = np.array([rng.uniform(*init.x), rng.uniform(*init.y)])
            angle = rng.uniform(-np.pi, np.pi)
            goal = start + rng.uniform(*init.push_distance) * np.array(
                [np.cos(angle), np.sin(angle)]
            )
            if init.x[0] <= goal[0] <= init.x[1] and init.y[0] <= goal[1] <= init.y[1]:
                return {self.object_name: start, self.target_name: goal}
        raise RuntimeError(
            f"task {self.spec.name}: init.push_distance does not fit the init region"
        )

    def is_success(self, data: mujoco.MjData) -> bool:
        gap = np.linalg.norm(self.object_pos(data)[:2] - self.target_pos(data)[:2])
        return bool(gap < self.spec.success.distance)


@KIND_REGISTRY.register("pick_place")
class PickPlace(Task):
    """Put the named object on the target region, resting and released."""

    def is_success(self, data: mujoco.MjData) -> bool:
        pos = self.object_pos(data)
        gap = np.linalg.norm(pos[:2] - self.target_pos(data)[:2])
        resting = pos[2] < self.rest_height() + self.spec.success.height_tolerance
        # The contact scan last: it is the costly check, and rarely needed.
        return bool(gap < self.spec.success.distance and resting) and not self.touching_fingers(
            data, self.object_name
        )


@KIND_REGISTRY.register("stack")
class Stack(Task):
    """Rest the named object on top of another named cube, released."""

    def __init__(self, spec: TaskSpec, model: mujoco.MjModel):
        super().__init__(spec, model)
        self.bases = [o.name for o in spec.objects if o.shape == "cube"]
        if not self.bases or (
            len(self.bases) == 1 and self.bases[0] in spec.candidates and len(spec.candidates) == 1
        ):
            raise ValueError(
                f"task {spec.name}: stack needs a cube to stack on besides the named object"
            )

    def choose_target(self, rng: np.random.Generator) -> str | None:
        return str(rng.choice([b for b in self.bases if b != self.object_name]))

    def is_success(self, data: mujoco.MjData) -> bool:
        top, base = self.object_pos(data), self.object_pos(data, self.target_name)
        top_spec: ObjectSpec = self.objects[self.object_name]
        expected = base[2] + self.rest_height(self.target_name) + top_spec.rest_height
        aligned = np.linalg.norm(top[:2] - base[:2]) < self.spec.success.distance
        seated = abs(top[2] - expected) < self.spec.success.height_tolerance
        return bool(aligned and seated) and not self.touching_fingers(data, self.object_name)


@KIND_REGISTRY.register("open_drawer")
class OpenDrawer(Task):
    """Pull the named drawer out by at least `success.open_distance`."""

    def __init__(self, spec: TaskSpec, model: mujoco.MjModel):
        super().__init__(spec, model)
        self.slide_adr = {
            d.name: model.jnt_qposadr[model.joint(f"{d.name}_slide").id] for d in spec.drawers
        }
        self.handle = {d.name: model.geom(f"{d.name}_handle").id for d in spec.drawers}

    def drawer_opening(self, data: mujoco.MjData, name: str | None = None) -> float:
        return float(data.qpos[self.slide_adr[name or self.object_name]])

    def handle_pos(self, data: mujoco.MjData) -> np.ndarray:
        return data.geom_xpos[self.handle[self.object_name]].copy()

    def is_success(self, data: mujoco.MjData) -> bool:
        return self.drawer_opening(data) > self.spec.success.open_distance


# Play goals: relation -> offset (metres) from the named thing's centre. The robot stands at
# -x looking along +x, so its left is +y and "in front of" is towards it (-x).
PLAY_RELATIONS = {
    "above": (0.0, 0.0, 0.09),
    "to the left of": (0.0, 0.07, 0.05),
    "to the right of": (0.0, -0.07, 0.05),
    "in front of": (-0.07, 0.0, 0.05),
    "behind": (0.07, 0.0, 0.05),
}
PLAY_MIN_HEIGHT = 0.05  # goals stay this high above the table, clear of the objects
# How play instructions say it, as a captioner would: verbs and sentence openings, and words for
# colours and shapes beyond the labels. Half of the play episodes describe the named thing with
# the label ("green square"), the other half with a colour and a shape word drawn from these lists,
# so pretraining ties these words to what the cameras see. (They include the synonyms that
# `python -m fmmm.eval --wording unseen` uses; the suite's demonstrations use labels only.)
PLAY_OPENINGS = ("move", "go", "put the gripper", "bring the gripper", "hover")
PLAY_COLOUR_WORDS = {
    "red": ("red", "crimson", "scarlet", "ruby"),
    "green": ("green", "emerald", "jade", "lime"),
    "blue": ("blue", "navy", "azure", "cobalt"),
    "yellow": ("yellow", "golden", "lemon", "mustard"),
    "purple": ("purple", "violet", "plum", "lilac"),
    "orange": ("orange", "amber", "tangerine", "copper"),
    "white": ("white", "ivory", "snowy", "pale"),
    "black": ("black", "ebony", "jet", "dark"),
}
PLAY_SHAPE_WORDS = {
    "cube": ("cube", "block", "box", "brick"),
    "cylinder": ("cylinder", "can", "tube", "tin"),
    "ball": ("ball", "sphere", "orb", "globe"),
    "plate": ("plate", "dish", "saucer", "disc"),
    "square": ("square", "pad", "mat", "tile"),
}


@KIND_REGISTRY.register("play")
class Play(Task):
    """Move the gripper to a place named relative to one object or target of the scene.

    At reset the episode draws the thing to name (any object or target), the relation
    (`PLAY_RELATIONS`), the gripper's opening (open or closed throughout), a wrist yaw and the
    wording; the instruction says where to go ("move to the left of the green square", "hover
    above the jade tile"), and success is the grasp point within `success.distance` of that
    place. Play episodes teach what every task
    needs (find the named thing in the cameras, move relative to it) without doing any task of
    the suite, so a policy pretrained on them can be compared with fresh weights on the suite.
    """

    def __init__(self, spec: TaskSpec, model: mujoco.MjModel):
        super().__init__(spec, model)
        self.things = {o.name: o for o in spec.objects} | {t.name: t for t in spec.targets}
        self.anchors = list(self.things)
        self.relation = next(iter(PLAY_RELATIONS))
        self.grip, self.yaw = -1.0, 0.0
        self.opening, self.description = PLAY_OPENINGS[0], ""

    def choose_target(self, rng: np.random.Generator) -> str | None:
        # The named thing (object or target) is `target_name`; `object_name` stays the first
        # candidate, so the instruction template's {object} is never a loose object by accident.
        self.relation = str(rng.choice(list(PLAY_RELATIONS)))
        self.grip = float(rng.choice([-1.0, 1.0]))
        self.yaw = float(rng.uniform(-0.6, 0.6))
        anchor = str(rng.choice(self.anchors))
        thing = self.things[anchor]
        self.opening = str(rng.choice(PLAY_OPENINGS))
        self.description = thing.label
        if rng.random() < 0.5:
            colour = str(rng.choice(PLAY_COLOUR_WORDS[thing.colour]))
            shape = str(rng.choice(PLAY_SHAPE_WORDS[thing.shape]))
            self.description = f"{colour} {shape}"
        return anchor

    def goal(self, data: mujoco.MjData) -> np.ndarray:
        """The place the instruction names, from the named thing's current position."""
        goal = self.target_pos(data) + np.asarray(PLAY_RELATIONS[self.relation])
        goal[2] = max(goal[2], PLAY_MIN_HEIGHT)
        return goal

    def instruction(self, template: str | None = None) -> str:
        if template is not None:
            return super().instruction(template)
        return f"{self.opening} {self.relation} the {self.description}"

    def episode_record(self) -> dict[str, Any]:
        return {**super().episode_record(), "relation": self.relation}

    def is_success(self, data: mujoco.MjData) -> bool:
        gap = np.linalg.norm(self.ee_pos(data) - self.goal(data))
        return bool(gap < self.spec.success.distance)


def fill_template(template: str, fields: dict[str, str], task: str) -> str:
    """`template` with its {name} placeholders filled from `fields`; a placeholder that is not a
    known one ({object}, {target}) or that `task` has no value for raises a one-line ValueError."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(
            f"instruction {template!r}: {exc} (write {{{{ for a literal brace)"
        ) from None
    for name in names:
        if name not in PLACEHOLDERS:
            known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
            raise ValueError(
                f"unknown placeholder {{{name}}} in instruction {template!r}; known: {known}"
            )
        if name not in fields:
            raise ValueError(f"task {task} has no {{{name}}} to fill in instruction {template!r}")
    return template.format_map(fields)


def build_task(spec: TaskSpec, model: mujoco.MjModel) -> Task:
    """The task object of `spec.kind` bound to the compiled scene."""
    return KIND_REGISTRY.get(spec.kind)(spec, model)
