"""Paired comparison of two policies: both run on the same episodes (same seeds, so the same start
states), then per task the difference in success with its 95% interval and an exact McNemar test.

Pairing removes the episode-to-episode variation both policies share, so it detects differences
that two independent evaluations of the same size would call noise.
"""

from __future__ import annotations

from typing import Any

from fmmm.eval.rollout import evaluate, format_control
from fmmm.eval.stats import paired_comparison


def compare(
    policy_a: str, policy_b: str, tasks: list[str], episodes: int, **evaluate_args: Any
) -> dict[str, Any]:
    """Evaluate `policy_a` and `policy_b` (names or run dirs) on the same episodes of `tasks`;
    `evaluate_args` go to `evaluate` (base_seed, split, num_envs, instruction, ...).

    Returns per task the success of A and of B, their difference with its 95% interval
    (Newcombe), the discordant counts (only_a: episodes only A solved, only_b: only B) and the
    exact McNemar p-value; the paired episodes; and both evaluations in full.
    """
    from fmmm.policies.factory import load_policy

    options = evaluate_args.get("policy_options")
    factories = [load_policy(policy_a, options), load_policy(policy_b, options)]  # fail early
    runs = {
        name: evaluate(policy, tasks, episodes, factory=factory, **evaluate_args)
        for name, policy, factory in zip("ab", (policy_a, policy_b), factories, strict=True)
    }
    pairs = []
    for row_a, row_b in zip(runs["a"]["episodes"], runs["b"]["episodes"], strict=True):
        if (row_a["task"], row_a["episode"], row_a["seed"]) != (
            row_b["task"],
            row_b["episode"],
            row_b["seed"],
        ):
            raise RuntimeError(f"unpaired episodes: {row_a['task']} {row_a['episode']}")
        pairs.append(
            {
                "task": row_a["task"],
                "episode": row_a["episode"],
                "seed": row_a["seed"],
                "success_a": row_a["success"],
                "success_b": row_b["success"],
            }
        )
    summary = {}
    for task in tasks:
        task_pairs = [p for p in pairs if p["task"] == task]
        summary[task] = paired_comparison(
            [p["success_a"] for p in task_pairs], [p["success_b"] for p in task_pairs]
        )
    return {
        "policy_a": policy_a,
        "policy_b": policy_b,
        "split": runs["a"]["split"],
        "base_seed": runs["a"]["base_seed"],
        "instruction_override": runs["a"]["instruction_override"],
        "episodes_per_task": episodes,
        "summary": summary,
        "episodes": pairs,
        "runs": runs,
    }


def format_comparison(comparison: dict[str, Any]) -> str:
    """Plain-text table, one row per task: success of A and B, A - B with its 95% interval, the
    discordant counts and the exact McNemar p-value."""
    header = (
        f"{'task':<24} {'n':>4} {'A':>7} {'B':>7} {'A - B':>7} {'95% CI':>17} "
        f"{'A only':>6} {'B only':>6} {'p':>8}"
    )
    lines = [
        f"A: {comparison['policy_a']}  B: {comparison['policy_b']}  "
        f"split: {comparison['split']}  seed: {comparison['base_seed']}",
        header,
        "-" * len(header),
    ]
    for task, s in comparison["summary"].items():
        low, high = s["difference_ci95"]
        lines.append(
            f"{task:<24} {s['episodes']:>4} {s['success_a']:>7.1%} {s['success_b']:>7.1%} "
            f"{s['difference']:>+7.1%} {f'[{low:+.1%}, {high:+.1%}]':>17} "
            f"{s['only_a']:>6} {s['only_b']:>6} {s['p_value']:>8.4g}"
        )
    lines.append("p: exact two-sided McNemar test on the episodes only one policy solved")
    for name in ("a", "b"):
        lines.append(
            f"{name.upper()} {format_control(comparison['runs'][name]['timings']['control'])}"
        )
    return "\n".join(lines)
