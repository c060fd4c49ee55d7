"""The env side of an evaluation: episodes driven from outside, and the env slots that run them,
in this process or in worker processes.

`episode_steps` runs one episode whose actions the caller sends. An `EnvSlot` holds one env per
task (made on first use) and runs one episode at a time. `LocalSlot` serves an `EnvSlot` in this
process; `ProcessSlot` serves one in a worker process behind a socket, so that while this process
runs the one policy, K envs step and render in parallel, each worker on its own core.
Workers import `fmmm.envs` (MuJoCo, numpy), never torch. A worker that raises or dies becomes an
error naming the task, episode and seed; `close()` always ends the worker.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Generator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from fmmm.envs.seeds import episode_seed
from fmmm.envs.tasks import fill_template
from fmmm.eval.language import WORDINGS, episode_wording

StepHook = Callable[[dict[str, Any], np.ndarray, dict[str, Any]], None]


def check_action(action: Any, action_dim: int) -> np.ndarray:
    """The policy's action as float32 (action_dim,); a wrong shape or NaN raises ValueError."""
    action = np.asarray(action, dtype=np.float32)
    if action.shape != (action_dim,):
        raise ValueError(
            f"policy returned an action of shape {action.shape}, expected ({action_dim},)"
        )
    if not np.all(np.isfinite(action)):
        raise ValueError("policy returned a non-finite action")
    return action


def fill_instruction(env: Any, template: str) -> str:
    """`template` with {object} / {target} filled from the current episode of `env`."""
    env = env.unwrapped
    if hasattr(env, "fill_instruction"):
        return env.fill_instruction(template)
    # envs without object labels (Meta-World) take templates without placeholders
    return fill_template(template, {}, getattr(env, "task_name", type(env).__name__))


def episode_layout(env: Any) -> dict[str, Any]:
    """What the current episode asks for (object, target), without the instruction."""
    record = dict(env.unwrapped.episode_record())
    record.pop("instruction", None)
    return record


def episode_steps(
    env: Any,
    seed: int,
    instruction: str | None = None,
    on_step: StepHook | None = None,
    wording: str = "templates",
) -> Generator[dict[str, Any], np.ndarray, dict[str, Any]]:
    """One episode, driven from outside: yields each observation to act on and takes the action
    by `send()`, so one caller can step several envs in lockstep and batch their policy calls.

    `instruction` replaces the task's; its {object} / {target} are filled from the episode's
    labels. `wording="unseen"` replaces it instead with a wording never seen in training, drawn
    from `seed` (`fmmm.eval.language`). Returns success at any step and at the end, the length,
    the first success step, the sum and maximum of the rewards, the instruction the policy saw and
    how an unseen one was made (`wording`, else None), the seconds in `env.step` and the final
    observation.
    """
    if wording not in WORDINGS:
        raise ValueError(f"wording must be one of {', '.join(WORDINGS)}, got {wording!r}")
    if instruction is not None and wording != "templates":
        raise ValueError(f"an instruction and wording {wording!r} do not go together")
    action_dim = int(np.prod(env.action_space.shape))
    observation, _ = env.reset(seed=seed)
    record = None
    if wording == "unseen":
        chosen = episode_wording(env, seed)
        instruction, record = chosen.instruction, chosen.record()
    elif instruction is not None:
        instruction = fill_instruction(env, instruction)
    if instruction is not None:
        observation = {**observation, "instruction": instruction}
    shown_instruction = str(observation["instruction"])
    env_time = 0.0
    length, first_success = 0, None
    success = False
    sum_reward, max_reward = 0.0, -math.inf
    while True:
        action = check_action((yield observation), action_dim)
        start = time.perf_counter()
        next_observation, reward, terminated, truncated, info = env.step(action)
        env_time += time.perf_counter() - start
        sum_reward += float(reward)
        max_reward = max(max_reward, float(reward))
        success = bool(info.get("is_success", False))
        if on_step is not None:
            on_step(observation, action, info)
        if success and first_success is None:
            first_success = length
        length += 1
        observation = next_observation
        if instruction is not None:
            observation = {**observation, "instruction": instruction}
        if terminated or truncated:
            break
    return {
        "seed": seed,
        "instruction": shown_instruction,
        "wording": record,
        "scene": episode_layout(env),
        "success": first_success is not None,
        "success_end": success,
        "length": length,
        "first_success_step": first_success,
        "sum_reward": sum_reward,
        "max_reward": max_reward,
        "env_time": env_time,
        "final_observation": observation,
    }


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """Write RGB frames to an mp4 atomically (temporary name, then rename)."""
    import imageio.v2 as imageio

    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        imageio.mimwrite(tmp, frames, fps=fps, macro_block_size=1)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def video_frame(observation: dict[str, Any]) -> np.ndarray:
    """Agent view and wrist camera side by side."""
    return np.concatenate([observation["agentview"], observation["wrist"]], axis=1)


