"""Where curation work runs: worker processes on this machine, or Ray tasks on a cluster.

Both executors map one function over a list of items (shards, hash partitions) and yield each
result as it finishes; the caller records results in the work folder, so neither engine decides
anything about the output and both write the same files.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from typing import Any, Protocol

from fmmm.data.config import RunConfig


class Executor(Protocol):
    def map_unordered(
        self,
        function: Callable[..., Any],
        items: Sequence[Any],
        args: tuple = (),
        initializer: Callable[..., None] | None = None,
        initargs: tuple = (),
    ) -> Iterator[tuple[int, Any]]:
        """Yield (position in `items`, `function(item, *args)`) as each call finishes.

        `initializer(*initargs)` runs once in every worker before its first call.
        """
        ...


class LocalExecutor:
    """`workers` spawned processes on this machine; 1 runs in this process."""

    def __init__(self, workers: int = 1):
        self.workers = workers

    def map_unordered(self, function, items, args=(), initializer=None, initargs=()):
        if self.workers <= 1 or len(items) <= 1:
            if initializer is not None:
                initializer(*initargs)
            for position, item in enumerate(items):
                yield position, function(item, *args)
            return
        context = get_context("spawn")
        with ProcessPoolExecutor(
            min(self.workers, len(items)), context, initializer=initializer, initargs=initargs
        ) as pool:
            futures = {pool.submit(function, item, *args): i for i, item in enumerate(items)}
            for future in as_completed(futures):
                yield futures[future], future.result()


_initialized: set[bytes] = set()  # in a Ray worker: initializers that already ran there


def _ray_call(function, item, args, initializer, initargs):
    if initializer is not None:
        key = pickle.dumps((initializer.__module__, initializer.__qualname__, initargs))
        if key not in _initialized:
            initializer(*initargs)
            _initialized.add(key)
    return function(item, *args)


class RayExecutor:
    """One Ray task per item (1 CPU each) on the cluster at `address`, else on a local cluster.

    A task that fails is retried by Ray (a lost node); a call that raises fails the map.
    """

    def __init__(self, address: str = ""):
        from fmmm.utils.ray_cluster import connect, worker_runtime_env

        self.ray = connect(address)
        self.runtime_env = worker_runtime_env()

    def map_unordered(self, function, items, args=(), initializer=None, initargs=()):
        ray = self.ray
        task = ray.remote(_ray_call).options(num_cpus=1, runtime_env=self.runtime_env)
        shared_args = ray.put(args)  # a config or index path, shipped once rather than per task
        pending = {
            task.remote(function, item, shared_args, initializer, initargs): position
            for position, item in enumerate(items)
        }
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield pending.pop(ref), ray.get(ref)
        finally:
            for ref in pending:  # the driver stops (error, interrupt): leave no orphan work
                ray.cancel(ref)


def make_executor(config: RunConfig) -> Executor:
    """The executor a command's config asks for (`executor=local|ray`)."""
    if config.executor == "ray":
        return RayExecutor(config.ray_address)
    return LocalExecutor(config.workers)
