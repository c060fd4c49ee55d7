"""Compose the MJCF scene of a task: the arm scene from `envs/arm.xml` plus the task's objects,
target regions and drawers (templates in `envs/`), and hash the result for provenance."""

from __future__ import annotations

import hashlib

from fmmm.envs.spec import COLOURS, DrawerSpec, ObjectSpec, TargetSpec, TaskSpec
from fmmm.resources import data_dir

OBJECTS_MARKER = "<!-- fmmm:objects -->"
# Collision bits: 1 = table, fingers and objects; 2 = arm links and palm (hit objects, not the
# table); 8 = drawers (hit only the fingers, so a drawer costs no contacts with the table).
_OBJECT_COLLISION = 'contype="1" conaffinity="3"'


def _rgba(colour: str) -> str:
    return " ".join(f"{c:g}" for c in COLOURS[colour])


def object_xml(obj: ObjectSpec) -> str:
    """A free body named `obj.name` with joint `<name>_joint`; placed at reset by the task."""
    if obj.shape == "cube":
        geom = f'type="box" size="{obj.size[0]:g} {obj.size[0]:g} {obj.size[0]:g}"'
    elif obj.shape == "cylinder":
        geom = f'type="cylinder" size="{obj.size[0]:g} {obj.size[1]:g}"'
    else:
        geom = f'type="sphere" size="{obj.size[0]:g}"'
    return (
        f'<body name="{obj.name}" pos="0 0 {obj.rest_height:g}">'
        f'<freejoint name="{obj.name}_joint"/>'
        f'<geom name="{obj.name}" {geom} rgba="{_rgba(obj.colour)}" mass="{obj.mass:g}" '
        f'condim="4" friction="1 0.01 0.0001" {_OBJECT_COLLISION}/>'
        "</body>"
    )


def target_xml(target: TargetSpec) -> str:
    """A flat, visual-only region on the table; a mocap body so reset can move it."""
    if target.shape == "plate":
        geom = f'type="cylinder" size="{target.radius:g} 0.001"'
    else:
        geom = f'type="box" size="{target.radius:g} {target.radius:g} 0.001"'
    return (
        f'<body name="{target.name}" mocap="true" pos="0 0 0.001">'
        f'<geom name="{target.name}" {geom} rgba="{_rgba(target.colour)}" '
        'contype="0" conaffinity="0"/></body>'
    )


def drawer_xml(drawer: DrawerSpec) -> str:
    template = (data_dir("envs") / "drawer.xml").read_text()
    return template.format(
        name=drawer.name, x=f"{drawer.pos[0]:g}", y=f"{drawer.pos[1]:g}", rgba=_rgba(drawer.colour)
    )


def scene_xml(spec: TaskSpec) -> str:
    """The full MJCF text of the task's scene (deterministic: same spec, same text)."""
    base = (data_dir("envs") / "arm.xml").read_text()
    if base.count(OBJECTS_MARKER) != 1:
        raise ValueError(f"envs/arm.xml must contain the marker {OBJECTS_MARKER} exactly once")
    parts = [object_xml(o) for o in spec.objects]
    parts += [target_xml(t) for t in spec.targets]
    parts += [drawer_xml(d) for d in spec.drawers]
    return base.replace(OBJECTS_MARKER, "\n    ".join(parts))


def scene_hash(xml: str) -> str:
    """sha256 of the scene text: every asset is inline, so this pins the whole model."""
    return hashlib.sha256(xml.encode("utf-8")).hexdigest()
