"""`eval_info.json` as `lerobot-eval` (LeRobot 0.4) writes it, from fmmm's evaluation results.

Scripts written against LeRobot read it unchanged:

    per_task   [{"task_group", "task_id", "metrics": {"sum_rewards", "max_rewards", "successes",
                 "video_paths"}}]: per-episode lists, one entry per task (plus "task", its name)
    per_group  {task_group: {"avg_sum_reward", "avg_max_reward", "pc_success", "n_episodes",
                 "video_paths"}}
    overall    the same over every episode, plus "eval_s" and "eval_ep_s"

Each fmmm task is its own group with task_id 0, as LeRobot lays out a single-task env. A success
is a success at any step, as in LeRobot (and in fmmm's `success_rate`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _aggregate(metrics: dict[str, list]) -> dict[str, Any]:
    episodes = len(metrics["successes"])
    return {
        "avg_sum_reward": sum(metrics["sum_rewards"]) / episodes,
        "avg_max_reward": sum(metrics["max_rewards"]) / episodes,
        "pc_success": 100.0 * sum(metrics["successes"]) / episodes,
        "n_episodes": episodes,
        "video_paths": list(metrics["video_paths"]),
    }


def eval_info(
    results: dict[str, Any], video_dir: str | os.PathLike | None = None
) -> dict[str, Any]:
    """LeRobot's eval_info record of `evaluate`'s results; videos are named under `video_dir`."""
    per_task = []
    every: dict[str, list] = {
        "sum_rewards": [],
        "max_rewards": [],
        "successes": [],
        "video_paths": [],
    }
    for task in results["summary"]:
        rows = [row for row in results["episodes"] if row["task"] == task]
        metrics = {
            "sum_rewards": [row["sum_reward"] for row in rows],
            "max_rewards": [row["max_reward"] for row in rows],
            "successes": [row["success"] for row in rows],
            "video_paths": [
                str(Path(video_dir) / row["video"])
                for row in rows
                if video_dir is not None and row["video"]
            ],
        }
        per_task.append({"task_group": task, "task_id": 0, "task": task, "metrics": metrics})
        for key, values in metrics.items():
            every[key] += values
    wall = results["timings"]["wall_seconds"]
    overall = _aggregate(every)
    video_paths = overall.pop("video_paths")
    overall.update(eval_s=wall, eval_ep_s=wall / overall["n_episodes"], video_paths=video_paths)
    return {
        "per_task": per_task,
        "per_group": {entry["task_group"]: _aggregate(entry["metrics"]) for entry in per_task},
        "overall": overall,
    }
