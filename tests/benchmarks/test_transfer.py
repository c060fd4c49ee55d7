"""The transfer benchmark's commands, pairing and report, on hand-made finished runs."""

import json

import pytest

from benchmarks import transfer


def _finish(run, outcomes):
    """A finished run whose test episodes (task, seed) succeeded as `outcomes` says."""
    (run / "eval").mkdir(parents=True)
    rows = [
        {"task": t, "seed": s, "success": ok, "episode": i} for i, (t, s, ok) in enumerate(outcomes)
    ]
    (run / "eval" / "results.json").write_text(json.dumps({"episodes": rows}))
    (run / "summary.json").write_text("{}")


def test_commands_differ_only_in_the_start_and_pair_the_same_demonstrations(tmp_path):
    args = transfer.parse_args(
        ["--pretrained", "runs/p", "--demos", "10", "--seeds", "1", "--out-dir", str(tmp_path)]
    )
    pretrained = transfer.adapt_command(args, 10, "pretrained", 1)
    scratch = transfer.adapt_command(args, 10, "scratch", 1)
    changed = {a for a, b in zip(pretrained, scratch) if a != b}
    assert changed == {"init.mode=pretrained", f"out_dir={tmp_path}/suite/10demos_pretrained_seed1"}
    assert "data.episodes=10" in scratch and "init.pretrained=runs/p" in scratch
    assert "init.mode=pretrained_shape" in scratch and "train.seed=1" in scratch
    holdout = transfer.parse_args(["--holdout", "stack", "--out-dir", str(tmp_path)])
    assert "task=reach,lift,push,pick_place,open_drawer" in transfer.pretrain_command(holdout)
    assert "task=stack" in transfer.adapt_command(holdout, 5, "scratch", 0)
    assert "train.steps=5000" in transfer.pretrain_command(holdout)
    play = transfer.parse_args(["--play", "--out-dir", str(tmp_path)])
    pretrain = transfer.pretrain_command(play)
    assert pretrain[3] == "configs/vla/play_pretrain.yaml" and not any(
        "steps" in a for a in pretrain
    )
    assert f"out_dir={tmp_path}/suite_play/pretrain" in pretrain
    adapt = transfer.adapt_command(play, 10, "pretrained", 0)
    assert "task=reach,lift,push,pick_place,stack,open_drawer" in adapt
    assert f"init.pretrained={tmp_path}/suite_play/pretrain" in adapt
    assert play.report.name == "transfer_suite_play.md"


def test_report_pairs_episodes_by_seed_and_pools_training_seeds(tmp_path):
    args = transfer.parse_args(
        ["--holdout", "reach", "--demos", "10", "--seeds", "0", "1", "--out-dir", str(tmp_path),
         "--report", str(tmp_path / "transfer.md"), "--report-only"]
    )  # fmt: skip
    for seed in (0, 1):
        # listed in another order for scratch: pairing goes by seed, not by position
        _finish(
            transfer.run_dir(args, 10, "pretrained", seed), [("reach", 1, True), ("reach", 2, True)]
        )
        _finish(
            transfer.run_dir(args, 10, "scratch", seed), [("reach", 2, False), ("reach", 1, True)]
        )
    assert transfer.main(
        ["--holdout", "reach", "--demos", "10", "--seeds", "0", "1", "--out-dir", str(tmp_path),
         "--report", str(tmp_path / "transfer.md"), "--report-only"]
    ) == 0  # fmt: skip
    cell = transfer.cell_report(args, 10, [0, 1])
    assert cell["all"]["episodes"] == 4 and cell["all"]["only_a"] == 2 and cell["all"]["both"] == 2
    assert cell["all"]["success_a"] == 1.0 and cell["all"]["success_b"] == 0.5
    report = (tmp_path / "transfer.md").read_text()
    assert "| 10 | 100.0% [51.0, 100.0] | 50.0% [15.0, 85.0] | +50.0" in report


def test_unpaired_or_missing_runs_are_refused(tmp_path):
    args = transfer.parse_args(["--holdout", "reach", "--demos", "5", "--seeds", "0",
                                "--out-dir", str(tmp_path)])  # fmt: skip
    with pytest.raises(SystemExit, match="no eval/results.json"):
        transfer.cell_report(args, 5, [0])
    _finish(transfer.run_dir(args, 5, "pretrained", 0), [("reach", 1, True)])
    _finish(transfer.run_dir(args, 5, "scratch", 0), [("reach", 3, True)])
    with pytest.raises(SystemExit, match="cannot be paired"):
        transfer.cell_report(args, 5, [0])
