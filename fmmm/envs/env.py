"""The tabletop gymnasium environment: a 6-DoF arm driven by end-effector deltas through IK.

Control: each `step` maps the 7-D action in [-1, 1] to a bounded end-effector delta (position,
axis-angle rotation) and a gripper command, solves one damped-least-squares IK step on the site
Jacobian for joint-position targets, then runs `n_substeps` physics steps (one `mj_step` call).
Cameras render once per control step.
"""

from __future__ import annotations

import math
import string
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np

from fmmm.envs.rendering import make_renderer
from fmmm.envs.scene import scene_hash, scene_xml
from fmmm.envs.spec import TaskSpec, load_task
from fmmm.envs.tasks import build_task

ARM_JOINTS = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")
FINGER_OPEN = 0.04  # per finger, metres
# 6 joints, gripper opening, end-effector position (3) and orientation as the first two columns
# of its rotation matrix (6): continuous, unlike a quaternion, whose sign flips when w crosses 0
# (near the home pose, where the gripper points straight down) and makes the state jump by ~2.
STATE_DIM = 16
# Generous bounds of the state: joint angles (rad), opening (m), position (m), rotation entries.
STATE_BOUND = np.array([2 * np.pi] * 6 + [1.0] + [2.0] * 3 + [1.0] * 6, dtype=np.float32)
# Per-dimension names of the state and action vectors, recorded as the datasets' feature `names`.
STATE_NAMES = (
    *ARM_JOINTS,
    "gripper_opening",
    "ee_x",
    "ee_y",
    "ee_z",
    *(f"ee_r{row}{column}" for column in range(2) for row in range(3)),  # rotation columns 0, 1
)
ACTION_NAMES = ("ee_dx", "ee_dy", "ee_dz", "ee_drx", "ee_dry", "ee_drz", "gripper_close")
INSTRUCTION_CHARSET = string.ascii_letters + string.digits + " ,.'-_"
# The gripper points down and rotates about the vertical: hand x axis along world -x at yaw 0.
DOWN = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])


