"""Task specs: typed dataclasses loaded from `tasks/<name>.yaml` (instruction, objects, ranges, limits).

A task variant is a new YAML file: the `kind` picks the success detector and scripted expert
(`fmmm/envs/tasks.py`), everything else (objects, colours, ranges, thresholds, step limit) is data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from fmmm.config import ConfigError, load_config
from fmmm.resources import data_dir

KINDS = ("reach", "lift", "push", "pick_place", "stack", "open_drawer", "play")
# Kinds that make pretraining data rather than a task of the suite (`all` leaves them out).
PLAY_KINDS = ("play",)
SHAPES = ("cube", "cylinder", "ball")
COLOURS = {
    "red": (0.85, 0.15, 0.15, 1.0),
    "green": (0.15, 0.7, 0.2, 1.0),
    "blue": (0.15, 0.3, 0.9, 1.0),
    "yellow": (0.95, 0.85, 0.1, 1.0),
    "purple": (0.6, 0.2, 0.75, 1.0),
    "orange": (0.95, 0.5, 0.1, 1.0),
    "white": (0.95, 0.95, 0.95, 1.0),
    "black": (0.08, 0.08, 0.08, 1.0),
}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _check_name(what: str, name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"{what} name {name!r} must be snake_case (a-z, 0-9, _)")


def _check_range(what: str, bounds: list[float]) -> None:
    if len(bounds) != 2 or bounds[0] > bounds[1]:
        raise ValueError(f"{what} must be [low, high] with low <= high, got {list(bounds)}")


@dataclass
class ObjectSpec:
    """A loose rigid object (free body); `size` is the half-extent (cube), radius (ball) or radius,half-height (cylinder)."""

    name: str = ""
    shape: str = "cube"
    colour: str = "red"
    size: list[float] = field(default_factory=list)
    mass: float = 0.1

    def __post_init__(self) -> None:
        _check_name("object", self.name)
        if self.shape not in SHAPES:
            raise ValueError(f"object {self.name}: shape {self.shape!r} not in {SHAPES}")
        if self.colour not in COLOURS:
            raise ValueError(f"object {self.name}: colour {self.colour!r} not in {tuple(COLOURS)}")
        if not self.size:
            self.size = {"cube": [0.02], "cylinder": [0.02, 0.025], "ball": [0.022]}[self.shape]
        expected = 2 if self.shape == "cylinder" else 1
        if len(self.size) != expected or min(self.size) <= 0:
            raise ValueError(f"object {self.name}: size needs {expected} positive value(s)")
        if self.mass <= 0:
            raise ValueError(f"object {self.name}: mass must be positive")

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def rest_height(self) -> float:
        """Height of the centre above the table when the object rests upright."""
        return self.size[1] if self.shape == "cylinder" else self.size[0]


@dataclass
class TargetSpec:
    """A flat coloured region on the table (visual only: it does not touch the physics)."""

    name: str = ""
    colour: str = "green"
    radius: float = 0.05
    shape: str = "plate"

    def __post_init__(self) -> None:
        _check_name("target", self.name)
        if self.colour not in COLOURS:
            raise ValueError(f"target {self.name}: colour {self.colour!r} not in {tuple(COLOURS)}")
        if self.shape not in ("plate", "square"):
            raise ValueError(f"target {self.name}: shape {self.shape!r} not in ('plate', 'square')")
        if self.radius <= 0:
            raise ValueError(f"target {self.name}: radius must be positive")

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class DrawerSpec:
    """A drawer that slides out of its cabinet towards the robot; `pos` is the cabinet's mean table position."""

    name: str = ""
    colour: str = "red"
    pos: list[float] = field(default_factory=lambda: [0.55, 0.0])

    def __post_init__(self) -> None:
        _check_name("drawer", self.name)
        if self.colour not in COLOURS:
            raise ValueError(f"drawer {self.name}: colour {self.colour!r} not in {tuple(COLOURS)}")
        if len(self.pos) != 2:
            raise ValueError(f"drawer {self.name}: pos must be [x, y]")

    @property
    def label(self) -> str:
        return f"{self.colour} drawer"