@dataclass(frozen=True)
class SlotSettings:
    """What all env slots of an evaluation share; sent to the worker processes."""

    base_seed: int
    seed_split: str  # the seed split of the episodes ("eval" or "val")
    instruction: str | None
    render: bool
    video_dir: str | None
    policy_source: str  # loaded again in a worker for a policy that acts beside its env
    wording: str = "templates"  # or "unseen": a wording never seen in training per episode


class EnvSlot:
    """One env slot: an env per task (made on first use) and the episode in progress.

    A batch policy acts in the evaluating process, which sends each action (`step(action)`); any
    other policy is built per task in the slot and acts beside its env (`step(None)`), as the
    scripted experts, which read the simulator state, must. `factory` builds those policies; in a
    worker process it is loaded from `settings.policy_source` when first needed.
    """

    def __init__(self, settings: SlotSettings, factory: Any = None):
        self.settings = settings
        self.factory = factory
        self.envs: dict[str, Any] = {}
        self.policies: dict[str, Any] = {}
        self.task, self.index = "", -1
        self.steps: Generator[dict[str, Any], np.ndarray, dict[str, Any]] | None = None
        self.observation: dict[str, Any] = {}
        self.policy: Any = None
        self.policy_time = 0.0
        self.frames: list[np.ndarray] = []

    def handle(self, request: tuple) -> Any:
        """Serve a request: ("prepare", task), ("begin", task, index, own_policy) or
        ("step", action)."""
        command, *args = request
        handlers = {"prepare": self.prepare, "begin": self.begin, "step": self.step}
        return handlers[command](*args)

    def env(self, task: str) -> Any:
        if task not in self.envs:
            import fmmm.envs

            self.envs[task] = fmmm.envs.make_env(task, render=self.settings.render)
        return self.envs[task]

    def prepare(self, task: str) -> None:
        """Make the env of `task` and its renderer ahead of its first episode."""
        self.env(task).reset(seed=0)  # every episode resets with its own seed

    def begin(self, task: str, index: int, own_policy: bool) -> dict[str, Any]:
        """Start episode `index` of `task`; returns its first observation."""
        settings = self.settings
        env = self.env(task)
        self.task, self.index, self.policy_time, self.frames = task, index, 0.0, []
        on_step = None
        if settings.video_dir is not None:

            def on_step(observation: dict[str, Any], action: np.ndarray, info: dict) -> None:
                self.frames.append(video_frame(observation))

        seed = episode_seed(task, settings.base_seed, index, settings.seed_split)
        self.steps = episode_steps(env, seed, settings.instruction, on_step, settings.wording)
        self.observation = next(self.steps)
        self.policy = None
        if own_policy:
            if task not in self.policies:
                if self.factory is None:
                    from fmmm.policies.factory import load_policy

                    self.factory = load_policy(settings.policy_source)
                self.policies[task] = self.factory(env)
            self.policy = self.policies[task]
            if hasattr(self.policy, "seed"):
                self.policy.seed(episode_seed(task, settings.base_seed, index, "policy"))
            self.policy.reset()
        return self.observation

    def step(self, action: np.ndarray | None) -> tuple[bool, Any]:
        """Step the episode with `action` (None: the slot's own policy acts). Returns (False, the
        next observation; None when the own policy acts) or, when the episode has ended,
        (True, its results.json fields: those of `episode_steps`, policy time and video name)."""
        if action is None:
            start = time.perf_counter()
            action = self.policy.act(self.observation)
            self.policy_time += time.perf_counter() - start
        try:
            self.observation = self.steps.send(action)
        except StopIteration as end:
            return True, self._finish(end.value)
        return False, None if self.policy is not None else self.observation

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """The episode's results; its video written when asked."""
        final_observation = result.pop("final_observation")
        result.update(policy_time=self.policy_time, video=None)
        if self.settings.video_dir is not None:
            self.frames.append(video_frame(final_observation))
            outcome = "success" if result["success"] else "failure"
            name = f"{self.task}_ep{self.index:03d}_{outcome}.mp4"
            fps = self.envs[self.task].metadata.get("render_fps", 20)
            write_video(Path(self.settings.video_dir) / name, self.frames, fps)
            result["video"] = name
        self.steps, self.frames = None, []
        return result

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs.clear()


class LocalSlot:
    """An `EnvSlot` in this process: a request runs when its reply is asked for."""

    remote = False

    def __init__(self, settings: SlotSettings, factory: Any):
        self.slot = EnvSlot(settings, factory)
        self.request: tuple | None = None

    @property
    def pending(self) -> bool:
        return self.request is not None

    def send(self, request: tuple) -> None:
        if self.pending:  # "prepare"
            self.receive()
        self.request = request

    def receive(self) -> Any:
        request, self.request = self.request, None
        return self.slot.handle(request)

    def close(self) -> None:
        self.slot.close()


