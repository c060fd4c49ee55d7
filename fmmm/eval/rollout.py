"""Rollouts: run a policy in the MuJoCo tasks, in worker processes (one env each) or in Ray actors
(several envs each, stepped in lockstep by one policy copy).

Every episode's initial state comes from `episode_seed(task, base_seed, index, "eval")` and a
stochastic policy is re-seeded per episode (`policy.seed(...)` when it has one), so the results
do not depend on how many workers there are or which worker runs which episode.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fmmm.envs.seeds import episode_seed
from fmmm.policies.base import Policy

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


def run_episode(
    env: Any,
    policy: Policy,
    seed: int,
    policy_seed: int,
    instruction: str | None = None,
    on_step: StepHook | None = None,
) -> dict[str, Any]:
    """Run one episode to termination or truncation; `on_step(obs, action, info)` sees every step.

    Returns success at any step and at the end, the length, the first success step, the sum and
    maximum of the rewards, the instruction the policy saw, and the seconds spent in `env.step`
    and in `policy.act`.
    """
    return _run_to_end(episode_steps(env, policy, seed, policy_seed, instruction, on_step))


def _run_to_end(steps: Generator[None, None, Any]) -> Any:
    """The value a generator returns, once run to its end."""
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value


def episode_steps(
    env: Any,
    policy: Policy,
    seed: int,
    policy_seed: int,
    instruction: str | None = None,
    on_step: StepHook | None = None,
) -> Generator[None, None, dict[str, Any]]:
    """`run_episode`, one step per `next()`: the generator returns the result after the last one,
    so a worker can step several envs in lockstep."""
    action_dim = int(np.prod(env.action_space.shape))
    observation, _ = env.reset(seed=seed)
    if hasattr(policy, "seed"):
        policy.seed(policy_seed)
    policy.reset()
    if instruction is not None:
        observation = {**observation, "instruction": instruction}
    shown_instruction = str(observation["instruction"])
    env_time = policy_time = 0.0
    length, first_success = 0, None
    success = False
    sum_reward, max_reward = 0.0, -math.inf
    while True:
        start = time.perf_counter()
        action = check_action(policy.act(observation), action_dim)
        policy_time += time.perf_counter() - start
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
        yield
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
        "policy_time": policy_time,
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


class _RayEvalWorker:
    """A Ray actor holding one policy copy (one factory, one loaded model) and its environments."""

    def __init__(self, *initargs: Any):
        _init_eval_worker(*initargs)

    def run(self, items: list[tuple[str, int]], num_envs: int) -> Iterator[dict[str, Any]]:
        yield from _eval_lockstep(items, num_envs)


def ray_map(
    items: list[tuple[str, int]],
    num_envs: int,
    envs_per_actor: int,
    initargs: tuple,
    address: str = "",
) -> Iterator[dict[str, Any]]:
    """Yield the rows of `items` as episodes finish, on Ray actors (1 CPU each) of the cluster at
    `address` (empty: a local cluster): `num_envs` envs in all, `envs_per_actor` per actor.

    Actor a of n runs items[a::n]; its envs are stepped in lockstep (`_eval_lockstep`).
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


def limit_worker_threads() -> None:
    """In a worker process, keep BLAS/OpenMP (torch, numpy) to one thread: the workers are the parallelism."""
    if multiprocessing.parent_process() is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ.setdefault(name, "1")