@dataclass
class InitSpec:
    """Initial-state ranges, all drawn from the env's own generator at reset."""

    x: list[float] = field(default_factory=lambda: [0.32, 0.58])
    y: list[float] = field(default_factory=lambda: [-0.2, 0.2])
    yaw: list[float] = field(default_factory=lambda: [-0.4, 0.4])
    min_distance: float = 0.1
    arm_noise: float = 0.03
    push_distance: list[float] = field(default_factory=lambda: [0.1, 0.18])
    drawer_jitter: float = 0.03

    def __post_init__(self) -> None:
        for key in ("x", "y", "yaw", "push_distance"):
            _check_range(f"init.{key}", getattr(self, key))
        if min(self.min_distance, self.arm_noise, self.drawer_jitter) < 0:
            raise ValueError(
                "init.min_distance, init.arm_noise and init.drawer_jitter must be >= 0"
            )


@dataclass
class SuccessSpec:
    """Thresholds of the success detector (metres); each kind reads the ones it needs."""

    distance: float = 0.04
    lift_height: float = 0.06
    open_distance: float = 0.1
    height_tolerance: float = 0.012

    def __post_init__(self) -> None:
        for key in ("distance", "lift_height", "open_distance", "height_tolerance"):
            if getattr(self, key) <= 0:
                raise ValueError(f"success.{key} must be positive")


@dataclass
class TaskSpec:
    """One task: what to do (kind, instruction), with what (objects, targets, drawers), and limits."""

    name: str = ""
    kind: str = "reach"
    instruction: str = "reach the {object}"
    max_steps: int = 60
    objects: list[ObjectSpec] = field(default_factory=list)
    targets: list[TargetSpec] = field(default_factory=list)
    drawers: list[DrawerSpec] = field(default_factory=list)
    # Names of the objects (or drawers) the instruction may name; empty means all of them.
    candidates: list[str] = field(default_factory=list)
    init: InitSpec = field(default_factory=InitSpec)
    success: SuccessSpec = field(default_factory=SuccessSpec)

    def __post_init__(self) -> None:
        _check_name("task", self.name)
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name}: kind {self.kind!r} not in {KINDS}")
        if self.max_steps < 1:
            raise ValueError(f"task {self.name}: max_steps must be >= 1")
        names = [o.name for o in self.objects] + [t.name for t in self.targets]
        names += [d.name for d in self.drawers]
        if len(set(names)) != len(names):
            raise ValueError(f"task {self.name}: object/target/drawer names must be unique")
        pool = self.drawers if self.kind == "open_drawer" else self.objects
        if not pool:
            raise ValueError(
                f"task {self.name}: kind {self.kind} needs at least one {'drawer' if self.kind == 'open_drawer' else 'object'}"
            )
        pool_names = [p.name for p in pool]
        unknown = [c for c in self.candidates if c not in pool_names]
        if unknown:
            raise ValueError(f"task {self.name}: candidates {unknown} are not among {pool_names}")
        if not self.candidates:
            self.candidates = pool_names
        if self.kind in ("push", "pick_place") and not self.targets:
            raise ValueError(f"task {self.name}: kind {self.kind} needs at least one target")
        if self.kind == "stack" and len(self.objects) < 2:
            raise ValueError(f"task {self.name}: kind stack needs at least two objects")
        for placeholder in re.findall(r"{(\w+)}", self.instruction):
            if placeholder not in ("object", "target"):
                raise ValueError(
                    f"task {self.name}: instruction placeholder {{{placeholder}}} unknown; use {{object}} and {{target}}"
                )


def task_path(name: str) -> Path:
    return data_dir("tasks") / f"{name}.yaml"


def task_names() -> list[str]:
    """Names of every task spec shipped in `tasks/` (snake_case, e.g. `pick_place`)."""
    return sorted(p.stem for p in data_dir("tasks").glob("*.yaml"))


def suite_task_names() -> list[str]:
    """Names of the task specs that make up the suite (`all`): every spec whose kind is not a
    play kind (play specs make pretraining data, see `fmmm.envs.tasks.Play`)."""
    return [name for name in task_names() if _kind_of(task_path(name)) not in PLAY_KINDS]


def _kind_of(path: Path) -> str:
    from omegaconf import OmegaConf

    return str(OmegaConf.load(path).get("kind", TaskSpec.kind))


def load_task(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TaskSpec:
    """Load a task spec by name (`tasks/<name>.yaml`) or from a YAML path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = task_path(str(name_or_path))
        if not path.is_file():
            raise ConfigError(
                f"unknown task {str(name_or_path)!r}; known: {', '.join(task_names())}"
            )
    spec = load_config(TaskSpec, path, [f"name={path.stem}", *overrides])
    return spec
