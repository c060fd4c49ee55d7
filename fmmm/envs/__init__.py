"""MuJoCo tabletop tasks: scenes from `envs/`, task specs from `tasks/*.yaml`, gymnasium ids.

`import fmmm.envs` registers `fmmm/<Task>-v0` for every task spec (e.g. `fmmm/PickPlace-v0`);
mujoco itself is imported only when an env is built.
"""

from __future__ import annotations

import ctypes
import os
from typing import TYPE_CHECKING, Any

from fmmm.envs import metaworld
from fmmm.envs.spec import load_task, suite_task_names, task_names

if TYPE_CHECKING:
    from fmmm.envs.env import TabletopEnv
    from fmmm.envs.metaworld import MetaWorldEnv


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


def make_env(task: str, **kwargs: Any) -> TabletopEnv | MetaWorldEnv:
    """Build the env of task spec `task` (`render`, `image_size`, ... as `TabletopEnv` takes);
    `metaworld:<env>` names build a `fmmm.envs.metaworld.MetaWorldEnv`."""
    if task.startswith(metaworld.PREFIX):
        return metaworld.MetaWorldEnv(task, **kwargs)
    from fmmm.envs.env import TabletopEnv

    return TabletopEnv(task, **kwargs)


def env_class(task: str) -> type:
    """The env class that `make_env(task)` builds (its `feature_names` name the state and action
    dimensions), without building one."""
    if task.startswith(metaworld.PREFIX):
        return metaworld.MetaWorldEnv
    from fmmm.envs.env import TabletopEnv

    return TabletopEnv


def expand_tasks(spec: str) -> list[str]:
    """Task names of a `--task` value: `all` (the fmmm suite: every task spec but the play
    specs, which make pretraining data), a suite such as `metaworld:mt10`,
    one task, or a comma-separated list of these; an unknown name raises ValueError."""
    known = task_names() + metaworld.task_names()
    tasks: list[str] = []
    for name in (part.strip() for part in spec.split(",")):
        if name == "all":
            tasks += suite_task_names()
        elif (suite := metaworld.suite_tasks(name)) is not None:
            tasks += suite
        elif name in known:
            tasks.append(name)
        else:
            suites = ", ".join(metaworld.PREFIX + suite for suite in metaworld.SUITES)
            raise ValueError(f"unknown task {name!r}; known: all, {suites}, {', '.join(known)}")
    return list(dict.fromkeys(tasks))


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

__all__ = [
    "env_class",
    "expand_tasks",
    "gym_id",
    "load_task",
    "make_env",
    "register_envs",
    "suite_task_names",
    "task_names",
]
