"""The one small interface every policy implements, scripted experts and VLA policies alike."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Policy(Protocol):
    """Maps an observation to an action.

    `reset()` is called at the start of every episode (clears action-chunk queues, KV caches).
    `act(obs)` takes one environment observation dict (see docs/architecture.md) and returns a
    float32 action of the env's action shape in [-1, 1] ((7,) on fmmm's tasks, (4,) on
    Meta-World's). Batched evaluation calls `act` once per env.
    """

    def reset(self) -> None: ...

    def act(self, observation: dict[str, Any]) -> np.ndarray: ...
