"""`python -m fmmm.eval --policy {scripted,random,PATH} --task NAME|all --episodes N ...`

`--compare RUN_A RUN_B` runs both policies on the same episodes and reports per task the
difference in success with its 95% interval and an exact McNemar test. `--wording unseen` tells
every episode an instruction worded as never in training; `--wording both` runs the same episodes
with the task templates and with unseen wordings and reports the loss the same way. Episodes come
from the test split unless `--split val` (for choosing checkpoints and settings). Every run states
its control rate: actions per second at batch 1 after warm-up, with the chunk size and forward
passes per action when the policy gives them (docs/eval.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fmmm.utils.cli import run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fmmm.eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    policies = parser.add_mutually_exclusive_group(required=True)
    policies.add_argument("--policy", help="scripted, random, or a run directory")
    policies.add_argument(
        "--compare",
        nargs=2,
        metavar=("RUN_A", "RUN_B"),
        help="paired comparison of two policies (scripted, random or run directories) on the same "
        "episodes; --out gets compare.json",
    )
    parser.add_argument(
        "--policy-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="replace a value of the run's policy.json for this evaluation, e.g. flow_steps=7 "
        "(Euler steps of the flow head) or execute=2 (actions executed per chunk); repeatable",
    )
    parser.add_argument(
        "--split",
        choices=["test", "val"],
        default="test",
        help="episode seeds: test (reported numbers) or val (choosing checkpoints and settings); "
        "disjoint from each other and from the training seeds",
    )
    parser.add_argument(
        "--task", default="all", help="task name, 'all', a suite (metaworld:mt10) or a comma list"
    )
    parser.add_argument("--episodes", type=int, default=50, help="episodes per task")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the evaluation episodes")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for results.json, eval_info.json, videos"
    )
    parser.add_argument("--video", action="store_true", help="write one mp4 per episode to --out")
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a non-empty --out folder"
    )
    parser.add_argument(
        "--num-envs",
        type=int,
        default=1,
        help="envs stepped in lockstep by one policy copy (batched inference when the policy "
        "has act_batch); results do not depend on it",
    )
    parser.add_argument(
        "--instruction",
        default=None,
        help="replace the task instruction; {object} and {target} are filled per episode from "
        "what it names, e.g. 'put the {object} on the {target}'",
    )
    parser.add_argument(
        "--wording",
        choices=["templates", "unseen", "both"],
        default="templates",
        help="templates: the task instructions; unseen: each episode a paraphrase and/or object "
        "description by synonym or attribute never seen in training, chosen from its seed; both: "
        "the same episodes with each, paired (--out gets language.json)",
    )
    parser.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="this process, or Ray actors (pip install -e '.[ray]') sharing the --num-envs",
    )
    parser.add_argument(
        "--ray-address", default="", help="--executor ray: an existing cluster; empty: start one"
    )
    parser.add_argument(
        "--envs-per-actor", type=int, default=8, help="--executor ray: envs (one model) per actor"
    )
    args = parser.parse_args(argv)
    return run_main(lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    import fmmm.envs
    from fmmm.eval.compare import (
        compare,
        compare_wordings,
        format_comparison,
        format_wording_comparison,
    )
    from fmmm.eval.lerobot_format import eval_info
    from fmmm.eval.rollout import evaluate, format_table
    from fmmm.utils.io import atomic_write_json, check_output_dir

    if args.instruction is not None and args.wording != "templates":
        raise ValueError(f"--instruction and --wording {args.wording} do not go together")
    if args.wording == "both" and (args.compare or args.video):
        raise ValueError("--wording both goes with --policy alone, not --compare or --video")
    if args.out is not None:  # before the evaluation, not after it
        check_output_dir(args.out, overwrite=args.overwrite)
    if args.video and args.out is None:
        raise ValueError("--video needs --out")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    tasks = fmmm.envs.expand_tasks(args.task)
    options = policy_options(args.policy_option)
    video_dir = args.out / "videos" if args.video else None
    run_args = dict(
        base_seed=args.seed,
        num_envs=args.num_envs,
        instruction=args.instruction,
        executor=args.executor,
        ray_address=args.ray_address,
        envs_per_actor=args.envs_per_actor,
        split=args.split,
        policy_options=options,
    )
    if args.compare:
        if args.video:
            raise ValueError("--video does not go with --compare")
        comparison = compare(*args.compare, tasks, args.episodes, wording=args.wording, **run_args)
        print(format_comparison(comparison))
        if args.out is not None:
            atomic_write_json(args.out / "compare.json", comparison)
            print(f"wrote {args.out / 'compare.json'}")
        return 0
    if args.wording == "both":
        comparison = compare_wordings(args.policy, tasks, args.episodes, **run_args)
        print(format_wording_comparison(comparison))
        if args.out is not None:
            atomic_write_json(args.out / "language.json", comparison)
            print(f"wrote {args.out / 'language.json'}")
        return 0
    results = evaluate(
        args.policy, tasks, args.episodes, video_dir=video_dir, wording=args.wording, **run_args
    )
    print(format_table(results))
    if args.out is not None:
        atomic_write_json(args.out / "results.json", results)
        # the same evaluation in LeRobot's layout, for scripts written against lerobot-eval
        atomic_write_json(args.out / "eval_info.json", eval_info(results, video_dir))
        print(f"wrote {args.out / 'results.json'} and eval_info.json")
    return 0


def policy_options(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings as a dict; values read as JSON (7, 0.5, true) or else kept as text."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--policy-option must be KEY=VALUE, got {pair!r}")
        try:
            options[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            options[key.strip()] = text
    return options


if __name__ == "__main__":
    sys.exit(main())