def wilson_interval(
    successes: int, trials: int, z: float = 1.959963984540054
) -> tuple[float, float]:
    """Wilson score 95% interval of a success rate."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


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


_worker: dict[str, Any] = {}


def _init_eval_worker(
    policy_source: str,
    base_seed: int,
    instruction: str | None,
    video_dir: str | None,
    factory: Any = None,
) -> None:
    """Set up a worker; `factory` is the already loaded policy when running in-process."""
    limit_worker_threads()
    from fmmm.policies.factory import load_policy

    factory = factory or load_policy(policy_source)
    for envs in _worker.get("envs", {}).values():
        for env, _ in envs:
            env.close()
    _worker.clear()
    _worker.update(
        factory=factory,
        render=getattr(factory, "uses_images", True) or video_dir is not None,
        base_seed=base_seed,
        instruction=instruction,
        video_dir=video_dir,
        envs={},
    )


def _eval_one(item: tuple[str, int]) -> dict[str, Any]:
    return _run_to_end(_eval_steps(item, 0))


def _eval_lockstep(items: list[tuple[str, int]], num_envs: int) -> Iterator[dict[str, Any]]:
    """Yield the rows of `items` as they finish, run on `num_envs` envs (per task) stepped in
    lockstep; each env has its own policy from the worker's factory, so all share one model.
    An env whose episode ends starts the next item."""
    queue = iter(items)
    running = {slot: _eval_steps(item, slot) for slot, item in zip(range(num_envs), queue)}
    while running:
        for slot, steps in list(running.items()):
            try:
                next(steps)
            except StopIteration as end:
                yield end.value
                item = next(queue, None)
                if item is None:
                    del running[slot]
                else:
                    running[slot] = _eval_steps(item, slot)


def _eval_steps(item: tuple[str, int], slot: int) -> Generator[None, None, dict[str, Any]]:
    """Episode `index` of `task` (the item) on the worker's env `slot` of that task, one step per
    `next()`; returns its results.json row (its video written when asked)."""
    import fmmm.envs

    task, index = item
    envs = _worker["envs"].setdefault(task, [])
    while len(envs) <= slot:
        env = fmmm.envs.make_env(task, render=_worker["render"])
        envs.append((env, _worker["factory"](env)))
    env, policy = envs[slot]
    frames: list[np.ndarray] = []
    on_step = None
    if _worker["video_dir"] is not None:

        def on_step(observation: dict[str, Any], action: np.ndarray, info: dict[str, Any]) -> None:
            frames.append(video_frame(observation))

    seed = episode_seed(task, _worker["base_seed"], index, "eval")
    policy_seed = episode_seed(task, _worker["base_seed"], index, "policy")
    steps = episode_steps(env, policy, seed, policy_seed, _worker["instruction"], on_step)
    result = yield from steps
    final_observation = result.pop("final_observation")
    row = {"task": task, "episode": index, **result, "video": None}
    if _worker["video_dir"] is not None:
        frames.append(video_frame(final_observation))
        outcome = "success" if result["success"] else "failure"
        name = f"{task}_ep{index:03d}_{outcome}.mp4"
        write_video(Path(_worker["video_dir"]) / name, frames, env.metadata.get("render_fps", 20))
        row["video"] = name
    return row


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
) -> dict[str, Any]:
    """Evaluate `policy` (name or run dir) on `tasks`; per-episode rows, per-task summaries, timings.

    `executor="ray"` runs the `num_envs` envs on Ray actors of the cluster at `ray_address` (else
    a local one), `envs_per_actor` per actor, instead of one local process each; the rows are
    the same.
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
    for task in tasks:
        if fmmm.envs.expand_tasks(task) != [task]:  # raises on an unknown name
            raise ValueError(f"{task!r} names several tasks; pass them one by one")
    from fmmm.policies.factory import load_policy

    factory = load_policy(policy)  # fail fast in this process on a bad name or run dir
    render = getattr(factory, "uses_images", True) or video_dir is not None
    if video_dir is not None:
        Path(video_dir).mkdir(parents=True, exist_ok=True)
    fingerprints = {}
    for task in tasks:
        env = fmmm.envs.make_env(task, render=render)
        fingerprints[task] = env_fingerprint(env)
        env.close()
    items = [(task, index) for task in tasks for index in range(episodes)]
    rows = []
    start = time.perf_counter()
    workers = min(num_envs, len(items))
    initargs = (policy, base_seed, instruction, None if video_dir is None else str(video_dir))
    if executor == "ray":
        results = ray_map(items, workers, envs_per_actor, initargs, ray_address)
    else:
        if workers == 1:
            initargs += (factory,)  # in-process: reuse the loaded policy, not load it again
        results = parallel_map(_eval_one, items, workers, _init_eval_worker, initargs)
    for row in progress_bar(
        results, total=len(items), desc="eval", disable=not progress, unit="ep"
    ):
        rows.append(row)
    wall = time.perf_counter() - start
    rows.sort(key=lambda r: (tasks.index(r["task"]), r["episode"]))
    summary, timings = {}, {"num_envs": num_envs, "wall_seconds": wall, "tasks": {}}
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
        "instruction_override": instruction,
        "base_seed": base_seed,
        "episodes_per_task": episodes,
        "environment": fingerprints,
        "summary": summary,
        "episodes": rows,
        "timings": timings,
    }


def format_table(results: dict[str, Any]) -> str:
    """Plain-text table, one row per task; success counts an episode successful at any step."""
    header = (
        f"{'task':<24} {'n':>4} {'success':>8} {'95% CI':>15} {'at end':>7} "
        f"{'mean len':>9} {'env steps/s':>12} {'actions/s':>10}"
    )
    lines = [
        f"policy: {results['policy']}  seed: {results['base_seed']}",
        header,
        "-" * len(header),
    ]
    for task, s in results["summary"].items():
        t = results["timings"]["tasks"][task]
        low, high = s["success_ci95"]
        lines.append(
            f"{task:<24} {s['episodes']:>4} {s['success_rate']:>8.1%} {f'[{low:.1%}, {high:.1%}]':>15} "
            f"{s['success_end_rate']:>7.1%} {s['mean_length']:>9.1f} "
            f"{t['env_steps_per_second']:>12.1f} {t['policy_actions_per_second']:>10.1f}"
        )
    return "\n".join(lines)
