"""Paired comparisons on the same episodes (same seeds, so the same start states): two policies
(`compare`), or one policy told the task templates and then wordings never seen in training
(`compare_wordings`); per task the difference in success with its 95% interval and an exact
McNemar test.

Pairing removes the episode-to-episode variation both runs share, so it detects differences
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
    pairs = paired_rows(runs["a"], runs["b"])
    summary = {task: paired_summary([p for p in pairs if p["task"] == task]) for task in tasks}
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


def paired_rows(run_a: dict[str, Any], run_b: dict[str, Any]) -> list[dict[str, Any]]:
    """The episodes of two evaluations side by side (task, index, seed, success of each); rows
    that are not the same episodes raise RuntimeError."""
    pairs = []
    for row_a, row_b in zip(run_a["episodes"], run_b["episodes"], strict=True):
        key = (row_a["task"], row_a["episode"], row_a["seed"])
        if key != (row_b["task"], row_b["episode"], row_b["seed"]):
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
    return pairs


def paired_summary(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """`paired_comparison` of the successes of `pairs` (rows of `paired_rows`)."""
    return paired_comparison([p["success_a"] for p in pairs], [p["success_b"] for p in pairs])


def compare_wordings(
    policy: str, tasks: list[str], episodes: int, factory: Any = None, **evaluate_args: Any
) -> dict[str, Any]:
    """Evaluate `policy` on the same episodes of `tasks` twice: told the task templates, then
    wordings never seen in training (`fmmm.eval.language`); `evaluate_args` go to `evaluate`
    (base_seed, split, num_envs, ...), `factory` is `load_policy(policy)` when loaded already.

    Returns per task (and over all tasks, "all", when there are several) the success with the
    templates and with unseen wordings, the loss (templates - unseen) with its 95% interval, the
    discordant counts (only_templates, only_unseen), the exact McNemar p-value and the unseen
    success by description style and by paraphrase; the paired episodes (with the unseen
    instruction and its wording); and both evaluations in full.
    """
    from fmmm.policies.factory import load_policy

    factory = factory or load_policy(policy, evaluate_args.get("policy_options"))
    runs = {
        wording: evaluate(
            policy, tasks, episodes, factory=factory, wording=wording, **evaluate_args
        )
        for wording in ("templates", "unseen")
    }
    pairs = paired_rows(runs["templates"], runs["unseen"])
    for pair, row in zip(pairs, runs["unseen"]["episodes"], strict=True):
        pair["instruction"], pair["wording"] = row["instruction"], row["wording"]
    groups = {task: [p for p in pairs if p["task"] == task] for task in tasks}
    if len(tasks) > 1:
        groups["all"] = pairs
    summary = {}
    for name, group in groups.items():
        paired = paired_summary(group)
        summary[name] = {
            "episodes": paired["episodes"],
            "success_templates": paired["success_a"],
            "success_unseen": paired["success_b"],
            "loss": paired["difference"],
            "loss_ci95": paired["difference_ci95"],
            "only_templates": paired["only_a"],
            "only_unseen": paired["only_b"],
            "both": paired["both"],
            "p_value": paired["p_value"],
            "unseen_by_style": _success_by(group, "style"),
            "unseen_by_paraphrase": _success_by(group, "paraphrase"),
        }
    for pair in pairs:
        pair["success_templates"] = pair.pop("success_a")
        pair["success_unseen"] = pair.pop("success_b")
    return {
        "policy": policy,
        "split": runs["templates"]["split"],
        "base_seed": runs["templates"]["base_seed"],
        "episodes_per_task": episodes,
        "summary": summary,
        "episodes": pairs,
        "runs": runs,
    }


def _success_by(pairs: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    """Episodes and success with unseen wordings per value of the wording's `key` (its style, or
    its paraphrase index: 0 is the task's own sentence with reworded descriptions)."""
    groups: dict[str, list[bool]] = {}
    for pair in sorted(pairs, key=lambda p: p["wording"][key]):
        groups.setdefault(str(pair["wording"][key]), []).append(pair["success_b"])
    return {
        value: {"episodes": len(wins), "success_rate": sum(wins) / len(wins)}
        for value, wins in groups.items()
    }


def _paired_table(
    summary: dict[str, Any], titles: tuple[str, ...], keys: tuple[str, ...]
) -> list[str]:
    """Header, rule and one row per task of a paired summary: n, the two success rates, their
    difference with its 95% interval, the discordant counts and the McNemar p. `titles` name the
    columns rate A, rate B, difference, A only, B only; `keys` are the summary keys of those and of
    the interval (success_a, success_b, difference, difference_ci95, only_a, only_b)."""
    a, b, diff, only_a, only_b = titles
    widths = [max(7, len(a)), max(7, len(b)), max(7, len(diff)), len(only_a), len(only_b)]
    header = (
        f"{'task':<24} {'n':>4} {a:>{widths[0]}} {b:>{widths[1]}} {diff:>{widths[2]}} "
        f"{'95% CI':>17} {only_a:>{widths[3]}} {only_b:>{widths[4]}} {'p':>8}"
    )
    lines = [header, "-" * len(header)]
    rate_a, rate_b, difference, interval, count_a, count_b = keys
    for task, s in summary.items():
        low, high = s[interval]
        lines.append(
            f"{task:<24} {s['episodes']:>4} {s[rate_a]:>{widths[0]}.1%} "
            f"{s[rate_b]:>{widths[1]}.1%} {s[difference]:>+{widths[2]}.1%} "
            f"{f'[{low:+.1%}, {high:+.1%}]':>17} {s[count_a]:>{widths[3]}} "
            f"{s[count_b]:>{widths[4]}} {s['p_value']:>8.4g}"
        )
    return lines


def format_wording_comparison(comparison: dict[str, Any]) -> str:
    """Plain-text table, one row per task (and "all"): success with the task templates and with
    unseen wordings, the loss with its 95% interval, the discordant counts and the McNemar p."""
    lines = [
        f"policy: {comparison['policy']}  split: {comparison['split']}  "
        f"seed: {comparison['base_seed']}  wording: task templates vs unseen",
        *_paired_table(
            comparison["summary"],
            ("templates", "unseen", "loss", "tmpl only", "unseen only"),
            (
                "success_templates",
                "success_unseen",
                "loss",
                "loss_ci95",
                "only_templates",
                "only_unseen",
            ),
        ),
        "loss: success with the templates - with unseen wordings; "
        "p: exact two-sided McNemar test on the episodes only one wording solved",
        format_control(comparison["runs"]["templates"]["timings"]["control"]),
    ]
    return "\n".join(lines)


def format_comparison(comparison: dict[str, Any]) -> str:
    """Plain-text table, one row per task: success of A and B, A - B with its 95% interval, the
    discordant counts and the exact McNemar p-value."""
    lines = [
        f"A: {comparison['policy_a']}  B: {comparison['policy_b']}  "
        f"split: {comparison['split']}  seed: {comparison['base_seed']}",
        *_paired_table(
            comparison["summary"],
            ("A", "B", "A - B", "A only", "B only"),
            ("success_a", "success_b", "difference", "difference_ci95", "only_a", "only_b"),
        ),
        "p: exact two-sided McNemar test on the episodes only one policy solved",
    ]
    for name in ("a", "b"):
        lines.append(
            f"{name.upper()} {format_control(comparison['runs'][name]['timings']['control'])}"
        )
    return "\n".join(lines)
