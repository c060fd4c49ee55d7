import io
import itertools
import os
import subprocess
import sys

import pytest

from fmmm.registry import Registry
from fmmm.utils.io import atomic_dir, atomic_write_json, atomic_write_text
from fmmm.utils.progress import clear_bars, progress


def test_atomic_write_leaves_no_temp_files_and_replaces(tmp_path):
    path = tmp_path / "out" / "a.json"
    atomic_write_json(path, {"a": 1})
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert os.listdir(path.parent) == ["a.json"]


def test_atomic_dir_discards_partial_output_on_error(tmp_path):
    target = tmp_path / "ckpt"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("crash while writing")
    assert not target.exists()
    assert os.listdir(tmp_path) == []
    with atomic_dir(target) as tmp:
        (tmp / "full.bin").write_bytes(b"y")
    assert (target / "full.bin").read_bytes() == b"y"


def test_registry_lookup_is_lazy_and_names_unknown_entries():
    registry = Registry("widget")
    registry.lazy("json_encoder", "json")
    assert "json_encoder" in registry
    with pytest.raises(KeyError, match="unknown widget 'nope'.*json_encoder"):
        registry.get("nope")

    @registry.register("square")
    def square(x):
        return x * x

    assert registry.get("square")(3) == 9
    with pytest.raises(ValueError, match="already registered"):
        registry.register("square")(lambda x: x)


def test_import_fmmm_does_not_import_heavy_modules():
    code = "import sys, fmmm, fmmm.config, fmmm.registry; print(sorted(m for m in ('torch', 'mujoco', 'numpy', 'omegaconf') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_atomic_files_get_the_usual_permissions(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_json(path, [])
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    with atomic_dir(tmp_path / "d"):
        pass
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream_type, most_lines", [(io.StringIO, 40), (_Terminal, None)])
def test_progress_bar_writes_far_fewer_lines_than_steps_off_a_terminal(
    monkeypatch, stream_type, most_lines
):
    import tqdm.std

    clock = itertools.count(0.0, 0.25)  # each clock read is a quarter second later
    monkeypatch.setattr(tqdm.std, "time", lambda: next(clock))
    stream, steps = stream_type(), 2000
    for _ in progress(range(steps), file=stream):
        pass
    lines = stream.getvalue().count("\r")
    if most_lines is None:
        assert lines > steps // 2  # a terminal still gets a live bar
    else:
        assert lines <= most_lines


def test_open_bars_are_erased_from_a_terminal_before_an_error_line():
    terminal = _Terminal()
    bar = progress(total=10, file=terminal, desc="export")
    bar.update(3)
    clear_bars()
    *_, last_draw, after = terminal.getvalue().split("\r")
    assert last_draw.strip() == "" and after == ""  # the bar's line blanked, the cursor back at 0
    assert bar.disable  # closed: a later update draws nothing
