"""The one error path of every entry point: bad input becomes one `error: ...` line and exit 2.

    def main(argv=None) -> int:
        args = parser.parse_args(argv)
        return run_main(lambda: work(args))

What counts as bad input rather than a bug: invalid values and configs (`ValueError`, OmegaConf and
YAML errors), files that cannot be read or written (`OSError`), corrupt JSON and safetensors files,
a saved `config.json` missing or misnaming a field (`KeyError`, `TypeError`) and weights that do not
fit the model (`load_state_dict`'s size-mismatch `RuntimeError`). Any other exception is a bug and
keeps its traceback. `FMMM_TRACEBACK=1` shows the traceback of bad input too (for debugging).

Errors are recognised by class name, so this module imports nothing heavy.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

USAGE_ERROR = 2
# "<module>.<class>" anywhere in an exception's MRO marks it as bad input
_INPUT_ERRORS = (
    "safetensors._safetensors_rust.SafetensorError",
    "omegaconf.errors.OmegaConfBaseException",
    "yaml.error.YAMLError",
)
_STATE_DICT_MISMATCH = ("Error(s) in loading state_dict", "size mismatch for")
# frame locals that name the file being read or written when the exception itself does not
_PATH_LOCALS = ("path", "filename", "file", "target", "destination", "directory", "source")


def _class_names(exc: BaseException) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}


def is_input_error(exc: BaseException) -> bool:
    """Whether `exc` reports bad input (a file, config or value the user gave), not a bug."""
    if isinstance(exc, (ValueError, OSError, KeyError, TypeError)):
        return True
    if isinstance(exc, RuntimeError):
        return any(marker in str(exc) for marker in _STATE_DICT_MISMATCH)
    return bool(_class_names(exc) & set(_INPUT_ERRORS))


def _file_in_traceback(exc: BaseException) -> str | None:
    """The innermost file path a frame of `exc`'s traceback was working on, if any.

    None for a ValueError that fmmm raised itself: its message already says what and where.
    """
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    if not frames:
        return None
    if isinstance(exc, ValueError) and frames[-1].f_globals.get("__name__", "").startswith("fmmm"):
        return None
    for frame in reversed(frames):
        for name in _PATH_LOCALS:
            value = frame.f_locals.get(name)
            if isinstance(value, (str, os.PathLike)) and str(value):
                return str(value)
    return None


def _os_error_text(exc: OSError) -> str:
    if exc.errno:
        reason = exc.strerror or os.strerror(exc.errno)
    else:
        reason = str(exc)
    files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    return f"{reason}: {' -> '.join(files)}" if files else reason


def describe(exc: BaseException) -> str:
    """One line saying what went wrong, naming the file or key where the exception knows it."""
    if isinstance(exc, OSError):
        message = _os_error_text(exc)
    elif isinstance(exc, KeyError):
        message = f"missing key {exc.args[0]!r}" if exc.args else "missing key"
    elif isinstance(exc, RuntimeError):  # load_state_dict: a header line, then one per tensor
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reasons = [line[:240] for line in lines[1:3] or lines[:1]]  # a line may list every key
        message = "weights do not fit the model: " + "; ".join(reasons)
    else:
        message = str(exc) or type(exc).__name__
        if not isinstance(exc, ValueError):  # SafetensorError, TypeError, YAML errors: say which
            message = f"{type(exc).__name__}: {message}"
    where = None if isinstance(exc, OSError) and exc.filename else _file_in_traceback(exc)
    if where and where not in message:
        message = f"{message}: {where}" if isinstance(exc, OSError) else f"{message} (in {where})"
    return " ".join(message.split())


def report(exc: BaseException) -> int:
    """Print `exc` as one `error: ...` line on stderr (after erasing open progress bars); return
    the exit code 2."""
    from fmmm.utils.progress import clear_bars

    clear_bars()
    print(f"error: {describe(exc)}", file=sys.stderr)
    return USAGE_ERROR


def run_main(body: Callable[[], int | None]) -> int:
    """Run an entry point's work; bad input gives one `error:` line on stderr and exit code 2.

    `body` returns the exit code (None: 0). Bugs (any other exception) propagate with their
    traceback.
    """
    try:
        code = body()
    except Exception as exc:
        if not is_input_error(exc) or os.environ.get("FMMM_TRACEBACK"):
            raise
        return report(exc)
    return 0 if code is None else code
