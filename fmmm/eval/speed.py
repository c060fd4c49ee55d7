"""Control frequency, one definition: actions per second at batch 1 after warm-up.

An action is one `act()` call, so a policy that predicts chunks is timed over whole chunks (its
forward passes amortized over the actions they serve), as it runs in an episode; the chunk size
and the forward passes per action are stated beside the rate when the policy exposes them.
"""

from __future__ import annotations

import math
import time
from typing import Any

from fmmm.policies.base import Policy


def policy_speed_facts(policy: Any) -> dict[str, Any]:
    """The chunk size and forward passes per action a policy states (`None` when it does not)."""
    return {
        "chunk": getattr(policy, "chunk", None),
        "forward_passes_per_action": getattr(policy, "forward_passes_per_action", None),
    }


def timed_calls(policy: Any, repeats: int) -> int:
    """`repeats` rounded up to a multiple of `policy.chunk` (when stated): whole chunks."""
    chunk = getattr(policy, "chunk", None)
    if isinstance(chunk, int) and chunk > 1:
        return math.ceil(repeats / chunk) * chunk
    return repeats


def measure_control_rate(
    policy: Policy, observation: dict[str, Any], warmup: int = 3, repeats: int = 24
) -> float:
    """Actions per second of `policy.act(observation)` at batch 1 after `warmup` calls.

    The policy is reset before the warm-up and again before the timed calls, so they start on an
    empty action queue; `repeats` is rounded up to whole chunks (`timed_calls`). The policy is
    left reset.
    """
    if warmup < 0 or repeats <= 0:
        raise ValueError(f"need warmup >= 0 and repeats > 0, got {warmup} and {repeats}")
    repeats = timed_calls(policy, repeats)
    policy.reset()
    for _ in range(warmup):
        policy.act(observation)
    policy.reset()
    start = time.perf_counter()
    for _ in range(repeats):
        policy.act(observation)
    seconds = time.perf_counter() - start
    policy.reset()
    return repeats / max(seconds, 1e-9)
