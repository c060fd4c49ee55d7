"""Run a command with an injected fault, for the fault drills.

    python tests/reliability/_faults.py FAULT TARGET [ARGS ...]

FAULT: `none`; `enospc:N`: the Nth write (counting from 1) raises OSError(ENOSPC), as a full disk
does; `slow:S`: every write first sleeps S seconds, so a test can SIGKILL the process inside one.
A write is one file written by fmmm's atomic writer (`fmmm.utils.io`) or one checkpoint tensor file.
TARGET: a module run as `python -m TARGET ARGS`, or `toy` for the toy trainer of the trainer tests
(`toy RUN_DIR key=value ...`) behind the entry points' error path.
"""

from __future__ import annotations

import errno
import os
import runpy
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def install(fault: str) -> None:
    """Wrap the writers so that `fault` happens in them."""
    import fmmm.train.checkpoint as checkpoint
    import fmmm.utils.io as io

    if fault == "none":
        return
    kind, _, value = fault.partition(":")
    count = [0]

    def wrap(write):
        def faulty(*args, **kwargs):
            count[0] += 1
            if kind == "enospc" and count[0] >= int(value):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if kind == "slow":
                time.sleep(float(value))
            return write(*args, **kwargs)

        return faulty

    io._write_and_sync = wrap(io._write_and_sync)
    checkpoint.save_model = wrap(checkpoint.save_model)
    checkpoint.save_file = wrap(checkpoint.save_file)


def run_toy(run_dir: str, overrides: list[str]) -> int:
    """The toy trainer's run through the one error path of the entry points."""
    import torch

    from fmmm.utils.cli import run_main

    sys.path.insert(0, str(REPO / "tests" / "train"))
    import _train_toy

    torch.set_num_threads(1)

    def train() -> None:
        result = _train_toy.run(run_dir, overrides)
        print(f"status={result.status} step={result.step}")

    return run_main(train)


if __name__ == "__main__":
    fault, target, *arguments = sys.argv[1:]
    install(fault)
    if target == "toy":
        sys.exit(run_toy(arguments[0], arguments[1:]))
    sys.argv = [target, *arguments]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
