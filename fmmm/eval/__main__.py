"""`python -m fmmm.eval --policy {scripted,random,PATH} --task NAME|all --episodes N ...`"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fmmm.eval", description=__doc__)
    parser.add_argument("--policy", required=True, help="scripted, random, or a run directory")
    parser.add_argument(
        "--task", default="all", help="task name, 'all', a suite (metaworld:mt10) or a comma list"
    )
    parser.add_argument("--episodes", type=int, default=50, help="episodes per task")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the evaluation episodes")
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for results.json, eval_info.json, videos"
    )
    parser.add_argument("--video", action="store_true", help="write one mp4 per episode to --out")
    parser.add_argument("--num-envs", type=int, default=1, help="parallel environments (processes)")
    parser.add_argument("--instruction", default=None, help="override the task instruction")
    parser.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local processes, or Ray actors (pip install -e '.[ray]') sharing the --num-envs",
    )
    parser.add_argument(
        "--ray-address", default="", help="--executor ray: an existing cluster; empty: start one"
    )
    parser.add_argument(
        "--envs-per-actor", type=int, default=8, help="--executor ray: envs (one model) per actor"
    )
    args = parser.parse_args(argv)

    from fmmm.eval.lerobot_format import eval_info
    from fmmm.eval.rollout import evaluate, format_table
    from fmmm.utils.io import atomic_write_json

    try:
        import fmmm.envs

        if args.video and args.out is None:
            raise ValueError("--video needs --out")
        if args.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {args.seed}")
        tasks = fmmm.envs.expand_tasks(args.task)
        video_dir = args.out / "videos" if args.video else None
        results = evaluate(
            args.policy,
            tasks,
            args.episodes,
            args.seed,
            args.num_envs,
            video_dir,
            args.instruction,
            executor=args.executor,
            ray_address=args.ray_address,
            envs_per_actor=args.envs_per_actor,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(results))
    if args.out is not None:
        atomic_write_json(args.out / "results.json", results)
        # the same evaluation in LeRobot's layout, for scripts written against lerobot-eval
        atomic_write_json(args.out / "eval_info.json", eval_info(results, video_dir))
        print(f"wrote {args.out / 'results.json'} and eval_info.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
