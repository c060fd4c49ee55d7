"""Loss-spike guard: skip steps far outside recent history; ask for a rollback when spikes persist."""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any


@dataclass
class SpikeConfig:
    """When a step's loss or gradient norm counts as a spike, and what to do about it."""

    enabled: bool = True
    window: int = 50  # rolling history of accepted steps
    min_history: int = 10  # no z-score verdicts before this many accepted steps
    z_threshold: float = 6.0  # one-sided: only values far above the mean are spikes
    rel_std_floor: float = 0.05  # loss std is at least this fraction of its mean (flat curves)
    log_grad_std_floor: float = 0.25  # std of log(gradient norm) is at least this
    max_consecutive: int = 3  # this many spikes in a row trigger a rollback
    max_rollbacks: int = 5  # then the run stops with an error

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"spike.window must be >= 2, got {self.window}")
        if not 1 <= self.min_history <= self.window:
            raise ValueError(f"spike.min_history must be in [1, window], got {self.min_history}")
        if self.z_threshold <= 0:
            raise ValueError(f"spike.z_threshold must be > 0, got {self.z_threshold}")
        if self.max_consecutive < 1:
            raise ValueError(f"spike.max_consecutive must be >= 1, got {self.max_consecutive}")


class SpikeGuard:
    """Judges each step from its loss and gradient norm against a rolling window of good steps."""

    def __init__(self, cfg: SpikeConfig):
        self.cfg = cfg
        self.losses: deque[float] = deque(maxlen=cfg.window)
        self.log_grad_norms: deque[float] = deque(maxlen=cfg.window)
        self.consecutive = 0

    @staticmethod
    def _z(value: float, history: deque[float], floor: float) -> float:
        mean = statistics.fmean(history)
        return (value - mean) / max(statistics.pstdev(history), floor, 1e-12)

    def check(self, loss: float, grad_norm: float) -> str | None:
        """Reason this step is a spike (and must be skipped), or None to accept it."""
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return f"non-finite loss {loss} or gradient norm {grad_norm}"
        if not self.cfg.enabled or len(self.losses) < self.cfg.min_history:
            return None
        z_loss = self._z(
            loss, self.losses, self.cfg.rel_std_floor * abs(statistics.fmean(self.losses))
        )
        # gradient norms swing by factors early in training: judge them on a log scale
        log_grad = math.log(grad_norm + 1e-12)
        z_grad = self._z(log_grad, self.log_grad_norms, self.cfg.log_grad_std_floor)
        if z_loss > self.cfg.z_threshold:
            return f"loss {loss:.4g} is {z_loss:.1f} std above its recent mean"
        if z_grad > self.cfg.z_threshold:
            return f"gradient norm {grad_norm:.4g} is {z_grad:.1f} std above its recent mean"
        return None

    def update(self, loss: float, grad_norm: float, spike: bool) -> bool:
        """Record the verdict; True when spikes have persisted long enough to roll back."""
        if spike:
            self.consecutive += 1
            return self.consecutive >= self.cfg.max_consecutive
        self.consecutive = 0
        self.losses.append(loss)
        self.log_grad_norms.append(math.log(grad_norm + 1e-12))
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.losses),
            "log_grad_norms": list(self.log_grad_norms),
            "consecutive": self.consecutive,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.losses = deque(state["losses"], maxlen=self.cfg.window)
        self.log_grad_norms = deque(state["log_grad_norms"], maxlen=self.cfg.window)
        self.consecutive = int(state["consecutive"])
