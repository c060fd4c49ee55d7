"""Helpers for the bad-input corpus and fault drills: run a CLI (in a subprocess or in-process),
checksum what a user owns, and assert the one-line error every entry point promises."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
USAGE_ERROR = 2


@dataclass
class CliResult:
    """What a command left behind: its exit status and both streams as text."""

    returncode: int
    stdout: str
    stderr: str


def cli_env(**extra: str) -> dict[str, str]:
    """The environment a corpus subprocess runs in: offline, single-threaded, no Python warnings
    (a warning is not an error line, and third-party deprecations would make stderr noisy)."""
    env = dict(os.environ)
    env.update(
        PYTHONWARNINGS="ignore",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_cli(
    module: str,
    *args: str | os.PathLike,
    cwd: str | os.PathLike | None = None,
    timeout: float = 180,
    env: dict[str, str] | None = None,
    input: str | None = None,
) -> CliResult:
    """Run `python -m <module> *args` the way a user does and return its status and output."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=cwd,
        env=cli_env(**(env or {})),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def run_main(main: Callable[[list[str]], int | None], *args: str | os.PathLike) -> CliResult:
    """Call an entry point's `main(argv)` in this process, capturing both streams; a `SystemExit`
    (argparse, `sys.exit`) counts as its return code. Much faster than `run_cli` for cases that
    only reach argument and config validation."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message") prints the message and exits 1
        stderr.write(f"{code}\n")
        code = 1
    return CliResult(code, stdout.getvalue(), stderr.getvalue())


def _files_under(path: Path) -> Iterator[Path]:
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() or child.is_symlink():
                yield child
    elif path.exists() or path.is_symlink():
        yield path


def checksums(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> dict[str, str]:
    """sha256 of every file under `paths` (files or folders, recursively), keyed by path. Folders
    that hold no file are recorded too, so a created or deleted empty folder shows as a change;
    a path that does not exist is recorded as missing."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    sums: dict[str, str] = {}
    for root in map(Path, paths):
        if not root.exists() and not root.is_symlink():
            sums[str(root)] = "<missing>"
            continue
        if root.is_dir():
            for folder in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
                if not any(folder.iterdir()):
                    sums[str(folder) + os.sep] = "<empty dir>"
        for file in _files_under(root):
            if file.is_symlink():
                sums[str(file)] = "<symlink> " + os.readlink(file)
            else:
                sums[str(file)] = hashlib.sha256(file.read_bytes()).hexdigest()
    return sums


@contextlib.contextmanager
def unchanged(*paths: str | os.PathLike) -> Iterator[None]:
    """Assert that nothing under `paths` is created, changed or removed inside the block."""
    before = checksums(paths)
    yield
    after = checksums(paths)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"files changed: {changed[:10]}"


def error_lines(stderr: str) -> list[str]:
    """The non-empty lines of stderr."""
    return [line for line in stderr.splitlines() if line.strip()]


def assert_one_line_error(
    result: CliResult | subprocess.CompletedProcess, culprit: str | Sequence[str]
) -> str:
    """Assert the promised failure: exit status 2, no traceback, stderr exactly one non-empty line,
    and that line names `culprit` (a string, or several of which any one suffices; compared
    case-insensitively). Returns the line."""
    stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode()
    assert "Traceback" not in stderr, f"traceback on stderr:\n{stderr[-3000:]}"
    assert result.returncode == USAGE_ERROR, (
        f"exit status {result.returncode}, expected {USAGE_ERROR}; stderr:\n{stderr[-2000:]}"
    )
    lines = error_lines(stderr)
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{stderr[-2000:]}"
    culprits = [culprit] if isinstance(culprit, str) else list(culprit)
    line = lines[0]
    assert any(c.lower() in line.lower() for c in culprits), (
        f"error line does not name any of {culprits}: {line!r}"
    )
    return line


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    """Write a file under tmp_path: `write("a/b.yaml", "text")` or bytes; returns its path."""

    def _write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    return _write
