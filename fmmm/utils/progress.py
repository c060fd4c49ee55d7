"""Progress bars that stay readable in logs: a line per step suits a terminal, not a log file."""

import sys
from typing import Any

# off a terminal: the first draw and each redraw at most this often
LOG_INTERVAL_S = 10.0


def progress(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm bar; off a terminal (a log file) it first draws after 10 s and redraws at most every
    10 s, so a command that fails in seconds leaves only its error line on stderr."""
    from tqdm.auto import tqdm

    if not getattr(kwargs.get("file") or sys.stderr, "isatty", lambda: False)():
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("delay", LOG_INTERVAL_S)
    return tqdm(iterable, **kwargs)


def clear_bars() -> None:
    """Close every open bar, erasing it from a terminal, so that what follows starts a clean line."""
    std = sys.modules.get("tqdm.std")  # no bar was ever made without importing it
    if std is None:
        return
    for bar in list(std.tqdm._instances):
        bar.leave = False
        bar.close()