class EnvWorkerError(ChildProcessError):
    """An env worker process died, or raised an exception that is not a builtin one."""


class RemoteTraceback(Exception):
    """The traceback of an exception in a worker process, shown as the cause of its copy here."""

    def __str__(self) -> str:
        return self.args[0]


class ProcessSlot:
    """An `EnvSlot` in a worker process. `send` returns at once, so several workers step their
    envs in parallel while this process waits in `receive` (or serves its own slot).

    The worker is a fresh interpreter that imports this module only: not the caller's `__main__`
    (as multiprocessing's spawn would, with whatever it imports), so no torch, and no
    `if __name__ == "__main__"` guard needed. It runs in its own session, so Ctrl-C reaches only
    this process, which closes its workers.
    """

    remote = True

    def __init__(self, settings: SlotSettings):
        self.settings = settings
        ours, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _WORKER_CODE, str(theirs.fileno()), *sys.path],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                # Mesa's llvmpipe renders a 64x64 camera as one tile, so its rasterizer threads
                # add hand-offs, not parallelism: the workers are the parallelism.
                env={"LP_NUM_THREADS": "0", **os.environ},
                start_new_session=True,
            )
        # the worker holds the only other end of the socket: its exit reads as EOF here
        self.connection = Connection(ours.detach())
        self.connection.send(("settings", settings))  # no reply
        self.pending = False
        self.doing = "while starting"

    def send(self, request: tuple) -> None:
        if self.pending:  # the reply to "prepare"
            self.receive()
        if request[0] == "begin":
            task, index = request[1:3]
            seed = episode_seed(task, self.settings.base_seed, index, self.settings.seed_split)
            self.doing = f"while running {task} episode {index} (seed {seed})"
        elif request[0] == "prepare":
            self.doing = f"while making the {request[1]} env"
        try:
            self.connection.send(request)
        except OSError:
            self._died()
        self.pending = True

    def receive(self) -> Any:
        try:
            # the poll timeout only bounds how long a worker's death can go unnoticed
            while not self.connection.poll(1.0) and self.process.poll() is None:
                pass
            status, payload = self.connection.recv()  # EOFError once the worker is gone
        except (EOFError, OSError):
            self._died()
        self.pending = False
        if status == "error":
            _raise_remote(payload, f"env worker (pid {self.process.pid}) failed {self.doing}")
        return payload

    def _died(self) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        raise EnvWorkerError(
            f"env worker (pid {self.process.pid}) exited with code {self.process.returncode} "
            f"{self.doing}"
        ) from None

    def close(self) -> None:
        """End the worker: asked to, else (busy or stuck) terminated, else killed."""
        if not self.pending and self.process.poll() is None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self.connection.send(("close",))
                self.process.wait(5)
        for stop in (self.process.terminate, self.process.kill):
            if self.process.poll() is None:
                stop()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(5)
        self.connection.close()


def _raise_remote(error: tuple[str, str, str, str], where: str) -> None:
    """Raise here, as one line starting with `where`, the exception a worker reported: the same
    class when it is a builtin one (a ValueError stays an input error), else `EnvWorkerError`."""
    module, name, message, remote_traceback = error
    message = " ".join(message.split())
    cls = getattr(builtins, name, None) if module == "builtins" else None
    exc: Exception | None = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            exc = cls(f"{where}: {message}")
        except Exception:  # a builtin whose constructor takes other arguments
            exc = None
    if exc is None:
        exc = EnvWorkerError(f"{where}: {name}: {message}")
    raise exc from RemoteTraceback(remote_traceback)


# argv: the socket's file descriptor, then the parent's sys.path
_WORKER_CODE = (
    "import sys; sys.path[:] = sys.argv[2:]; "
    "from fmmm.eval.env_slots import serve; serve(int(sys.argv[1]))"
)


def serve(fd: int) -> None:
    """A worker process: serve the requests of one `EnvSlot` on the socket `fd` (the first
    message its `SlotSettings`) until told to close or the parent is gone."""
    connection = Connection(fd)
    try:
        _, settings = connection.recv()
    except EOFError:
        return
    slot = EnvSlot(settings)
    try:
        while True:
            try:
                request = connection.recv()
            except EOFError:
                return
            if request[0] == "close":
                return
            try:
                reply = ("ok", slot.handle(request))
            except Exception as exc:
                kind = type(exc)
                error = (kind.__module__, kind.__qualname__, str(exc), traceback.format_exc())
                reply = ("error", error)
            try:
                connection.send(reply)
            except OSError:
                return
    finally:
        slot.close()
