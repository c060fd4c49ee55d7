import subprocess
import sys


def _demo(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "fmmm.demo", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_demo_prints_every_tokenizer_output():
    result = _demo()
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "round trip exact: True" in out
    assert "patches (1, 64, 192) float32" in out
    assert "positions (1, 26, 1) int64" in out
    assert "bins (50, 7) int64" in out
    assert "layout text x2, image x64" in out
    assert _demo().stdout == out  # same seed, same output


def test_demo_bad_argument_prints_one_line_error_and_exits_2():
    result = _demo("--patch-size", "7")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: image_size (64) must be a positive multiple of patch_size (7)"
    ]
