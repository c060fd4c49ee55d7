"""MuJoCo tabletop tasks: scenes from `envs/`, task specs from `tasks/*.yaml`, gymnasium ids.

`import fmmm.envs` registers `fmmm/<Task>-v0` for every task spec (e.g. `fmmm/PickPlace-v0`);
mujoco itself is imported only when an env is built.
"""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING, Any

from fmmm.envs.spec import load_task, task_names

if TYPE_CHECKING:
    from fmmm.envs.env import TabletopEnv


def _default_gl_backend() -> str:
    """EGL when libEGL loads (headless, works on CPU through Mesa), else OSMesa."""
    for library in ("libEGL.so.1", "libEGL.so"):
        try:
            ctypes.CDLL(library)
            return "egl"
        except OSError:
            continue
    return "osmesa"


# MuJoCo reads MUJOCO_GL when it is first imported, so the default is set before any import.
if "MUJOCO_GL" not in os.environ:
    os.environ["MUJOCO_GL"] = _default_gl_backend()


def gym_id(task: str) -> str:
    """Gymnasium id of a task spec name: `pick_place` -> `fmmm/PickPlace-v0`."""
    return "fmmm/" + "".join(part.capitalize() for part in task.split("_")) + "-v0"


def make_env(task: str, **kwargs: Any) -> TabletopEnv:
    """Build the env of task spec `task` (`render`, `image_size`, ... as `TabletopEnv` takes)."""
    from fmmm.envs.env import TabletopEnv

    return TabletopEnv(task, **kwargs)


def register_envs() -> list[str]:
    """Register one gymnasium id per task spec; returns the ids."""
    import gymnasium

    ids = []
    for name in task_names():
        env_id = gym_id(name)
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id,
                entry_point="fmmm.envs.env:TabletopEnv",
                kwargs={"task": name},
                max_episode_steps=load_task(name).max_steps,
            )
        ids.append(env_id)
    return ids


register_envs()

__all__ = ["gym_id", "load_task", "make_env", "register_envs", "task_names"]
