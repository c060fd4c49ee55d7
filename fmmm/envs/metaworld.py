"""Meta-World (Yu et al., CoRL 2019; the `metaworld` package, `pip install -e ".[metaworld]"`)
behind fmmm's env contract, so `fmmm.collect`, `fmmm.eval` and the VLA recipe run on a benchmark
someone else wrote.

Task names are `metaworld:<env>` (e.g. `metaworld:reach-v3`); `metaworld:mt10` names the MT10
suite. Each env wraps Meta-World's goal-observable v3 env of that task:

- observation: `"agentview"` (the `topview` camera) and `"wrist"` (`gripperPOV`) uint8
  (H, W, 3), `"state"` float32 (4,): end-effector position (3) and gripper opening in [0, 1]
  (Meta-World's own first four observation entries, LeRobot's `agent_pos`), `"instruction"` str.
  The object and goal positions are not in the state: the policy sees them in the images.
- action: Meta-World's own float32 (4,) in [-1, 1]: end-effector delta position (3, 1 cm per
  unit), gripper effort (-1 open, +1 close). The Sawyer's hand keeps its orientation, so there is
  no rotation to command; fmmm's VLA takes its action width from its fitted action tokenizer.
- success: Meta-World's `info["success"]` as `info["is_success"]`; the reward is Meta-World's own
  (v2 reward function). Episodes end at the first success and truncate at `max_steps` (200 by
  default: twice the longest scripted-expert episode of MT10; Meta-World itself allows 500).
- `reset(seed=...)`: object and goal placement drawn from the env's own generator only.

Shadows, reflections and multisampling are off in the cameras: on a CPU (EGL through Mesa) they
take a 64 px frame of a Meta-World scene from ~10 ms to ~150 ms.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

PREFIX = "metaworld:"
# Instructions in fmmm's style for each task (Meta-World itself has none; wording after the task
# descriptions of the Meta-World paper's appendix).
INSTRUCTIONS = {
    "reach-v3": "reach the goal position",
    "push-v3": "push the puck to the goal",
    "pick-place-v3": "pick up the puck and place it at the goal",
    "door-open-v3": "open the door",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "peg-insert-side-v3": "insert the peg into the hole from the side",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
}
SUITES = {"mt10": tuple(INSTRUCTIONS)}  # Meta-World's MT10, in its own order
STATE_DIM = 4
ACTION_DIM = 4
MAX_PATH_LENGTH = 500  # Meta-World's horizon; its env refuses to step past it


def task_names() -> list[str]:
    """Every Meta-World task fmmm registers, as `metaworld:<env>` names."""
    return [PREFIX + name for name in INSTRUCTIONS]


def suite_tasks(name: str) -> list[str] | None:
    """The tasks of suite `metaworld:<suite>` (e.g. `metaworld:mt10`); None for other names."""
    if not name.startswith(PREFIX) or name[len(PREFIX) :] not in SUITES:
        return None
    return [PREFIX + task for task in SUITES[name[len(PREFIX) :]]]


def _import_metaworld() -> None:
    try:
        import metaworld  # noqa: F401
    except ImportError:
        raise ValueError(
            'Meta-World tasks need the metaworld package: pip install -e ".[metaworld]"'
        ) from None


class MetaWorldEnv(gym.Env):
    """One Meta-World task in fmmm's observation/action contract (see the module docstring).

    Args:
        task: `metaworld:<env>` or `<env>` (e.g. `reach-v3`), one of `task_names()`.
        render: render both cameras; False gives state-only observations.
        image_size: height and width of both camera images.
        max_steps: step limit of an episode (at most Meta-World's 500).
        terminate_on_success: end the episode (terminated=True) on the first successful step.
        render_mode: gymnasium render mode; "rgb_array" makes `render()` return the agent view.
        agent_camera, wrist_camera: the Meta-World cameras behind "agentview" and "wrist".
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}
    feature_names = {
        "observation.state": ["ee_x", "ee_y", "ee_z", "gripper_opening"],
        "action": ["ee_dx", "ee_dy", "ee_dz", "gripper_effort"],
    }

    def __init__(
        self,
        task: str = "metaworld:reach-v3",
        render: bool = True,
        image_size: int = 64,
        max_steps: int = 200,
        terminate_on_success: bool = True,
        render_mode: str | None = None,
        agent_camera: str = "topview",
        wrist_camera: str = "gripperPOV",
    ):
        name = task.removeprefix(PREFIX)
        if name not in INSTRUCTIONS:
            raise ValueError(f"unknown Meta-World task {task!r}; known: {', '.join(task_names())}")
        if image_size < 8 or image_size > 640:
            raise ValueError(f"image_size must be in [8, 640], got {image_size}")
        if not 1 <= max_steps <= MAX_PATH_LENGTH:
            raise ValueError(f"max_steps must be in [1, {MAX_PATH_LENGTH}], got {max_steps}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        from importlib.metadata import version

        import mujoco

        _import_metaworld()
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE

        from fmmm.envs.env import INSTRUCTION_CHARSET

        self._mujoco = mujoco
        self.metaworld_version = version("metaworld")
        self.task_name = name
        self._env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{name}-goal-observable"]()
        # Draw each episode's placement from this env's generator (set in reset), not a fixed one.
        self._env._freeze_rand_vec = False
        self._env.seeded_rand_vec = True
        self.model, self.data = self._env.model, self._env.data
        self.cameras = {"agentview": agent_camera, "wrist": wrist_camera}
        for camera in self.cameras.values():
            self.model.camera(camera)  # KeyError names an unknown camera
        self.model.vis.quality.offsamples = 0  # read when the renderer's context is made
        self.render_images = render
        self.image_size = image_size
        self.max_steps = max_steps
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.instruction = INSTRUCTIONS[name]
        self.control_hz = 1.0 / (self._env.frame_skip * float(self.model.opt.timestep))
        self.metadata = {**self.metadata, "render_fps": self.control_hz}
        self._renderer: Any = None
        self._steps = 0
        self.raw_observation = np.zeros(39)  # Meta-World's full observation, for the expert
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        spaces: dict[str, gym.Space] = {
            "state": gym.spaces.Box(-2.0, 2.0, shape=(STATE_DIM,), dtype=np.float32),
            "instruction": gym.spaces.Text(max_length=256, charset=INSTRUCTION_CHARSET),
        }
        if render:
            image = gym.spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
            spaces = {"agentview": image, "wrist": image, **spaces}
        self.observation_space = gym.spaces.Dict(spaces)

    # ----- gymnasium API -----
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self._env.np_random = self.np_random
        self.raw_observation, _ = self._env.reset()
        self._steps = 0
        return self._observation(), {"is_success": False}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action must have shape ({ACTION_DIM},), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError("action contains NaN or inf")
        raw, reward, _, _, info = self._env.step(np.clip(action, -1.0, 1.0))
        self.raw_observation = raw
        self._steps += 1
        success = bool(info["success"])
        terminated = success and self.terminate_on_success
        truncated = self._steps >= self.max_steps and not terminated
        info = {**{k: float(v) for k, v in info.items()}, "is_success": success}
        return self._observation(), float(reward), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self._camera("agentview")

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._env.close()

    # ----- observations -----
    def _camera(self, name: str) -> np.ndarray:
        if self._renderer is None:
            from fmmm.envs.rendering import make_renderer

            self._renderer = make_renderer(self.model, self.image_size, self.image_size)
            flags = self._renderer.scene.flags
            flags[self._mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            flags[self._mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._renderer.update_scene(self.data, camera=self.cameras[name])
        return self._renderer.render()

    def _observation(self) -> dict[str, Any]:
        obs: dict[str, Any] = {}
        if self.render_images:
            obs["agentview"] = self._camera("agentview")
            obs["wrist"] = self._camera("wrist")
        obs["state"] = self.raw_observation[:STATE_DIM].astype(np.float32)
        obs["instruction"] = self.instruction
        return obs

    # ----- provenance -----
    @property
    def steps(self) -> int:
        return self._steps

    def metadata_record(self) -> dict[str, Any]:
        """What every dataset and result records about this env (versions, scene file hash)."""
        scene = Path(self._env.model_name)
        return {
            "task": PREFIX + self.task_name,
            "benchmark": "metaworld",
            "metaworld_version": self.metaworld_version,
            "mujoco_version": self._mujoco.__version__,
            "scene_file": scene.name,
            "scene_sha256": hashlib.sha256(scene.read_bytes()).hexdigest(),
            "control_hz": self.control_hz,
            "physics_timestep": float(self.model.opt.timestep),
            "n_substeps": int(self._env.frame_skip),
            "image_size": self.image_size,
            "cameras": dict(self.cameras),
            "render": self.render_images,
            "max_steps": self.max_steps,
        }

    def episode_record(self) -> dict[str, Any]:
        """The episode's initial object position and goal, and its instruction."""
        env = self._env
        return {
            "object_init": np.round(np.asarray(env.obj_init_pos, dtype=float), 4).tolist(),
            "goal": np.round(np.asarray(env._target_pos, dtype=float), 4).tolist(),
            "instruction": self.instruction,
        }


class MetaWorldExpert:
    """Meta-World's own scripted policy of the env's task, on the env's full observation."""

    def __init__(self, env: Any):
        self.env: MetaWorldEnv = env.unwrapped
        if not isinstance(self.env, MetaWorldEnv):
            raise ValueError(f"MetaWorldExpert needs a MetaWorldEnv, got {type(self.env).__name__}")
        from metaworld.policies import ENV_POLICY_MAP

        self.policy = ENV_POLICY_MAP[self.env.task_name]()

    def reset(self) -> None:
        pass  # Meta-World's scripted policies are stateless

    def act(self, observation: dict[str, Any] | None = None) -> np.ndarray:
        with warnings.catch_warnings():
            # its proportional gains exceed 1 on purpose; the env clips, and so do we
            warnings.simplefilter("ignore", UserWarning)
            action = self.policy.get_action(self.env.raw_observation)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
