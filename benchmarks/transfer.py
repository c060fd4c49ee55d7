"""Transfer benchmark: does a pretrained start make policies learn from fewer demonstrations?

For each number of demonstrations per task and each training seed, the few-demonstration recipe
(`configs/vla/transfer.yaml`) runs twice on the same demonstrations, steps and test episodes: from
the pretrained model (or pretrained policy run) and from fresh weights of the same architecture
(`init.mode=pretrained_shape`). Test episodes are paired by seed, so the report gives each start's
success with its Wilson interval and the paired difference with its interval and McNemar p-value.

    # main variant: adapt to every suite task from a pretrained model folder or policy run
    python -m benchmarks.transfer --pretrained runs/pretrain_tiny_conv/model --demos 5 10 25 50 --seeds 0 1 2
    # cross-task variant: pretrain a policy on the other five tasks, adapt to the sixth
    python -m benchmarks.transfer --holdout pick_place --demos 10 25 --seeds 0
    # play variant: pretrain a policy on play episodes (tasks/play_*.yaml: move beside named
    # things, no task of the suite), adapt it to every suite task
    python -m benchmarks.transfer --play --demos 10 25 --seeds 0
    # report finished runs again without training
    python -m benchmarks.transfer --holdout pick_place --demos 10 25 --seeds 0 --report-only

Each run writes `runs/transfer/<variant>/<demos>demos_<start>_seed<seed>/` and its log beside it;
runs with a summary.json are not run again, so an interrupted benchmark resumes. The table goes
to `--report` (default docs/benchmarks/transfer_<variant>.md) with the commands and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SUITE = ("reach", "lift", "push", "pick_place", "stack", "open_drawer")
STARTS = {"pretrained": "pretrained", "scratch": "pretrained_shape"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.transfer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pretrained", help="model folder or policy run directory to adapt from")
    source.add_argument(
        "--holdout",
        choices=SUITE,
        help="cross-task variant: pretrain a policy on the other five tasks, adapt to this one",
    )
    source.add_argument(
        "--play",
        action="store_true",
        help="play variant: pretrain a policy on play episodes (--play-config), adapt to the suite",
    )
    parser.add_argument("--demos", type=int, nargs="+", default=[5, 10, 25, 50])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=1500, help="adaptation steps")
    parser.add_argument("--episodes", type=int, default=50, help="test episodes per task")
    parser.add_argument(
        "--pretrain-steps",
        type=int,
        default=None,
        help="pretraining steps (--holdout: 5000; --play: the play config's)",
    )
    parser.add_argument("--config", default="configs/vla/transfer.yaml")
    parser.add_argument("--pretrain-config", default="configs/vla/transfer_pretrain.yaml")
    parser.add_argument("--play-config", default="configs/vla/play_pretrain.yaml")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/transfer"))
    parser.add_argument(
        "--report", type=Path, default=None, help="default docs/benchmarks/transfer_<variant>.md"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra override for every adaptation run (repeatable)",
    )
    parser.add_argument("--report-only", action="store_true", help="do not train; report runs")
    args = parser.parse_args(argv)
    for name in ("demos", "seeds"):
        if any(value < 0 for value in getattr(args, name)) or not getattr(args, name):
            parser.error(f"--{name} must list numbers >= 0")
    if min(args.demos) < 1 or args.steps < 1 or args.episodes < 1:
        parser.error("--demos, --steps and --episodes must be >= 1")
    if args.pretrain_steps is not None and args.pretrain_steps < 1:
        parser.error("--pretrain-steps must be >= 1")
    if args.pretrain_steps is None and args.holdout:
        args.pretrain_steps = 5000
    if args.report is None:
        args.report = Path("docs/benchmarks") / f"transfer_{variant(args)}.md"
    return args


def variant(args: argparse.Namespace) -> str:
    if args.holdout:
        return f"holdout_{args.holdout}"
    return "suite_play" if args.play else "suite"


def tasks(args: argparse.Namespace) -> list[str]:
    return [args.holdout] if args.holdout else list(SUITE)


def pretrain_command(args: argparse.Namespace) -> list[str]:
    """The pretraining run: the suite policy trained on the five other tasks (--holdout) or on
    the play episodes (--play)."""
    steps = [] if args.pretrain_steps is None else [f"train.steps={args.pretrain_steps}"]
    if args.play:
        return [
            "python", "-m", "fmmm.train", args.play_config, *steps,
            f"out_dir={pretrained_source(args)}",
        ]  # fmt: skip
    others = ",".join(t for t in SUITE if t != args.holdout)
    return [
        "python", "-m", "fmmm.train", args.pretrain_config, f"task={others}", *steps,
        f"out_dir={pretrained_source(args)}",
    ]  # fmt: skip


def pretrained_source(args: argparse.Namespace) -> Path:
    if args.pretrained:
        return Path(args.pretrained)
    return args.out_dir / variant(args) / "pretrain"


def run_dir(args: argparse.Namespace, demos: int, start: str, seed: int) -> Path:
    return args.out_dir / variant(args) / f"{demos}demos_{start}_seed{seed}"


def adapt_command(args: argparse.Namespace, demos: int, start: str, seed: int) -> list[str]:
    return [
        "python", "-m", "fmmm.train", args.config, f"task={','.join(tasks(args))}",
        f"data.episodes={demos}", f"init.mode={STARTS[start]}",
        f"init.pretrained={pretrained_source(args)}", f"train.steps={args.steps}",
        f"train.seed={seed}", f"eval.episodes={args.episodes}",
        f"out_dir={run_dir(args, demos, start, seed)}", *args.override,
    ]  # fmt: skip


def run_logged(command: list[str], out_dir: Path) -> float:
    """Run `command` (python -m ...) with its output in `out_dir`.log; returns the wall seconds."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    log = out_dir.parent / f"{out_dir.name}.log"
    print("$", " ".join(command), f"  (log: {log})", flush=True)
    started = time.perf_counter()
    with open(log, "a") as stream:
        done = subprocess.run(
            [sys.executable, *command[1:]], cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT
        )
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - started


