"""Atomic file writing: nothing half-written is ever visible under the final name.

Temporary files and folders are hidden siblings named `.<name>.<pid>-<random>.tmp`; one left by a
killed process (its pid no longer running) is removed by the next write of the same name.
`check_output_dir` is the overwrite rule every command that writes a folder applies first.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


def remove_stale_temps(path: str | os.PathLike) -> None:
    """Delete the temporary siblings of `path` left by processes that were killed while writing."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    start = f".{path.name}."
    for temp in path.parent.iterdir():
        name = temp.name
        if not (name.startswith(start) and name.endswith(".tmp")):
            continue
        pid = name[len(start) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _is_running(int(pid)):
            if temp.is_dir() and not temp.is_symlink():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                temp.unlink(missing_ok=True)


def _write_and_sync(f: Any, data: bytes) -> None:
    """Every atomic write's bytes go through here (the fault drills make it fail or stall)."""
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            _write_and_sync(f, data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it is renamed to `path` (replacing it).

    A folder replaced by a process killed between the two renames is restored on the next call.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file; a folder cannot replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.with_name(f".{path.name}.old")
    if old.is_dir() and not path.exists():
        os.replace(old, path)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_in(tmp: Path, path: Path) -> None:
    """Rename the finished folder `tmp` to `path`. An existing `path` is first renamed aside to
    `.<name>.old` and deleted afterwards, so a kill between the two renames leaves it whole
    (`atomic_dir` puts it back on its next write)."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    sources: tuple[str | os.PathLike, ...] = (),
    own_markers: tuple[str, ...] = (),
    flag: str | None = "--overwrite",
) -> Path:
    """Refuse an output folder that would lose data or cannot be written; creates nothing.

    Never a file, a source, a folder inside a source or one holding a source. A non-empty folder
    only when it holds one of `own_markers` (files or folders this command writes, so a re-run
    resumes its own output) or when `overwrite` is given. The folder, or its nearest existing
    parent, must be writable. Raises ValueError naming the path (and `flag`, the command's option
    that sets `overwrite`, if it has one).
    """
    path = Path(path)
    resolved = path.resolve()
    for source in map(Path, sources):
        source_resolved = source.resolve()
        if _inside(resolved, source_resolved) or _inside(source_resolved, resolved):
            relation = "is" if resolved == source_resolved else "overlaps"
            raise ValueError(f"output {path} {relation} the input {source}; choose another folder")
    existing = _nearest_existing(resolved)
    if not existing.is_dir():
        raise ValueError(f"output {path}: {existing} is a file, not a folder")
    if existing == resolved and any(path.iterdir()) and not overwrite:
        if not any((path / marker).exists() for marker in own_markers):
            remedy = f"pass {flag} to write over it, or " if flag else ""
            raise ValueError(f"output folder {path} is not empty; {remedy}choose another folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        reason = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror
        raise ValueError(f"output {path} cannot be written: {reason} ({existing})") from None
    return path