def rotvec_of(mat: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a 3x3 rotation matrix."""
    quat = np.empty(4)
    mujoco.mju_mat2Quat(quat, np.ascontiguousarray(mat).reshape(9))
    vel = np.empty(3)
    mujoco.mju_quat2Vel(vel, quat, 1.0)
    return vel


def quat_of(rotvec: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write the unit quaternion of an axis-angle vector into `out` (w, x, y, z)."""
    x, y, z = rotvec.tolist()  # Python floats: cheaper than numpy calls on 3 numbers
    angle = math.sqrt(x * x + y * y + z * z)
    if angle < 1e-12:
        out[:] = (1.0, 0.0, 0.0, 0.0)
    else:
        scale = math.sin(0.5 * angle) / angle
        out[:] = (math.cos(0.5 * angle), x * scale, y * scale, z * scale)
    return out


class TabletopEnv(gym.Env):
    """One task of the fmmm tabletop suite (see docs/architecture.md for the contract).

    Args:
        task: task spec name (`tasks/<task>.yaml`), a YAML path, or a `TaskSpec`.
        render: render the agent-view and wrist cameras; False gives state-only observations
            (no image keys) for fast expert checks and benchmarks.
        image_size: height and width of both camera images.
        control_hz: control steps per simulated second (physics runs at the model's timestep).
        terminate_on_success: end the episode (terminated=True) on the first successful step.
        render_mode: gymnasium render mode; "rgb_array" makes `render()` return the agent view.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    feature_names = {"observation.state": list(STATE_NAMES), "action": list(ACTION_NAMES)}

    def __init__(
        self,
        task: str | TaskSpec = "pick_place",
        render: bool = True,
        image_size: int = 64,
        control_hz: float = 10.0,
        terminate_on_success: bool = True,
        render_mode: str | None = None,
        max_pos_delta: float = 0.04,
        max_rot_delta: float = 0.25,
    ):
        if image_size < 8 or image_size > 640:
            raise ValueError(f"image_size must be in [8, 640], got {image_size}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.spec_task = task if isinstance(task, TaskSpec) else load_task(task)
        self.xml = scene_xml(self.spec_task)
        self.model = mujoco.MjModel.from_xml_string(self.xml)
        self.data = mujoco.MjData(self.model)
        physics_hz = 1.0 / self.model.opt.timestep
        self.n_substeps = int(round(physics_hz / control_hz))
        if (
            self.n_substeps < 1
            or abs(self.n_substeps * control_hz - physics_hz) > 1e-6 * physics_hz
        ):
            raise ValueError(
                f"control_hz {control_hz} must divide the physics rate {physics_hz:g} Hz"
            )
        self.control_hz = control_hz
        self.render_images = render
        self.image_size = image_size
        self.render_mode = render_mode
        self.terminate_on_success = terminate_on_success
        self.max_pos_delta = max_pos_delta
        self.max_rot_delta = max_rot_delta
        self.max_steps = self.spec_task.max_steps
        self.metadata = {**self.metadata, "render_fps": control_hz}
        self.task = build_task(self.spec_task, self.model)
        self._index_arm()
        self._jac = np.zeros((6, self.model.nv))
        self._jjt = np.zeros((6, 6))
        self._error = np.zeros(6)
        self._solution = np.zeros(6)
        self._damping = 2.5e-3 * np.eye(6)
        self._target_pos = np.zeros(3)
        self._target_quat = np.array([1.0, 0.0, 0.0, 0.0])
        # Scratch quaternions and vectors for the per-step orientation arithmetic.
        self._ee_quat, self._delta_quat, self._quat = np.zeros(4), np.zeros(4), np.zeros(4)
        self._rot_error = np.zeros(3)
        self._state_buffer = np.zeros(STATE_DIM, dtype=np.float32)
        self._renderer: mujoco.Renderer | None = None
        self._steps = 0
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(7,), dtype=np.float32)
        spaces: dict[str, gym.Space] = {
            "state": gym.spaces.Box(-STATE_BOUND, STATE_BOUND, dtype=np.float32),
            "instruction": gym.spaces.Text(max_length=256, charset=INSTRUCTION_CHARSET),
        }
        if render:
            image = gym.spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
            spaces = {"agentview": image, "wrist": image, **spaces}
        self.observation_space = gym.spaces.Dict(spaces)

    def _index_arm(self) -> None:
        """Index slices and ids of the arm, fingers and end-effector site in the compiled model."""
        model = self.model
        # The arm's joints, dofs and actuators come first and in order in arm.xml: slices keep
        # the per-step indexing cheap.
        joint_ids = [model.joint(j).id for j in ARM_JOINTS]
        first = joint_ids[0]
        if joint_ids != list(range(first, first + 6)) or any(
            model.actuator(j).id != i for i, j in enumerate(ARM_JOINTS)
        ):
            raise ValueError("envs/arm.xml must declare joint1..joint6 and their actuators first")
        self.arm_qpos = slice(model.jnt_qposadr[first], model.jnt_qposadr[first] + 6)
        self.arm_dof = slice(model.jnt_dofadr[first], model.jnt_dofadr[first] + 6)
        self.arm_act = slice(0, 6)
        self.finger_qpos = np.array(
            [model.jnt_qposadr[model.joint(f).id] for f in ("finger_left", "finger_right")]
        )
        self.finger_act = np.array([model.actuator(f).id for f in ("finger_left", "finger_right")])
        self.arm_low, self.arm_high = model.jnt_range[joint_ids].T.copy()
        self.home_qpos = model.numeric("home_qpos").data.copy()
        self.ee_site = model.site("ee").id

    # ----- gymnasium API -----
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        model, data = self.model, self.data
        mujoco.mj_resetData(model, data)
        noise = self.np_random.uniform(-1.0, 1.0, size=6) * self.spec_task.init.arm_noise
        data.qpos[self.arm_qpos] = self.home_qpos + noise
        data.qpos[self.finger_qpos] = FINGER_OPEN
        self.task.reset(self.np_random, data)
        data.ctrl[self.arm_act] = data.qpos[self.arm_qpos]
        data.ctrl[self.finger_act] = FINGER_OPEN
        mujoco.mj_forward(model, data)
        self._target_pos = data.site_xpos[self.ee_site].copy()
        mujoco.mju_mat2Quat(self._target_quat, data.site_xmat[self.ee_site])
        self._steps = 0
        self._instruction = self.task.instruction()
        return self._observation(), {"is_success": self.task.is_success(data)}

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (7,):
            raise ValueError(f"action must have shape (7,), got {action.shape}")
        if not math.isfinite(action.sum()):
            raise ValueError("action contains NaN or inf")
        action = np.minimum(np.maximum(action, -1.0), 1.0)
        self._apply_action(action)
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)
        # Positions (and the Jacobian's COM terms) at the new state, for the observation and next IK.
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)
        self._steps += 1
        success = self.task.is_success(self.data)
        terminated = bool(success and self.terminate_on_success)
        truncated = self._steps >= self.max_steps and not terminated
        return self._observation(), float(success), terminated, truncated, {"is_success": success}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self._camera("agentview")

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # ----- control -----
    def _apply_action(self, action: np.ndarray) -> None:
        data = self.data
        ee_pos = data.site_xpos[self.ee_site]
        # The commanded pose leads the measured one by at most two steps, so a blocked arm
        # (pressing on the table, holding a load) does not wind up.
        max_lead = 2.0 * self.max_pos_delta
        lead = self._target_pos + action[:3] * self.max_pos_delta - ee_pos
        lead_norm = math.sqrt(lead @ lead)
        if lead_norm > max_lead:
            lead *= max_lead / lead_norm
        self._target_pos = ee_pos + lead
        # Orientation as quaternions: target <- delta * target, error = target * conj(ee).
        mujoco.mju_mat2Quat(self._ee_quat, data.site_xmat[self.ee_site])
        quat_of(action[3:6] * self.max_rot_delta, self._delta_quat)
        mujoco.mju_mulQuat(self._quat, self._delta_quat, self._target_quat)
        mujoco.mju_negQuat(self._delta_quat, self._ee_quat)
        mujoco.mju_mulQuat(self._target_quat, self._quat, self._delta_quat)
        rot_error = self._rot_error
        mujoco.mju_quat2Vel(rot_error, self._target_quat, 1.0)
        max_turn = 2.0 * self.max_rot_delta
        rot_norm = math.sqrt(rot_error @ rot_error)
        if rot_norm > max_turn:
            rot_error *= max_turn / rot_norm
        mujoco.mju_mulQuat(self._target_quat, quat_of(rot_error, self._quat), self._ee_quat)

        # One damped-least-squares step: dq = J^T (J J^T + damping I)^-1 error.
        mujoco.mj_jacSite(self.model, data, self._jac[:3], self._jac[3:], self.ee_site)
        jac = self._jac[:, self.arm_dof]
        np.matmul(jac, jac.T, out=self._jjt)
        np.add(self._jjt, self._damping, out=self._jjt)
        self._error[:3], self._error[3:] = lead, rot_error
        mujoco.mju_cholFactor(self._jjt, 0.0)
        mujoco.mju_cholSolve(self._solution, self._jjt, self._error)
        target = data.qpos[self.arm_qpos] + self._solution @ jac
        data.ctrl[self.arm_act] = np.minimum(np.maximum(target, self.arm_low), self.arm_high)
        data.ctrl[self.finger_act] = FINGER_OPEN * (1.0 - action[6]) / 2.0

    # ----- observations -----
    def _state(self) -> np.ndarray:
        data, state = self.data, self._state_buffer
        state[:6] = data.qpos[self.arm_qpos]
        state[6] = data.qpos[self.finger_qpos[0]] + data.qpos[self.finger_qpos[1]]
        state[7:10] = data.site_xpos[self.ee_site]
        # xmat is row-major: columns 0 and 1 are entries (0, 3, 6) and (1, 4, 7)
        state[10:] = data.site_xmat[self.ee_site].reshape(3, 3)[:, :2].T.reshape(6)
        return state.copy()

    def _camera(self, name: str) -> np.ndarray:
        if self._renderer is None:
            self._renderer = make_renderer(self.model, self.image_size, self.image_size)
        mujoco.mj_camlight(self.model, self.data)
        self._renderer.update_scene(self.data, camera=name)
        return self._renderer.render()

    def _observation(self) -> dict[str, Any]:
        obs: dict[str, Any] = {}
        if self.render_images:
            obs["agentview"] = self._camera("agentview")
            obs["wrist"] = self._camera("wrist")
        obs["state"] = self._state()
        obs["instruction"] = self._instruction
        return obs

    # ----- provenance and privileged access -----
    @property
    def steps(self) -> int:
        return self._steps

    def metadata_record(self) -> dict[str, Any]:
        """What every dataset and result should record about this env (versions, scene hash)."""
        from fmmm.config import config_to_dict

        return {
            "task": self.spec_task.name,
            "task_spec": config_to_dict(self.spec_task),
            "mujoco_version": mujoco.__version__,
            "scene_sha256": scene_hash(self.xml),
            "control_hz": self.control_hz,
            "physics_timestep": float(self.model.opt.timestep),
            "n_substeps": self.n_substeps,
            "image_size": self.image_size,
            "render": self.render_images,
            "max_steps": self.max_steps,
        }

    def episode_record(self) -> dict[str, Any]:
        """What the current episode asks for (named object, target) and its instruction."""
        return {**self.task.episode_record(), "instruction": self._instruction}

    def fill_instruction(self, template: str) -> str:
        """`template` with {object} / {target} filled from this episode's labels (prompt variants
        scored against what the episode names); an unknown or missing placeholder raises."""
        return self.task.instruction(template)
