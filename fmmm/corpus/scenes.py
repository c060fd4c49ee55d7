"""Image- and video-caption pairs rendered from the MuJoCo tabletop scene.

Each scene places one to three objects (cube, cylinder, ball; eight colours) on the table in
distinct cells of a 3 x 3 grid seen from a camera in front of the table, and the caption names every
object's colour, shape and position ("a red cube at the back left and a blue ball in the
centre"). Video clips move one object (slides left or right, moves towards or away from the
camera, rises, falls onto the table) and say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("cube", "cylinder", "ball")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SIZES = {"cube": [0.035], "cylinder": [0.032, 0.035], "ball": [0.038]}
# Grid cells in world coordinates: rows from the back (far from the camera) to the front.
ROWS = (("at the back", 0.28), ("in the middle", 0.43), ("at the front", 0.58))
COLS = (("left", -0.2), ("centre", 0.0), ("right", 0.2))
JITTER = 0.025
MOTIONS = {
    "slides to the left": (0.0, -0.14, 0.0),
    "slides to the right": (0.0, 0.14, 0.0),
    "moves towards the camera": (0.12, 0.0, 0.0),
    "moves away from the camera": (-0.12, 0.0, 0.0),
    "rises into the air": (0.0, 0.0, 0.15),
    "falls onto the table": (0.0, 0.0, -0.15),
}


@dataclass
class PlacedObject:
    shape: str
    colour: str
    row: int
    col: int
    xyz: tuple[float, float, float]

    def phrase(self) -> str:
        where, _ = ROWS[self.row]
        side, _ = COLS[self.col]
        if side == "centre":
            location = "in the centre" if self.row == 1 else f"{where} in the centre"
        else:
            location = f"on the {side}" if self.row == 1 else f"{where} {side}"
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.shape} {location}"


def sample_scene(rng: np.random.Generator, max_objects: int = 3) -> list[PlacedObject]:
    """One to `max_objects` objects with distinct (colour, shape) pairs in distinct grid cells."""
    count = int(rng.integers(1, max_objects + 1))
    cells = rng.choice(9, size=count, replace=False)
    kinds = rng.choice(len(SHAPES) * len(COLOURS), size=count, replace=False)
    objects = []
    for cell, kind in zip(cells, kinds):
        row, col = divmod(int(cell), 3)
        shape, colour = SHAPES[kind % len(SHAPES)], COLOURS[kind // len(SHAPES)]
        x = ROWS[row][1] + rng.uniform(-JITTER, JITTER)
        y = COLS[col][1] + rng.uniform(-JITTER, JITTER)
        z = SIZES[shape][-1]
        objects.append(PlacedObject(shape, colour, row, col, (x, y, z)))
    return objects


def scene_caption(objects: list[PlacedObject]) -> str:
    phrases = [obj.phrase() for obj in objects]
    text = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return text[0].upper() + text[1:] + "."


class SceneRenderer:
    """The arm scene with one hidden body per (shape, colour); objects are posed, then rendered."""

    def __init__(self, image_size: int = 64):
        import importlib

        from fmmm.envs.scene import OBJECTS_MARKER, object_xml
        from fmmm.envs.spec import ObjectSpec
        from fmmm.resources import data_dir

        mujoco = importlib.import_module("mujoco")  # after fmmm.envs has picked MUJOCO_GL
        self._mujoco = mujoco
        bodies = [
            object_xml(ObjectSpec(name=f"{c}_{s}", shape=s, colour=c, size=SIZES[s]))
            for s in SHAPES
            for c in COLOURS
        ]
        xml = (data_dir("envs") / "arm.xml").read_text().replace(OBJECTS_MARKER, "\n".join(bodies))
        self.model = mujoco.MjModel.from_xml_string(xml)
        self.data = mujoco.MjData(self.model)
        self.renderer = mujoco.Renderer(self.model, image_size, image_size)
        self.qpos_address = {
            f"{c}_{s}": int(
                self.model.jnt_qposadr[
                    mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_JOINT, f"{c}_{s}_joint")
                ]
            )
            for s in SHAPES
            for c in COLOURS
        }
        self.hidden = {name: (2.0 + i * 0.2, 3.0, -2.0) for i, name in enumerate(self.qpos_address)}
        # a camera framing the objects' grid, looking from the front as `agentview` does
        self.camera = mujoco.MjvCamera()
        self.camera.type = mujoco.mjtCamera.mjCAMERA_FREE
        self.camera.lookat[:] = (0.45, 0.0, 0.0)
        self.camera.distance, self.camera.azimuth, self.camera.elevation = 0.62, 180.0, -62.0

    def render(self, poses: dict[str, tuple[float, float, float]]) -> np.ndarray:
        """uint8 (H, W, 3) image of the table with the named objects at `poses`, others hidden."""
        qpos = self.data.qpos
        for name, address in self.qpos_address.items():
            qpos[address : address + 3] = poses.get(name, self.hidden[name])
            qpos[address + 3 : address + 7] = (1.0, 0.0, 0.0, 0.0)
        self._mujoco.mj_forward(self.model, self.data)
        self.renderer.update_scene(self.data, camera=self.camera)
        return self.renderer.render().copy()

    def close(self) -> None:
        self.renderer.close()


def render_image_pair(renderer: SceneRenderer, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """(image uint8 (H, W, 3), caption) of a random scene."""
    objects = sample_scene(rng)
    image = renderer.render({f"{o.colour}_{o.shape}": o.xyz for o in objects})
    return image, scene_caption(objects)


def render_video_pair(
    renderer: SceneRenderer, rng: np.random.Generator, frames: int = 4
) -> tuple[np.ndarray, str]:
    """(frames uint8 (T, H, W, 3), caption) of one object moving in a random scene."""
    objects = sample_scene(rng, max_objects=2)
    mover = objects[0]
    motion = list(MOTIONS)[int(rng.integers(len(MOTIONS)))]
    delta = np.array(MOTIONS[motion])
    start = np.array(mover.xyz)
    if motion == "falls onto the table":
        start = start - delta  # start in the air, end resting on the table
    clip = []
    for t in np.linspace(0.0, 1.0, frames):
        poses = {f"{o.colour}_{o.shape}": o.xyz for o in objects[1:]}
        poses[f"{mover.colour}_{mover.shape}"] = tuple(start + t * delta)
        clip.append(renderer.render(poses))
    caption = f"The {mover.colour} {mover.shape} {motion}"
    if len(objects) > 1:
        caption += f" while {objects[1].phrase()} stays still"
    return np.stack(clip), caption + "."


def render_poses(poses: dict[str, tuple[float, float, float]], image_size: int = 64) -> np.ndarray:
    """Render one image of objects named `<colour>_<shape>` at `poses` with a throwaway renderer."""
    renderer = SceneRenderer(image_size)
    try:
        return renderer.render(poses)
    finally:
        renderer.close()