def test_rows(run: Path) -> list[dict[str, Any]]:
    """(task, seed, success) of every test episode of a finished run."""
    results = run / "eval" / "results.json"
    if not results.is_file():
        raise SystemExit(f"{run} has no eval/results.json: run the benchmark without --report-only")
    rows = json.loads(results.read_text())["episodes"]
    return [{"task": r["task"], "seed": r["seed"], "success": bool(r["success"])} for r in rows]


def paired(rows_a: list[dict], rows_b: list[dict]) -> tuple[list[bool], list[bool], list[str]]:
    """Success lists of A and B on the same episodes (matched by task and seed)."""
    by_key = {(r["task"], r["seed"]): r["success"] for r in rows_b}
    keys = [(r["task"], r["seed"]) for r in rows_a]
    if set(keys) != set(by_key):
        raise SystemExit("the two runs' test episodes differ: they cannot be paired")
    return [r["success"] for r in rows_a], [by_key[k] for k in keys], [k[0] for k in keys]


def percent(rate: float) -> str:
    return f"{100 * rate:.1f}%"


def interval(successes: int, trials: int) -> str:
    from fmmm.eval.stats import wilson_interval

    low, high = wilson_interval(successes, trials)
    return f"[{100 * low:.1f}, {100 * high:.1f}]"


def cell_report(args: argparse.Namespace, demos: int, seeds: list[int]) -> dict[str, Any]:
    """Pretrained against scratch at `demos`, pooled over the training seeds."""
    from fmmm.eval.stats import paired_comparison

    a, b, names = [], [], []
    for seed in seeds:
        rows = [test_rows(run_dir(args, demos, start, seed)) for start in STARTS]
        sa, sb, task_names = paired(*rows)
        a += sa
        b += sb
        names += task_names
    per_task = {}
    for task in tasks(args):
        picked = [i for i, name in enumerate(names) if name == task]
        per_task[task] = paired_comparison([a[i] for i in picked], [b[i] for i in picked])
    return {"demos": demos, "seeds": seeds, "all": paired_comparison(a, b), "tasks": per_task}


def write_report(args: argparse.Namespace, cells: list[dict], timings: dict[str, float]) -> str:
    from fmmm.utils.io import atomic_write_text

    lines = [
        "# Transfer: pretrained start against fresh weights",
        "",
        f"Variant: **{variant(args)}** (tasks: {', '.join(tasks(args))}). Same architecture, "
        f"demonstrations, {args.steps} adaptation steps and test episodes ({args.episodes} per "
        f"task, paired by seed) for both starts; training seeds {args.seeds}, pooled. Measured "
        f"{date.today().isoformat()} on {platform.processor() or platform.machine()} "
        f"({os.cpu_count()} cores), `{' '.join(sys.argv[1:]) or '(defaults)'}`.",
        "",
        "| demos per task | pretrained | scratch | difference [95% CI] | McNemar p | "
        + " | ".join(f"{t}: pretrained / scratch" for t in tasks(args))
        + " |",
        "| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in tasks(args)) + " |",
    ]
    for cell in cells:
        pooled = cell["all"]
        n = pooled["episodes"]
        won_a = pooled["both"] + pooled["only_a"]
        won_b = pooled["both"] + pooled["only_b"]
        low, high = pooled["difference_ci95"]
        per_task = " | ".join(
            f"{percent(r['success_a'])} / {percent(r['success_b'])}" for r in cell["tasks"].values()
        )
        lines.append(
            f"| {cell['demos']} | {percent(pooled['success_a'])} {interval(won_a, n)} | "
            f"{percent(pooled['success_b'])} {interval(won_b, n)} | "
            f"{100 * pooled['difference']:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | "
            f"{pooled['p_value']:.2g} | {per_task} |"
        )
    lines += ["", "Commands:", "", "```bash"]
    if args.holdout or args.play:
        lines.append(" ".join(pretrain_command(args)))
    for demos in args.demos:
        for start in STARTS:
            lines.append(" ".join(adapt_command(args, demos, start, args.seeds[0])))
    lines += ["```", ""]
    if timings:
        lines.append("Wall time of each run (minutes, with the load it ran under unrecorded):")
        lines.append("")
        lines += [f"- {name}: {seconds / 60:.1f}" for name, seconds in timings.items()]
        lines.append("")
    text = "\n".join(lines)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.report, text)
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    timings_file = args.out_dir / variant(args) / "timings.json"
    timings = json.loads(timings_file.read_text()) if timings_file.is_file() else {}
    if not args.report_only:
        from fmmm.utils.io import atomic_write_json

        source = pretrained_source(args)
        if (args.holdout or args.play) and not (source / "summary.json").is_file():
            timings["pretrain"] = run_logged(pretrain_command(args), source)
        elif not source.exists():
            raise SystemExit(f"--pretrained {source} does not exist")
        for demos in args.demos:
            for seed in args.seeds:
                for start in STARTS:
                    out = run_dir(args, demos, start, seed)
                    if not (out / "summary.json").is_file():
                        timings[out.name] = run_logged(adapt_command(args, demos, start, seed), out)
                        timings_file.parent.mkdir(parents=True, exist_ok=True)
                        atomic_write_json(timings_file, timings)
    cells = [cell_report(args, demos, args.seeds) for demos in args.demos]
    print(write_report(args, cells, timings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
