"""Rollouts: run a policy in the MuJoCo tasks, K envs stepped in lockstep by one policy copy, in
env worker processes (one per env, `fmmm.eval.env_slots`), in this process, or on Ray actors
(several envs each).

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np

from fmmm.envs.seeds import episode_seed
from fmmm.eval.env_slots import (
    LocalSlot,
    ProcessSlot,
    SlotSettings,
    StepHook,
    episode_steps,
    fill_instruction,
)
from fmmm.eval.language import WORDINGS, episode_wording
from fmmm.eval.speed import measure_control_rate, policy_speed_facts, timed_calls
from fmmm.eval.stats import wilson_interval
from fmmm.policies.base import BatchPolicy, Policy

# Evaluation split -> seed split: "test" episodes give the reported numbers, "val" episodes are
# for choosing checkpoints and settings.
EVAL_SPLITS = {"test": "eval", "val": "val"}


def run_episode(
    env: Any,
    policy: Policy,
    seed: int,
    policy_seed: int,
    instruction: str | None = None,
    on_step: StepHook | None = None,
    wording: str = "templates",
) -> dict[str, Any]:
    """Run one episode to termination or truncation; `on_step(obs, action, info)` sees every step.

    Returns what `episode_steps` returns, and the seconds spent in `policy.act`.
    """
    steps = episode_steps(env, seed, instruction, on_step, wording)
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


@dataclass
class _Episode:
    """An episode in progress on one env slot, as the policy's side sees it."""

    task: str
    index: int
    observation: dict[str, Any] | None = None
    policy_time: float = 0.0  # in the batch policy here; an own policy's is timed in its slot


