import subprocess
import sys


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "fmmm.train", *args], capture_output=True, text=True
    )


def test_cli_reports_missing_config_and_unknown_kind_in_one_line(tmp_path):
    result = run_cli(str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and result.stderr.startswith("error: config file not found")
    config = tmp_path / "c.yaml"
    config.write_text("kind: mystery\n")
    result = run_cli(str(config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {config}: unknown kind 'mystery'; known: dpo, pretrain, sft, vla"
    ]
    result = run_cli()
    assert result.returncode == 2 and "usage: python -m fmmm.train CONFIG" in result.stderr


def test_an_old_pretraining_config_with_run_dir_says_what_to_rename(tmp_path):
    config = tmp_path / "old.yaml"
    config.write_text("kind: pretrain\nrun_dir: runs/old\n")
    result = run_cli(str(config))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {config}: 'run_dir' is now 'out_dir'; rename it"
    ]
    result = run_cli("configs/pretrain/smoke.yaml", "run_dir=runs/x")
    assert result.returncode == 2
    assert "'run_dir' is now 'out_dir'" in result.stderr
