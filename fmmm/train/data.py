"""Deterministic sample streams: a data position is a sample index, so resume and skip are exact.

`MixtureStream` interleaves sources in configured proportions with a low-discrepancy (Weyl)
sequence: over any prefix of n samples each source's share is within O(log n) samples of its
weight, so proportions hold within 1% over a run. Inside a source, samples follow a fresh seeded
permutation every epoch. Nothing reads global RNG state.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

_GOLDEN = 0.6180339887498949  # frac of the golden ratio: the best-spread Weyl step
_CHUNK = 1 << 16


class IndexedDataset(Protocol):
    """Random-access samples."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class EpochShuffle:
    """Maps the k-th draw from a source of `size` samples to an index: one permutation per epoch."""

    def __init__(self, size: int, seed: int):
        if size < 1:
            raise ValueError("cannot sample from an empty data source")
        self.size = size
        self.seed = seed
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return self._perms[epoch]

    def __call__(self, draws: np.ndarray) -> np.ndarray:
        out = np.empty(len(draws), dtype=np.int64)
        for i, k in enumerate(draws):
            out[i] = self.permutation(int(k) // self.size)[int(k) % self.size]
        return out


def mixture_sources(start: int, count: int, weights: Sequence[float]) -> np.ndarray:
    """Source id of stream positions start .. start+count-1 for the given (unnormalised) weights."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(
            f"mixture weights must be non-negative with a positive sum, got {weights.tolist()}"
        )
    bounds = np.cumsum(weights) / weights.sum()
    positions = np.arange(start, start + count, dtype=np.float64)
    u = np.mod((positions + 1) * _GOLDEN, 1.0)
    return np.minimum(np.searchsorted(bounds, u, side="right"), len(weights) - 1)


class MixtureStream:
    """An endless stream over several indexed sources mixed in fixed proportions.

    `collate(samples, source_names)` turns the list of raw samples of one batch into a batch.
    """

    def __init__(
        self,
        sources: Sequence[tuple[str, IndexedDataset, float]],
        collate: Callable[[list[Any], list[str]], Any],
        seed: int = 0,
    ):
        if not sources:
            raise ValueError("a data mixture needs at least one source")
        self.names = [name for name, _, _ in sources]
        self.datasets = [dataset for _, dataset, _ in sources]
        self.weights = [float(weight) for _, _, weight in sources]
        for name, dataset in zip(self.names, self.datasets):
            if len(dataset) == 0:
                raise ValueError(f"data source {name!r} is empty")
        mixture_sources(0, 1, self.weights)  # validates the weights
        self.shuffles = [
            EpochShuffle(len(d), seed * 1000003 + i) for i, d in enumerate(self.datasets)
        ]
        self.collate = collate
        self._chunk_counts: list[np.ndarray] = [np.zeros(len(sources), dtype=np.int64)]
        self._lock = threading.Lock()

    def _counts_before(self, position: int) -> np.ndarray:
        """Per-source number of draws at stream positions < `position`."""
        n_sources = len(self.names)
        with self._lock:
            while len(self._chunk_counts) <= position // _CHUNK:
                chunk = len(self._chunk_counts) - 1
                ids = mixture_sources(chunk * _CHUNK, _CHUNK, self.weights)
                self._chunk_counts.append(
                    self._chunk_counts[-1] + np.bincount(ids, minlength=n_sources)
                )
            base = position // _CHUNK * _CHUNK
            counts = self._chunk_counts[position // _CHUNK].copy()
        ids = mixture_sources(base, position - base, self.weights)
        return counts + np.bincount(ids, minlength=n_sources)

    def plan(self, start: int, count: int) -> list[tuple[int, int]]:
        """(source id, index in that source) for stream positions start .. start+count-1."""
        if start < 0 or count < 1:
            raise ValueError(f"invalid sample range start={start} count={count}")
        ids = mixture_sources(start, count, self.weights)
        draws = self._counts_before(start)
        plan = []
        for source in ids:
            plan.append((int(source), int(self.shuffles[source](np.array([draws[source]]))[0])))
            draws[source] += 1
        return plan

    def batch(self, start: int, count: int) -> Any:
        plan = self.plan(start, count)
        samples = [self.datasets[source][index] for source, index in plan]
        return self.collate(samples, [self.names[source] for source, _ in plan])


class DatasetStream(MixtureStream):
    """A single indexed dataset as an endless, epoch-shuffled stream (fine-tuning)."""

    def __init__(self, dataset: IndexedDataset, collate: Callable[[list[Any]], Any], seed: int = 0):
        super().__init__([("data", dataset, 1.0)], lambda samples, _: collate(samples), seed)
