"""`python -m fmmm.train CONFIG [key=value ...]` (also under `accelerate launch` / `torchrun`)."""

from __future__ import annotations

import sys

from fmmm.config import ConfigError, split_cli


def main(argv: list[str] | None = None) -> int:
    """Run the training described by a config; print `error: ...` and return 2 on bad input."""
    from fmmm.train.runners import run

    try:
        path, overrides = split_cli(sys.argv[1:] if argv is None else argv)
        if path is None:
            raise ConfigError("usage: python -m fmmm.train CONFIG [key=value ...]")
        result = run(path, overrides)
    except (ConfigError, ValueError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return 0 if getattr(result, "status", "completed") in ("completed", "preempted") else 1


if __name__ == "__main__":
    sys.exit(main())