class LockstepWorker:
    """One policy copy (one factory, one loaded model) stepping K env slots in lockstep.

    Each step, the running slots' observations go to the policy in one `act_batch` call when the
    factory's policy is a `BatchPolicy` (else each slot's own policy acts beside its env), then
    every slot steps; a slot whose episode ends starts the next item. With `processes` and K > 1
    every slot is a worker process (`ProcessSlot`) and this process only runs the policy: the K
    envs step and render in parallel, not one after another. Otherwise the slots are here
    (`LocalSlot`). Each slot makes an env per task on first use and keeps it.
    """

    def __init__(
        self,
        policy_source: str,
        base_seed: int,
        split: str = "test",
        instruction: str | None = None,
        video_dir: str | None = None,
        factory: Any = None,
        processes: bool = False,
        policy_options: dict[str, Any] | None = None,
        wording: str = "templates",
    ):
        from fmmm.policies.factory import load_policy

        limit_worker_threads()
        self.factory = factory or load_policy(policy_source, policy_options)
        render = getattr(self.factory, "uses_images", True) or video_dir is not None
        seed_split = EVAL_SPLITS[split]
        self.settings = SlotSettings(
            base_seed, seed_split, instruction, render, video_dir, policy_source, wording
        )
        self.processes = processes
        self.slots: list[LocalSlot | ProcessSlot] = []
        self.batch_policy: BatchPolicy | None = None
        self.own_policies = False

    def open(self, num_envs: int, first_tasks: Sequence[str] = ()) -> None:
        """Have at least `num_envs` slots: worker processes with `processes` when there are
        several, else slots in this process. A new slot is asked to make the env (and renderer)
        of its first task, `first_tasks[slot]`: a worker starts on it at once, while the caller
        goes on; a slot here does it in `ready()` or before its first episode."""
        while len(self.slots) < num_envs:
            index = len(self.slots)
            if self.processes and num_envs > 1:
                slot = ProcessSlot(self.settings)
            else:
                slot = LocalSlot(self.settings, self.factory)
            if index < len(first_tasks):
                slot.send(("prepare", first_tasks[index]))
            self.slots.append(slot)

    def ready(self) -> None:
        """Make the envs the slots were asked to prepare; return once all have them."""
        for slot in self.slots:
            if slot.pending:
                slot.receive()

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
        first = dict(zip(range(num_envs), queue))
        if not first:
            return
        self.open(len(first), [task for task, _ in first.values()])
        self._choose_policy(first[0][0])
        policy = self.batch_policy
        remote = all(self.slots[slot].remote for slot in first)
        if remote and getattr(policy, "execute", 1) > 1 and hasattr(policy, "queued"):
            yield from self._rows_ahead(queue, first)
            return
        running: dict[int, _Episode] = {}
        self._begin(first, running)
        while running:
            slots = list(running)
            if self.batch_policy is not None:
                actions = self._act(slots, running)
            else:
                actions = [None] * len(slots)
            replies = self._exchange({slot: ("step", a) for slot, a in zip(slots, actions)})
            starts = {}
            for slot in slots:
                done, payload = replies[slot]
                if not done:
                    running[slot].observation = payload
                    continue
                yield self._finish(running.pop(slot), payload)
                item = next(queue, None)
                if item is not None:
                    starts[slot] = item
            if starts:
                self._begin(starts, running)

    def _rows_ahead(
        self, queue: Iterator[tuple[str, int]], first: dict[int, tuple[str, int]]
    ) -> Iterator[dict[str, Any]]:
        """`_rows` for a batch policy that executes several actions of each predicted chunk
        (`execute` > 1) and says how many it has queued per slot (`queued(index)`): a slot with a
        queued action gets it as soon as its observation is back and steps on, while the others
        wait for forward passes. Chunks of different envs rarely line up, so lockstep would make
        every env wait for every forward pass. Each forward pass serves one slot, so its result
        does not depend on which slots happened to be waiting at the time: the actions, and the
        rows, are those of one env at a time."""
        policy = self.batch_policy
        running: dict[int, _Episode] = {}
        waiting: set[int] = set()  # slots whose observation is here, to act on
        in_flight: dict[int, str] = {}  # slot -> the request it is serving

        def begin(slot: int, task: str, index: int) -> None:
            running[slot] = _Episode(task, index)
            if hasattr(policy, "seed_index"):
                policy.seed_index(
                    slot, episode_seed(task, self.settings.base_seed, index, "policy")
                )
            policy.reset_index(slot)
            self.slots[slot].send(("begin", task, index, False))
            in_flight[slot] = "begin"

        for slot, (task, index) in first.items():
            begin(slot, task, index)
        while running:
            queued = [slot for slot in sorted(waiting) if policy.queued(slot)]
            # the queued actions go out first, so those envs step during the forward pass
            for acting in (queued, sorted(waiting.difference(queued))[:1]):
                if acting:
                    for slot, action in zip(acting, self._act(acting, running), strict=True):
                        self.slots[slot].send(("step", action))
                        in_flight[slot] = "step"
                    waiting.difference_update(acting)
            if waiting and not self._reply_ready(in_flight):
                continue  # the next forward pass, while the workers step
            slot = self._next_reply(in_flight)
            request = in_flight.pop(slot)
            reply = self.slots[slot].receive()
            if request == "begin":
                running[slot].observation = reply
                waiting.add(slot)
                continue
            done, payload = reply
            if not done:
                running[slot].observation = payload
                waiting.add(slot)
                continue
            yield self._finish(running.pop(slot), payload)
            item = next(queue, None)
            if item is not None:
                begin(slot, *item)

    def _reply_ready(self, in_flight: dict[int, Any]) -> bool:
        """Whether a worker's reply has come."""
        return any(self.slots[slot].connection.poll() for slot in in_flight)

    def _next_reply(self, in_flight: dict[int, Any]) -> int:
        """The in-flight worker slot whose reply comes first (a worker's exit reads as one)."""
        connections = {self.slots[slot].connection: slot for slot in in_flight}
        return connections[wait(list(connections))[0]]

    def _choose_policy(self, task: str) -> None:
        """One batch policy for all slots, or (any other policy) one per slot and task, built
        in the slot beside its env: decided on the factory's policy for an env of `task` (slot
        0's when it is here, else a state-only one made for the purpose)."""
        if self.batch_policy is not None or self.own_policies:
            return
        local = self.slots[0] if not self.slots[0].remote else None
        if local is not None:
            env = local.slot.env(task)
        else:
            import fmmm.envs

            env = fmmm.envs.make_env(task, render=False)
        try:
            policy = self.factory(env)
        finally:
            if local is None:
                env.close()
        if isinstance(policy, BatchPolicy):
            self.batch_policy = policy
        else:
            self.own_policies = True
            if local is not None:
                local.slot.policies[task] = policy

    def _begin(self, items: dict[int, tuple[str, int]], running: dict[int, _Episode]) -> None:
        """Start episode `items[slot]` on each of those slots (in parallel)."""
        settings = self.settings
        for slot, (task, index) in items.items():
            running[slot] = _Episode(task, index)
            if self.batch_policy is not None:
                if hasattr(self.batch_policy, "seed_index"):
                    policy_seed = episode_seed(task, settings.base_seed, index, "policy")
                    self.batch_policy.seed_index(slot, policy_seed)
                self.batch_policy.reset_index(slot)
        requests = {
            slot: ("begin", task, index, self.own_policies) for slot, (task, index) in items.items()
        }
        for slot, observation in self._exchange(requests).items():
            running[slot].observation = observation

    def _exchange(self, requests: dict[int, tuple]) -> dict[int, Any]:
        """Send each slot its request, then collect the replies: worker processes serve theirs
        in parallel (a slot in this process serves its own when its reply is asked for)."""
        for slot, request in requests.items():
            self.slots[slot].send(request)
        return {slot: self.slots[slot].receive() for slot in requests}

    def _act(self, slots: list[int], running: dict[int, _Episode]) -> np.ndarray:
        """The batch policy's actions for the running slots; its time is charged to each
        episode (the call's time split evenly among the envs it served)."""
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

    def _finish(self, episode: _Episode, result: dict[str, Any]) -> dict[str, Any]:
        """The episode's results.json row."""
        row = {"task": episode.task, "episode": episode.index, **result}
        row["policy_time"] += episode.policy_time
        return row

    def close(self) -> None:
        """Close every slot's envs and end the worker processes (also after an error)."""
        slots, self.slots = self.slots, []
        errors = []
        for slot in slots:
            try:
                slot.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> LockstepWorker:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class _RayEvalWorker:
    """A Ray actor holding one `LockstepWorker` (one policy copy) and its environments."""

    def __init__(self, *initargs: Any, **options: Any):
        self.worker = LockstepWorker(*initargs, **options)

    def run(self, items: list[tuple[str, int]], num_envs: int) -> Iterator[dict[str, Any]]:
        yield from self.worker.rows(items, num_envs)


