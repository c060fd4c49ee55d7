"""Success-rate statistics: the Wilson interval of one policy, and the paired comparison of two
policies run on the same episodes (exact McNemar test, Newcombe's interval of the difference)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Z95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score 95% interval of a success rate."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: a binomial(b + c, 1/2) test on the discordant pairs.

    b: episodes only A solved; c: episodes only B solved.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b} and {c}")
    n = b + c
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integers; one rounding at the division


def paired_difference_interval(
    both: int, only_a: int, only_b: int, neither: int, z: float = Z95
) -> tuple[float, float]:
    """95% interval of success(A) - success(B) on paired episodes (Newcombe 1998, method 10:
    the Wilson intervals of both rates, combined with the correlation of the pairs)."""
    n = both + only_a + only_b + neither
    if n == 0:
        return -1.0, 1.0
    p_a, p_b = (both + only_a) / n, (both + only_b) / n
    low_a, high_a = wilson_interval(both + only_a, n, z)
    low_b, high_b = wilson_interval(both + only_b, n, z)
    # correlation of the pairs, its numerator shrunk by n/2 towards 0 as Newcombe does
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b
    cross = cross - n / 2 if cross > n / 2 else min(cross, 0)
    phi = cross / math.sqrt(margins) if margins else 0.0
    difference = p_a - p_b
    below = (p_a - low_a) ** 2 - 2 * phi * (p_a - low_a) * (high_b - p_b) + (high_b - p_b) ** 2
    above = (high_a - p_a) ** 2 - 2 * phi * (high_a - p_a) * (p_b - low_b) + (p_b - low_b) ** 2
    return max(-1.0, difference - math.sqrt(below)), min(1.0, difference + math.sqrt(above))


def paired_comparison(success_a: Sequence[bool], success_b: Sequence[bool]) -> dict[str, Any]:
    """Success of A and of B on the same episodes, their difference with its 95% interval, the
    discordant counts b (A only) and c (B only) and the exact McNemar p-value."""
    if len(success_a) != len(success_b):
        raise ValueError(f"paired results differ in length: {len(success_a)} and {len(success_b)}")
    pairs = list(zip(map(bool, success_a), map(bool, success_b)))
    both = sum(a and b for a, b in pairs)
    only_a = sum(a and not b for a, b in pairs)
    only_b = sum(b and not a for a, b in pairs)
    n = len(pairs)
    low, high = paired_difference_interval(both, only_a, only_b, n - both - only_a - only_b)
    return {
        "episodes": n,
        "success_a": (both + only_a) / n if n else 0.0,
        "success_b": (both + only_b) / n if n else 0.0,
        "difference": (only_a - only_b) / n if n else 0.0,
        "difference_ci95": [low, high],
        "only_a": only_a,
        "only_b": only_b,
        "both": both,
        "p_value": mcnemar_exact(only_a, only_b),
    }
