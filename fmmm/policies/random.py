"""Uniform random actions: the floor every trained policy must beat."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fmmm.policies.factory import PolicyFactory, policy_registry


class RandomPolicy:
    """Draws each action uniformly from [-1, 1]^D; `seed(s)` makes an episode reproducible."""

    def __init__(self, action_dim: int = 7, seed: int = 0):
        self.action_dim = action_dim
        self._rng = np.random.default_rng(seed)

    def seed(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        pass

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        return self._rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)


@policy_registry.register("random")
def load_random(run_dir: Path | None, config: dict[str, Any]) -> PolicyFactory:
    """Factory of random policies sized to each env's action space."""

    def factory(env: Any) -> RandomPolicy:
        return RandomPolicy(int(np.prod(env.action_space.shape)))

    factory.uses_images = False
    return factory