def ray_map(
    items: list[tuple[str, int]],
    num_envs: int,
    envs_per_actor: int,
    initargs: tuple,
    address: str = "",
    options: dict[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the rows of `items` as episodes finish, on Ray actors (1 CPU each) of the cluster at
    `address` (empty: a local cluster): `num_envs` envs in all, `envs_per_actor` per actor.

    Actor a of n runs items[a::n]; its envs are stepped in lockstep in the actor's process
    (`LockstepWorker`); `initargs` and `options` are `LockstepWorker`'s positional and keyword
    arguments.
    """
    from fmmm.utils.ray_cluster import connect, worker_runtime_env

    ray = connect(address)
    count = math.ceil(num_envs / envs_per_actor)
    envs = math.ceil(num_envs / count)  # evenly: 10 envs at 8 per actor are 2 actors of 5
    remote = ray.remote(num_cpus=1, runtime_env=worker_runtime_env())(_RayEvalWorker)
    actors = [remote.remote(*initargs, **(options or {})) for _ in range(count)]
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


def control_rate(
    factory: Any, env: Any, seed: int, instruction: str | None, wording: str = "templates"
) -> dict[str, Any]:
    """The control rate of the factory's policy on `env` at the start of the episode `seed`
    (`measure_control_rate`), with the chunk size and forward passes per action it states."""
    steps = episode_steps(env, seed, instruction, wording=wording)
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
    policy_options: dict[str, Any] | None = None,
    wording: str = "templates",
) -> dict[str, Any]:
    """Evaluate `policy` (name or run dir) on `tasks`; per-episode rows, per-task summaries, timings.

    Args:
        num_envs: envs stepped in lockstep by one policy copy in this process (batched inference
            for a `BatchPolicy`); with more than one, each in an env worker process, all
            stepping and rendering in parallel; with `executor="ray"`, spread over Ray actors of
            the cluster at `ray_address` (else a local one), `envs_per_actor` per actor, each
            stepping its envs in its own process. The rows are the same.
        instruction: replaces the task instruction; {object} / {target} are filled per episode.
        split: "test" (the reported numbers) or "val" (choosing checkpoints and settings): disjoint
            seed streams.
        factory: `load_policy(policy)` when the caller has loaded it already.
        policy_options: replace values of the run's policy.json (`load_policy`), e.g. flow_steps.
        wording: "templates" (the task's instruction, or `instruction`) or "unseen": each episode
            told a wording never seen in training, drawn from its seed (`fmmm.eval.language`).
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
    if wording not in WORDINGS:
        raise ValueError(f"--wording must be one of {', '.join(WORDINGS)}, got {wording!r}")
    if instruction is not None and wording != "templates":
        raise ValueError(f"--instruction and --wording {wording} do not go together")
    for task in tasks:
        if fmmm.envs.expand_tasks(task) != [task]:  # raises on an unknown name
            raise ValueError(f"{task!r} names several tasks; pass them one by one")
    from fmmm.policies.factory import load_policy

    factory = factory or load_policy(policy, policy_options)  # fails fast on a bad name or dir
    render = getattr(factory, "uses_images", True) or video_dir is not None
    if video_dir is not None:
        Path(video_dir).mkdir(parents=True, exist_ok=True)
    items = [(task, index) for task in tasks for index in range(episodes)]
    envs = min(num_envs, len(items))
    video = None if video_dir is None else str(video_dir)
    initargs = (policy, base_seed, split, instruction, video)
    worker = None
    if executor == "local":
        # env worker processes start now, making their first envs while this process makes its own
        worker = LockstepWorker(
            *initargs,
            factory=factory,
            processes=True,
            policy_options=policy_options,
            wording=wording,
        )
        worker.open(envs, [task for task, _ in items[:envs]])
    try:
        fingerprints, first_env = {}, None
        for task in tasks:
            env = fmmm.envs.make_env(task, render=render)
            fingerprints[task] = env_fingerprint(env)
            # a bad placeholder, or a task with no unseen wordings, fails here before any rollout
            if instruction is not None or wording != "templates":
                seed = episode_seed(task, base_seed, 0, EVAL_SPLITS[split])
                env.reset(seed=seed)
                if wording == "unseen":
                    episode_wording(env, seed)
                else:
                    fill_instruction(env, instruction)
            if first_env is None:
                first_env = env
            else:
                env.close()
        if worker is not None:
            worker.ready()  # nothing else runs on the cores while the control rate is measured
        first_seed = episode_seed(tasks[0], base_seed, 0, EVAL_SPLITS[split])
        control = control_rate(factory, first_env, first_seed, instruction, wording)
        control = {"task": tasks[0], **control}
        first_env.close()
        rows = []
        start = time.perf_counter()
        if worker is None:
            options = {"policy_options": policy_options, "wording": wording}
            results = ray_map(items, envs, envs_per_actor, initargs, ray_address, options)
        else:
            results = worker.rows(items, envs)
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
        "wording": wording,
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
    wording = results.get("wording", "templates")
    lines = [
        f"policy: {results['policy']}  split: {results['split']}  seed: {results['base_seed']}"
        + (f"  wording: {wording}" if wording != "templates" else ""),
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
