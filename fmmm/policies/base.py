"""The one small interface every policy implements, scripted experts and VLA policies alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Policy(Protocol):
    """Maps an observation to an action.

    `reset()` is called at the start of every episode (clears action-chunk queues, KV caches).
    `act(obs)` takes one environment observation dict (see docs/architecture.md) and returns a
    float32 action of the env's action shape in [-1, 1] ((7,) on fmmm's tasks, (4,) on
    Meta-World's).

    Optional, read with getattr: `seed(seed)` (re-seeded before every evaluation episode),
    `chunk` (actions predicted per inference) and `forward_passes_per_action` (model forward
    passes per action served: 1/chunk for a head that predicts the chunk in one pass, D for an
    autoregressive token head decoding one token per pass), stated beside the measured control
    rate (`fmmm.eval.speed.measure_control_rate`).
    """

    def reset(self) -> None: ...

    def act(self, observation: dict[str, Any]) -> np.ndarray: ...


@runtime_checkable
class BatchPolicy(Policy, Protocol):
    """A `Policy` that also serves several envs at once, with one model call per lockstep step.

    The evaluator builds one from the factory (for the first env) and uses that single object for
    all of its K envs, so it must not depend on which env it was built for. Env slots are indices
    0..K-1; each keeps its own per-episode state (action-chunk queue, cache):
    `reset_index(i)` starts a new episode in slot i; `act_batch(observations, indices)` takes the
    observations of the running slots `indices` (in that order) and returns their actions,
    float32 (len(indices), D), typically refilling the empty queues with one batched forward
    pass. A stochastic batch policy may define `seed_index(i, seed)`, called before
    `reset_index(i)` with that episode's policy seed. A policy that serves several actions of each predicted
    chunk from a queue may state how many (`execute` > 1) and define `queued(i)`: the actions
    slot i has queued, which `act_batch` serves without looking at the observation; the evaluator
    then lets a slot with a queued action step on without waiting for the others' forward
    passes, and runs those one slot at a time. `reset()` / `act()`
    act as slot 0, so a batch policy works wherever a `Policy` does.
    """

    def reset_index(self, index: int) -> None: ...

    def act_batch(
        self, observations: Sequence[dict[str, Any]], indices: Sequence[int]
    ) -> np.ndarray: ...
