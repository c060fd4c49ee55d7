"""`python -m fmmm.train CONFIG [key=value ...]` (also under `accelerate launch` / `torchrun`).

CONFIG is a run recipe (configs/*/*.yaml) whose `kind` picks the recipe; key=value override it.
The run writes into its `out_dir` and resumes from the newest valid checkpoint found there. A
non-empty `out_dir` that holds no run is refused unless --overwrite is given (the run then writes
into it; files of other names are kept).
"""

from __future__ import annotations

import sys

from fmmm.config import ConfigError, split_cli
from fmmm.utils.cli import run_main

USAGE = "usage: python -m fmmm.train CONFIG [--overwrite] [key=value ...]"


def main(argv: list[str] | None = None) -> int:
    """Run the training described by a config; print `error: ...` and return 2 on bad input."""
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(USAGE + "\n" + __doc__.split("\n", 1)[1], end="")
        return 0
    return run_main(lambda: _train(argv))


def _train(argv: list[str]) -> int:
    from fmmm.train.recipe import OVERWRITE
    from fmmm.train.runners import run

    OVERWRITE["allowed"] = "--overwrite" in argv
    path, overrides = split_cli([arg for arg in argv if arg != "--overwrite"])
    if path is None:
        raise ConfigError(USAGE)
    result = run(path, overrides)
    return 0 if getattr(result, "status", "completed") in ("completed", "preempted") else 1


if __name__ == "__main__":
    sys.exit(main())
