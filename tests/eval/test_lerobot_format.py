import json
import subprocess
import sys
from pathlib import Path

import pytest

from fmmm.eval.lerobot_format import eval_info


def test_eval_cli_writes_lerobot_eval_info_beside_results(tmp_path):
    command = [sys.executable, "-m", "fmmm.eval", "--policy", "scripted", "--task", "pick_place"]
    command += ["--episodes", "2", "--out", str(tmp_path), "--video"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    info = json.loads((tmp_path / "eval_info.json").read_text())
    assert set(info) == {"per_task", "per_group", "overall"}
    (entry,) = info["per_task"]
    assert (entry["task_group"], entry["task_id"], entry["task"]) == ("pick_place", 0, "pick_place")
    metrics = entry["metrics"]
    assert set(metrics) == {"sum_rewards", "max_rewards", "successes", "video_paths"}
    # the expert succeeds; the env pays 1 on the successful step and ends the episode there
    assert metrics["successes"] == [True, True]
    assert metrics["sum_rewards"] == metrics["max_rewards"] == [1.0, 1.0]
    assert [row["sum_reward"] for row in results["episodes"]] == [1.0, 1.0]
    assert all(Path(path).is_file() for path in metrics["video_paths"])
    assert len(metrics["video_paths"]) == 2
    overall = info["overall"]
    keys = {"avg_sum_reward", "avg_max_reward", "pc_success", "n_episodes", "eval_s", "eval_ep_s"}
    assert keys | {"video_paths"} == set(overall)
    assert overall["pc_success"] == 100.0 and overall["n_episodes"] == 2
    assert overall["video_paths"] == metrics["video_paths"]
    assert info["per_group"]["pick_place"]["pc_success"] == 100.0


def _row(task: str, success: bool, reward: float) -> dict:
    return {
        "task": task,
        "success": success,
        "sum_reward": reward,
        "max_reward": min(reward, 1.0),
        "video": None,
    }


def test_eval_info_aggregates_per_task_group_and_overall():
    results = {
        "summary": {"a": {}, "b": {}},
        "episodes": [_row("a", True, 1.0), _row("a", False, 0.0), _row("b", True, 2.0)],
        "timings": {"wall_seconds": 6.0},
    }
    info = eval_info(results)
    assert [entry["metrics"]["successes"] for entry in info["per_task"]] == [[True, False], [True]]
    assert info["per_group"]["a"]["pc_success"] == 50.0
    assert info["per_group"]["b"]["avg_sum_reward"] == 2.0
    overall = info["overall"]
    assert overall["pc_success"] == pytest.approx(200 / 3)
    assert overall["avg_sum_reward"] == 1.0 and overall["avg_max_reward"] == pytest.approx(2 / 3)
    assert overall["n_episodes"] == 3 and overall["eval_ep_s"] == 2.0
    assert overall["video_paths"] == []
