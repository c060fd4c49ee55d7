"""Episode seeds: a function of (task, base seed, episode index, split) and nothing else.

Training demonstrations, validation episodes and test episodes draw from disjoint seed sets (the
split sits in the top two bits), so a policy is never evaluated on an initial state it was trained
on, and checkpoints and settings chosen on "val" episodes say nothing about the "eval" (test)
episodes that reported numbers come from. "policy" seeds a stochastic policy's own draws.
"""

from __future__ import annotations

import hashlib

import numpy as np

SPLITS = {"train": 0, "eval": 1, "policy": 2, "val": 3}  # values fixed: seeds must not change
_LOW_BITS = (1 << 62) - 1


def episode_seed(task: str, base_seed: int, episode: int, split: str) -> int:
    """Seed for episode `episode` of `task`; independent of batch size, worker count and order."""
    if split not in SPLITS:
        raise ValueError(f"unknown seed split {split!r}; expected one of {sorted(SPLITS)}")
    if base_seed < 0 or episode < 0:
        raise ValueError(f"seeds and episode indices must be >= 0, got {base_seed} and {episode}")
    # blake2b, not hash(): Python's str hash changes from one process to the next
    task_key = int.from_bytes(hashlib.blake2b(task.encode(), digest_size=8).digest(), "little")
    state = np.random.SeedSequence([task_key, base_seed, episode, SPLITS[split]])
    low = int(state.generate_state(1, np.uint64)[0]) & _LOW_BITS
    return (SPLITS[split] << 62) | low
