"""Progress bars that stay readable in logs: a line per step suits a terminal, not a log file."""

import sys
from typing import Any


def progress(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm bar; off a terminal (a log file) it redraws at most every 10 s, not every step."""
    from tqdm.auto import tqdm

    if not getattr(kwargs.get("file") or sys.stderr, "isatty", lambda: False)():
        kwargs.setdefault("mininterval", 10.0)
    return tqdm(iterable, **kwargs)
