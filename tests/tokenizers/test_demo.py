import subprocess
import sys

from fmmm.demo import main


def test_demo_command_prints_every_tokenizer_output():
    command = [sys.executable, "-m", "fmmm.demo"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "round trip exact: True" in out
    assert "patches (1, 64, 192) float32" in out
    assert "positions (1, 26, 1) int64" in out
    assert "bins (50, 7) int64" in out
    assert "layout text x15, image x64, text x1, state x1, text x1, action x28" in out


def test_demo_same_seed_same_output(capsys):
    assert main(["--seed", "3"]) == 0
    first = capsys.readouterr().out
    assert main(["--seed", "3"]) == 0
    assert capsys.readouterr().out == first


def test_demo_bad_argument_prints_one_line_error_and_exits_2(capsys):
    assert main(["--patch-size", "7"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: image_size (64) must be a positive multiple of patch_size (7)"
    ]
