"""Rollouts: run a policy in the MuJoCo tasks, K envs stepped in lockstep by one policy copy, in
this process or on Ray actors (several envs each).

Every episode's initial state comes from `episode_seed(task, base_seed, index, split)` (split
"eval" for the test episodes, "val" for validation ones) and a stochastic policy is re-seeded per
episode (`policy.seed(...)` when it has one), so the results do not depend on how many envs or
actors there are or which env runs which episode. A policy with `act_batch` (`BatchPolicy`) acts
for all running envs in one call per step.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fmmm.envs.seeds import episode_seed
from fmmm.envs.tasks import fill_template
from fmmm.eval.speed import measure_control_rate, policy_speed_facts, timed_calls
from fmmm.eval.stats import wilson_interval
from fmmm.policies.base import BatchPolicy, Policy

StepHook = Callable[[dict[str, Any], np.ndarray, dict[str, Any]], None]
# Evaluation split -> seed split: "test" episodes give the reported numbers, "val" episodes are
# for choosing checkpoints and settings.
EVAL_SPLITS = {"test": "eval", "val": "val"}


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


def run_episode(
    env: Any,
    policy: Policy,
    seed: int,
    policy_seed: int,
    instruction: str | None = None,
    on_step: StepHook | None = None,
) -> dict[str, Any]:
    """Run one episode to termination or truncation; `on_step(obs, action, info)` sees every step.

    Returns what `episode_steps` returns, and the seconds spent in `policy.act`.
    """
    steps = episode_steps(env, seed, instruction, on_step)
    observation = next(steps)
    if hasattr(policy, "seed"):
        policy.seed(policy_seed)
    policy.reset()
    policy_time = 0.0
    while True:
        start = time.perf_counter()
        action = policy.act(observation)
        policy_time += time.perf_counter() - start
        try:
            observation = steps.send(action)
        except StopIteration as end:
            return {**end.value, "policy_time": policy_time}


def episode_steps(
    env: Any,
    seed: int,
    instruction: str | None = None,
    on_step: StepHook | None = None,
) -> Generator[dict[str, Any], np.ndarray, dict[str, Any]]:
    """One episode, driven from outside: yields each observation to act on and takes the action
    by `send()`, so one caller can step several envs in lockstep and batch their policy calls.

    `instruction` replaces the task's; its {object} / {target} are filled from the episode's
    labels. Returns success at any step and at the end, the length, the first success step, the
    sum and maximum of the rewards, the instruction the policy saw, the seconds in `env.step` and
    the final observation.
    """
    action_dim = int(np.prod(env.action_space.shape))
    observation, _ = env.reset(seed=seed)
    if instruction is not None:
        instruction = fill_instruction(env, instruction)
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


def parallel_map(
    function: Callable[[Any], Any],
    items: Iterable[Any],
    num_workers: int,
    initializer: Callable[..., None],
    initargs: tuple = (),
) -> Iterator[Any]:
    """Yield `function(item)` as items finish, in `num_workers` spawned processes (1: in-process)."""
    items = list(items)
    if num_workers <= 1:
        initializer(*initargs)
        for item in items:
            yield function(item)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(num_workers, initializer=initializer, initargs=initargs) as pool:
        yield from pool.imap_unordered(function, items, chunksize=1)


def limit_worker_threads() -> None:
    """In a worker process, keep BLAS/OpenMP (torch, numpy) to one thread: the workers are the parallelism."""
    if multiprocessing.parent_process() is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(name, "1")


def env_fingerprint(env: Any) -> dict[str, Any]:
    """MuJoCo version, scene hash and settings of an env, recorded with every result and dataset."""
    return env.unwrapped.metadata_record()


def episode_layout(env: Any) -> dict[str, Any]:
    """What the current episode asks for (object, target), without the instruction."""
    record = dict(env.unwrapped.episode_record())
    record.pop("instruction", None)
    return record


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


@dataclass
class _Episode:
    """An episode in progress on one env slot."""

    task: str
    index: int
    steps: Generator[dict[str, Any], np.ndarray, dict[str, Any]]
    observation: dict[str, Any]
    policy: Policy
    frames: list[np.ndarray] = field(default_factory=list)
    policy_time: float = 0.0


class LockstepWorker:
    """One policy copy (one factory, one loaded model) stepping its envs in lockstep.

    Each step, every running env's policy acts (one `act_batch` call when the factory's policy is
    a `BatchPolicy`, else `act` per env), then every env steps; an env whose episode ends starts
    the next item. Envs are made per (task, slot) on first use and kept.
    """

    def __init__(
        self,
        policy_source: str,
        base_seed: int,
        split: str = "test",
        instruction: str | None = None,
        video_dir: str | None = None,
        factory: Any = None,
    ):
        from fmmm.policies.factory import load_policy

        limit_worker_threads()
        self.factory = factory or load_policy(policy_source)
        self.render = getattr(self.factory, "uses_images", True) or video_dir is not None
        self.base_seed = base_seed
        self.seed_split = EVAL_SPLITS[split]
        self.instruction = instruction
        self.video_dir = video_dir
        self.envs: dict[str, list[Any]] = {}
        self.policies: dict[tuple[str, int], Policy] = {}
        self.batch_policy: BatchPolicy | None = None

    def rows(self, items: Sequence[tuple[str, int]], num_envs: int) -> Iterator[dict[str, Any]]:
        """Yield the results.json rows of `items` (task, episode index) as they finish, run on
        `num_envs` env slots. Torch runs on one thread meanwhile: inference here is a few small
        batches per step, where a second thread costs more in synchronization than it computes
        (several times slower when another process shares the cores)."""
        torch = sys.modules.get("torch")
        threads = torch.get_num_threads() if torch is not None else None
        if torch is not None:
            torch.set_num_threads(1)
        try:
            yield from self._rows(items, num_envs)
        finally:
            if torch is not None:
                torch.set_num_threads(threads)

    def _rows(self, items: Sequence[tuple[str, int]], num_envs: int) -> Iterator[dict[str, Any]]:
        queue = iter(items)
        running: dict[int, _Episode] = {}
        for slot, item in zip(range(num_envs), queue):
            running[slot] = self._start(item, slot)
        while running:
            slots = list(running)
            for slot, action in zip(slots, self._act(slots, running), strict=True):
                episode = running[slot]
                try:
                    episode.observation = episode.steps.send(action)
                except StopIteration as end:
                    yield self._finish(episode, end.value)
                    item = next(queue, None)
                    if item is None:
                        del running[slot]
                    else:
                        running[slot] = self._start(item, slot)

    def _act(self, slots: list[int], running: dict[int, _Episode]) -> Sequence[np.ndarray]:
        """The actions of the running slots; policy time is charged to each episode (a batched
        call's time split evenly among the envs it served)."""
        if self.batch_policy is not None:
            start = time.perf_counter()
            observations = [running[slot].observation for slot in slots]
            actions = np.asarray(self.batch_policy.act_batch(observations, slots))
            share = (time.perf_counter() - start) / len(slots)
            if actions.ndim < 1 or actions.shape[0] != len(slots):
                raise ValueError(
                    f"act_batch returned actions of shape {actions.shape} for {len(slots)} envs"
                )
            for slot in slots:
                running[slot].policy_time += share
            return actions
        actions = []
        for slot in slots:
            episode = running[slot]
            start = time.perf_counter()
            actions.append(episode.policy.act(episode.observation))
            episode.policy_time += time.perf_counter() - start
        return actions

    def _policy(self, task: str, slot: int, env: Any) -> Policy:
        """The policy of env `slot` of `task`: the one batch policy, or one per (task, slot)."""
        if self.batch_policy is not None:
            return self.batch_policy
        if (task, slot) not in self.policies:
            policy = self.factory(env)
            if not self.policies and isinstance(policy, BatchPolicy):
                self.batch_policy = policy
                return policy
            self.policies[task, slot] = policy
        return self.policies[task, slot]

    def _start(self, item: tuple[str, int], slot: int) -> _Episode:
        import fmmm.envs

        task, index = item
        envs = self.envs.setdefault(task, [])
        while len(envs) <= slot:
            envs.append(fmmm.envs.make_env(task, render=self.render))
        env = envs[slot]
        frames: list[np.ndarray] = []
        on_step = None
        if self.video_dir is not None:

            def on_step(observation: dict[str, Any], action: np.ndarray, info: dict) -> None:
                frames.append(video_frame(observation))

        seed = episode_seed(task, self.base_seed, index, self.seed_split)
        steps = episode_steps(env, seed, self.instruction, on_step)
        observation = next(steps)
        policy = self._policy(task, slot, env)
        policy_seed = episode_seed(task, self.base_seed, index, "policy")
        if policy is self.batch_policy:
            if hasattr(policy, "seed_index"):
                policy.seed_index(slot, policy_seed)
            policy.reset_index(slot)
        else:
            if hasattr(policy, "seed"):
                policy.seed(policy_seed)
            policy.reset()
        return _Episode(task, index, steps, observation, policy, frames)

    def _finish(self, episode: _Episode, result: dict[str, Any]) -> dict[str, Any]:
        """The episode's results.json row; its video written when asked."""
        final_observation = result.pop("final_observation")
        row = {"task": episode.task, "episode": episode.index, **result}
        row.update(policy_time=episode.policy_time, video=None)
        if self.video_dir is not None:
            episode.frames.append(video_frame(final_observation))
            outcome = "success" if result["success"] else "failure"
            name = f"{episode.task}_ep{episode.index:03d}_{outcome}.mp4"
            fps = self.envs[episode.task][0].metadata.get("render_fps", 20)
            write_video(Path(self.video_dir) / name, episode.frames, fps)
            row["video"] = name
        return row

    def close(self) -> None:
        for envs in self.envs.values():
            for env in envs:
                env.close()
        self.envs.clear()


class _RayEvalWorker:
    """A Ray actor holding one `LockstepWorker` (one policy copy) and its environments."""

    def __init__(self, *initargs: Any):
        self.worker = LockstepWorker(*initargs)

    def run(self, items: list[tuple[str, int]], num_envs: int) -> Iterator[dict[str, Any]]:
        yield from self.worker.rows(items, num_envs)


def ray_map(
    items: list[tuple[str, int]],
    num_envs: int,
    envs_per_actor: int,
    initargs: tuple,
    address: str = "",
) -> Iterator[dict[str, Any]]:
    """Yield the rows of `items` as episodes finish, on Ray actors (1 CPU each) of the cluster at
    `address` (empty: a local cluster): `num_envs` envs in all, `envs_per_actor` per actor.

    Actor a of n runs items[a::n]; its envs are stepped in lockstep (`LockstepWorker`);
    `initargs` are `LockstepWorker`'s arguments.
    """
    from fmmm.utils.ray_cluster import connect, worker_runtime_env

    ray = connect(address)
    count = math.ceil(num_envs / envs_per_actor)
    envs = math.ceil(num_envs / count)  # evenly: 10 envs at 8 per actor are 2 actors of 5
    remote = ray.remote(num_cpus=1, runtime_env=worker_runtime_env())(_RayEvalWorker)
    actors = [remote.remote(*initargs) for _ in range(count)]
    try:
        pending = [actor.run.remote(items[a::count], envs) for a, actor in enumerate(actors)]
        while pending:  # rows of all actors' streams, as they come
            (stream,), pending = ray.wait(pending, num_returns=1)
            row = next(stream, None)
            if row is not None:
                pending.append(stream)
                yield ray.get(row)
    finally:
        for actor in actors:
            ray.kill(actor)


def control_rate(factory: Any, env: Any, seed: int, instruction: str | None) -> dict[str, Any]:
    """The control rate of the factory's policy on `env` at the start of the episode `seed`
    (`measure_control_rate`), with the chunk size and forward passes per action it states."""
    steps = episode_steps(env, seed, instruction)
    observation = next(steps)
    steps.close()
    policy = factory(env)
    warmup, repeats = 3, 24
    return {
        "definition": "actions per second at batch 1 after warm-up",
        "actions_per_second": measure_control_rate(policy, observation, warmup, repeats),
        "warmup": warmup,
        "timed_actions": timed_calls(policy, repeats),
        **policy_speed_facts(policy),
    }


def evaluate(
    policy: str,
    tasks: list[str],
    episodes: int,
    base_seed: int = 0,
    num_envs: int = 1,
    video_dir: str | os.PathLike | None = None,
    instruction: str | None = None,
    progress: bool = True,
    executor: str = "local",
    ray_address: str = "",
    envs_per_actor: int = 8,
    split: str = "test",
    factory: Any = None,
) -> dict[str, Any]:
    """Evaluate `policy` (name or run dir) on `tasks`; per-episode rows, per-task summaries, timings.

    Args:
        num_envs: envs stepped in lockstep by one policy copy in this process (batched inference
            for a `BatchPolicy`); with `executor="ray"`, spread over Ray actors of the cluster at
            `ray_address` (else a local one), `envs_per_actor` per actor. The rows are the same.
        instruction: replaces the task instruction; {object} / {target} are filled per episode.
        split: "test" (the reported numbers) or "val" (choosing checkpoints and settings): disjoint
            seed streams.
        factory: `load_policy(policy)` when the caller has loaded it already.
    """
    import fmmm.envs
    from fmmm.utils.progress import progress as progress_bar

    if episodes <= 0:
        raise ValueError(f"--episodes must be positive, got {episodes}")
    if num_envs <= 0:
        raise ValueError(f"--num-envs must be positive, got {num_envs}")
    if executor not in ("local", "ray"):
        raise ValueError(f"--executor must be local or ray, got {executor!r}")
    if envs_per_actor <= 0:
        raise ValueError(f"--envs-per-actor must be positive, got {envs_per_actor}")
    if split not in EVAL_SPLITS:
        raise ValueError(f"--split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    for task in tasks:
        if fmmm.envs.expand_tasks(task) != [task]:  # raises on an unknown name
            raise ValueError(f"{task!r} names several tasks; pass them one by one")
    from fmmm.policies.factory import load_policy

    factory = factory or load_policy(policy)  # fail fast here on a bad name or run dir
    render = getattr(factory, "uses_images", True) or video_dir is not None
    if video_dir is not None:
        Path(video_dir).mkdir(parents=True, exist_ok=True)
    fingerprints, control = {}, {}
    for task in tasks:
        env = fmmm.envs.make_env(task, render=render)
        fingerprints[task] = env_fingerprint(env)
        first_seed = episode_seed(task, base_seed, 0, EVAL_SPLITS[split])
        if instruction is not None:  # a bad placeholder fails here, before any rollout
            env.reset(seed=first_seed)
            fill_instruction(env, instruction)
        if not control:
            control = {"task": task, **control_rate(factory, env, first_seed, instruction)}
        env.close()
    items = [(task, index) for task in tasks for index in range(episodes)]
    rows = []
    start = time.perf_counter()
    envs = min(num_envs, len(items))
    video = None if video_dir is None else str(video_dir)
    initargs = (policy, base_seed, split, instruction, video)
    worker = None
    if executor == "ray":
        results = ray_map(items, envs, envs_per_actor, initargs, ray_address)
    else:
        worker = LockstepWorker(*initargs, factory=factory)  # reuse the loaded policy
        results = worker.rows(items, envs)
    try:
        for row in progress_bar(
            results, total=len(items), desc="eval", disable=not progress, unit="ep"
        ):
            rows.append(row)
    finally:
        if worker is not None:
            worker.close()
    wall = time.perf_counter() - start
    rows.sort(key=lambda r: (tasks.index(r["task"]), r["episode"]))
    timings = {
        "num_envs": num_envs,
        "wall_seconds": wall,
        "episodes_per_second": len(rows) / max(wall, 1e-9),
        "control": control,
        "tasks": {},
    }
    summary = {}
    for task in tasks:
        task_rows = [r for r in rows if r["task"] == task]
        steps = sum(r["length"] for r in task_rows)
        wins = sum(r["success"] for r in task_rows)
        low, high = wilson_interval(wins, len(task_rows))
        summary[task] = {
            "episodes": len(task_rows),
            "success_rate": wins / len(task_rows),
            "success_ci95": [low, high],
            "success_end_rate": sum(r["success_end"] for r in task_rows) / len(task_rows),
            "mean_length": steps / len(task_rows),
        }
        env_time = sum(r["env_time"] for r in task_rows)
        policy_time = sum(r["policy_time"] for r in task_rows)
        timings["tasks"][task] = {
            "env_steps_per_second": steps / max(env_time, 1e-9),
            "policy_actions_per_second": steps / max(policy_time, 1e-9),
        }
    for row in rows:
        row.pop("env_time")
        row.pop("policy_time")
    return {
        "policy": policy,
        "split": split,
        "instruction_override": instruction,
        "base_seed": base_seed,
        "episodes_per_task": episodes,
        "environment": fingerprints,
        "summary": summary,
        "episodes": rows,
        "timings": timings,
    }


def format_control(control: dict[str, Any]) -> str:
    """One line stating the control rate with its chunk size and forward passes per action."""
    chunk = control.get("chunk")
    passes = control.get("forward_passes_per_action")
    return (
        f"control rate: {control['actions_per_second']:.1f} actions/s at batch 1 after "
        f"{control['warmup']} warm-up calls ({control['task']}); "
        f"chunk {chunk if chunk is not None else 'not stated'}, "
        f"forward passes per action {f'{passes:.3g}' if passes is not None else 'not stated'}"
    )


def format_table(results: dict[str, Any]) -> str:
    """Plain-text table, one row per task; success counts an episode successful at any step.

    The env steps/s and actions/s columns are throughput in the evaluation (actions/s: time in
    the policy, a batched call's time shared by its envs); the control rate line below is the
    batch-1 latency measure (`measure_control_rate`).
    """
    header = (
        f"{'task':<24} {'n':>4} {'success':>8} {'95% CI':>15} {'at end':>7} "
        f"{'mean len':>9} {'env steps/s':>12} {'actions/s':>10}"
    )
    timings = results["timings"]
    lines = [
        f"policy: {results['policy']}  split: {results['split']}  seed: {results['base_seed']}",
        header,
        "-" * len(header),
    ]
    for task, s in results["summary"].items():
        t = timings["tasks"][task]
        low, high = s["success_ci95"]
        lines.append(
            f"{task:<24} {s['episodes']:>4} {s['success_rate']:>8.1%} {f'[{low:.1%}, {high:.1%}]':>15} "
            f"{s['success_end_rate']:>7.1%} {s['mean_length']:>9.1f} "
            f"{t['env_steps_per_second']:>12.1f} {t['policy_actions_per_second']:>10.1f}"
        )
    lines.append(
        f"{len(results['episodes'])} episodes in {timings['wall_seconds']:.1f} s "
        f"({timings['episodes_per_second']:.2f} episodes/s, {timings['num_envs']} envs)"
    )
    lines.append(format_control(timings["control"]))
    return "\n".join(lines)
