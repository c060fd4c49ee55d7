"""Scripted experts: waypoint state machines over privileged simulator state, proportional motion.

`ScriptedExpert(env)` works for every task kind and implements the policy interface
(`reset()`, `act(observation) -> action`); it reads the true object poses from `env.unwrapped`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fmmm.envs.env import DOWN, TabletopEnv, rotvec_of

OPEN, CLOSE = -1.0, 1.0
HOVER = 0.1  # metres above a grasp point for the approach
GRASP_STEPS = 4  # control steps the gripper needs to close or open


def _yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class ScriptedExpert:
    """The privileged-state expert of every task (a waypoint state machine per task kind)."""

    def __init__(self, env: Any, gain: float = 1.0):
        self.env: TabletopEnv = env.unwrapped
        if not isinstance(self.env, TabletopEnv):
            raise ValueError(
                f"ScriptedExpert needs an fmmm TabletopEnv, got {type(self.env).__name__}"
            )
        self.gain = gain
        self.kind = self.env.spec_task.kind
        self.reset()

    def reset(self) -> None:
        self.phase = "approach"
        self.wait = 0

    # ----- motion primitives -----
    def _move(self, pos: np.ndarray, grip: float, yaw: float = 0.0) -> np.ndarray:
        env = self.env
        ee_pos = env.data.site_xpos[env.ee_site]
        ee_rot = env.data.site_xmat[env.ee_site].reshape(3, 3)
        move = self.gain * (pos - ee_pos) / env.max_pos_delta
        turn = rotvec_of(_yaw_matrix(yaw) @ DOWN @ ee_rot.T) / env.max_rot_delta
        action = np.concatenate([move, turn, [grip]])
        return np.clip(action, -1.0, 1.0).astype(np.float32)

    def _near(self, pos: np.ndarray, tolerance: float = 0.01) -> bool:
        return bool(np.linalg.norm(self.env.data.site_xpos[self.env.ee_site] - pos) < tolerance)

    def _grasp_yaw(self) -> float:
        """Yaw that lines the fingers up with the named object's faces (cubes are 90-degree symmetric)."""
        task = self.env.task
        if task.objects[task.object_name].shape != "cube":
            return 0.0
        yaw = task.object_yaw(self.env.data)
        return float((yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)

    def _timer(self, steps: int) -> bool:
        self.wait += 1
        if self.wait >= steps:
            self.wait = 0
            return True
        return False

    # ----- policies -----
    def act(self, observation: dict[str, Any] | None = None) -> np.ndarray:
        return getattr(self, f"_act_{self.kind}")()

    def _act_reach(self) -> np.ndarray:
        goal = self.env.task.object_pos(self.env.data) + [0.0, 0.0, 0.01]
        return self._move(goal, OPEN)

    def _pick(self, next_phase: str) -> np.ndarray | None:
        """Approach, descend, close on the named object; returns None once it is held."""
        task, data = self.env.task, self.env.data
        obj = task.object_pos(data)
        grasp = obj + [0.0, 0.0, 0.005]
        yaw = self._grasp_yaw()
        if self.phase == "approach":
            above = grasp + [0.0, 0.0, HOVER]
            if self._near(above, 0.015):
                self.phase = "descend"
            return self._move(above, OPEN, yaw)
        if self.phase == "descend":
            if self._near(grasp, 0.008):
                self.phase = "close"
            return self._move(grasp, OPEN, yaw)
        if self.phase == "close":
            if self._timer(GRASP_STEPS):
                self.phase = next_phase
            return self._move(grasp, CLOSE, yaw)
        return None

    def _dropped(self) -> bool:
        task, data = self.env.task, self.env.data
        low = task.object_pos(data)[2] < task.rest_height() + 0.01
        far = np.linalg.norm(task.ee_pos(data) - task.object_pos(data)) > 0.04
        return bool(low and far)

    def _act_lift(self) -> np.ndarray:
        action = self._pick("lift")
        if action is not None:
            return action
        if self._dropped():
            self.phase = "approach"
            return self._act_lift()
        goal = self.env.task.object_pos(self.env.data)
        goal[2] = 0.2
        return self._move(goal + [0.0, 0.0, 0.005], CLOSE, self._grasp_yaw())

    def _carry_and_place(self, goal_xy: np.ndarray, place_z: float) -> np.ndarray:
        """Carry the held object over `goal_xy`, lower its centre to `place_z`, release, retreat."""
        task, data = self.env.task, self.env.data
        offset = task.ee_pos(data) - task.object_pos(data)
        if self.phase in ("lift", "carry", "lower") and self._dropped():
            self.phase = "approach"
            return None
        yaw = self._grasp_yaw()
        carry_z = max(place_z + 0.08, 0.12)
        if self.phase == "lift":
            here = task.ee_pos(data)
            goal = np.array([here[0], here[1], carry_z])
            if here[2] > carry_z - 0.03:
                self.phase = "carry"
            return self._move(goal, CLOSE, yaw)
        if self.phase == "carry":
            goal = np.array([goal_xy[0], goal_xy[1], carry_z]) + [offset[0], offset[1], 0.0]
            if self._near(goal, 0.012):
                self.phase = "lower"
            return self._move(goal, CLOSE, yaw)
        if self.phase == "lower":
            goal = np.array([goal_xy[0], goal_xy[1], place_z]) + offset
            if self._near(goal, 0.008):
                self.phase = "release"
            return self._move(goal, CLOSE, yaw)
        if self.phase == "release":
            if self._timer(GRASP_STEPS):
                self.phase = "retreat"
            return self._move(task.ee_pos(data), OPEN, yaw)
        goal = task.ee_pos(data)
        goal[2] = carry_z
        return self._move(goal, OPEN, yaw)

    def _act_pick_place(self) -> np.ndarray:
        action = self._pick("lift")
        if action is None:
            task, data = self.env.task, self.env.data
            place_z = task.rest_height() + 0.003
            action = self._carry_and_place(task.target_pos(data)[:2], place_z)
        return action if action is not None else self._act_pick_place()

    def _act_stack(self) -> np.ndarray:
        action = self._pick("lift")
        if action is None:
            task, data = self.env.task, self.env.data
            base = task.object_pos(data, task.target_name)
            place_z = base[2] + task.rest_height(task.target_name) + task.rest_height() + 0.003
            action = self._carry_and_place(base[:2], place_z)
        return action if action is not None else self._act_stack()

    def _act_push(self) -> np.ndarray:
        task, data = self.env.task, self.env.data
        obj, goal = task.object_pos(data), task.target_pos(data)
        direction = goal[:2] - obj[:2]
        direction /= max(np.linalg.norm(direction), 1e-6)
        radius = task.objects[task.object_name].size[0]
        behind = obj[:2] - direction * (radius + 0.03)
        push_z = 0.025
        ee = task.ee_pos(data)
        rel = ee[:2] - obj[:2]
        along = float(rel @ direction)
        across = float(abs(rel[0] * direction[1] - rel[1] * direction[0]))
        if self.phase == "push" and (across > 0.02 or along > -radius + 0.005):
            self.phase = "approach"
        if self.phase == "approach":
            above = np.array([behind[0], behind[1], push_z + 0.08])
            if ee[2] < push_z + 0.05 and np.linalg.norm(ee[:2] - behind) > 0.015:
                # Rise straight up before moving sideways, so the gripper does not tip the object.
                return self._move(np.array([ee[0], ee[1], above[2]]), CLOSE)
            if self._near(above, 0.015):
                self.phase = "descend"
            return self._move(above, CLOSE)
        if self.phase == "descend":
            low = np.array([behind[0], behind[1], push_z])
            if self._near(low, 0.01):
                self.phase = "push"
            return self._move(low, CLOSE)
        # Push along the object-goal line, steering the contact point back onto the line.
        line_point = obj[:2] - direction * (radius + 0.012)
        target = line_point + direction * min(0.02, np.linalg.norm(goal[:2] - obj[:2]) + 0.005)
        return self._move(np.array([target[0], target[1], push_z]), CLOSE)

    def _act_play(self) -> np.ndarray:
        task = self.env.task
        return self._move(task.goal(self.env.data), task.grip, task.yaw)

    def _act_open_drawer(self) -> np.ndarray:
        task, data = self.env.task, self.env.data
        handle = task.handle_pos(data)
        if self.phase == "approach":
            above = handle + [0.0, 0.0, HOVER]
            if self._near(above, 0.015):
                self.phase = "descend"
            return self._move(above, OPEN)
        if self.phase == "descend":
            if self._near(handle, 0.008):
                self.phase = "close"
            return self._move(handle, OPEN)
        if self.phase == "close":
            if self._timer(GRASP_STEPS):
                self.phase = "pull"
            return self._move(handle, CLOSE)
        if np.linalg.norm(task.ee_pos(data) - handle) > 0.03:
            self.phase = "approach"
        return self._move(handle + [-0.05, 0.0, 0.0], CLOSE)
