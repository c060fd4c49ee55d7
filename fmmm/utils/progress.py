"""Progress bars that stay readable in logs: a line per step suits a terminal, not a file."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

LOG_INTERVAL = 10.0  # seconds between bar lines when the output is not a terminal


def progress(iterable: Iterable | None = None, **kwargs: Any) -> Any:
    """A tqdm bar that writes at most one line every `LOG_INTERVAL` seconds off a terminal."""
    from tqdm.auto import tqdm

    stream = kwargs.get("file") or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()):
        kwargs.setdefault("mininterval", LOG_INTERVAL)
    return tqdm(iterable, **kwargs)
