"""`python -m fmmm.collect --task T --episodes N --out DIR`: scripted demonstrations to a dataset.

Attempt `i` runs the task's scripted expert from `episode_seed(task, seed, i, "train")` (a seed
stream disjoint from evaluation's). The dataset holds the first N kept attempts in attempt order
(by default only successful ones), so the result does not depend on the number of workers. Each
finished attempt is written atomically to DIR/.staging; an interrupted run re-run with the same
arguments only runs the missing attempts. Finally the kept episodes are numbered 0..N-1 into
DIR/data and the metadata (info.json last) is written; see docs/datasets.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fmmm.datasets import robot
from fmmm.utils.cli import run_main
from fmmm.utils.io import atomic_dir, atomic_write_json, check_output_dir

_worker: dict[str, Any] = {}


class NoisyExpert:
    """DART (Laskey et al. 2017): executes the expert's action plus Gaussian noise, labels the clean one.

    The noise pushes the arm off the expert's own path, so the demonstrations also show how the
    expert recovers from the states a learned policy drifts into; `label` is the expert's action
    for the last observation, which is what the dataset records. The translation components get
    noise of standard deviation `std` (actions are in [-1, 1]); rotation and gripper none.
    """

    def __init__(self, expert: Any, std: float):
        self.expert, self.std = expert, std
        self.rng = np.random.default_rng(0)
        self.label: np.ndarray | None = None

    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        self.expert.reset()

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        self.label = np.asarray(self.expert.act(observation), dtype=np.float32)
        noisy = self.label.copy()
        noisy[:3] += self.rng.normal(0.0, self.std, size=3)
        return np.clip(noisy, -1.0, 1.0).astype(np.float32)


def _init_worker(
    task: str, base_seed: int, staging: str, keep_failures: bool, noise: float = 0.0
) -> None:
    import fmmm.envs
    from fmmm.eval.rollout import limit_worker_threads
    from fmmm.policies.factory import load_policy

    limit_worker_threads()
    env = fmmm.envs.make_env(task)
    expert = load_policy("scripted")(env)
    _worker.clear()
    _worker.update(
        task=task,
        base_seed=base_seed,
        staging=Path(staging),
        keep_failures=keep_failures,
        env=env,
        expert=NoisyExpert(expert, noise) if noise else expert,
    )


def _attempt(index: int) -> dict[str, Any]:
    """Run attempt `index`, stage its episode when kept, and return its summary (also staged)."""
    from fmmm.envs.seeds import episode_seed
    from fmmm.eval.rollout import run_episode

    task, base_seed = _worker["task"], _worker["base_seed"]
    columns: dict[str, list] = {
        "observation.images.agentview": [],
        "observation.images.wrist": [],
        "observation.state": [],
        "action": [],
        "next.success": [],
    }

    def on_step(observation: dict[str, Any], action: np.ndarray, info: dict[str, Any]) -> None:
        columns["observation.images.agentview"].append(observation["agentview"])
        columns["observation.images.wrist"].append(observation["wrist"])
        columns["observation.state"].append(np.asarray(observation["state"], dtype=np.float32))
        label = getattr(_worker["expert"], "label", None)
        columns["action"].append(action if label is None else label)
        columns["next.success"].append(bool(info.get("is_success", False)))

    seed = episode_seed(task, base_seed, index, "train")
    policy_seed = episode_seed(task, base_seed, index, "policy")
    result = run_episode(_worker["env"], _worker["expert"], seed, policy_seed, on_step=on_step)
    summary = {
        "attempt": index,
        "seed": seed,
        "instruction": result["instruction"],
        "scene": result["scene"],
        "success": result["success"],
        "success_end": result["success_end"],
        "length": result["length"],
        "kept": result["success"] or _worker["keep_failures"],
    }
    staging = _worker["staging"]
    if summary["kept"]:
        length = result["length"]
        episode = {name: np.stack(values) for name, values in columns.items()}
        episode["next.done"] = np.arange(length) == length - 1
        robot.write_episode(staging / f"attempt_{index:06d}.parquet", episode)
    atomic_write_json(staging / f"attempt_{index:06d}.json", summary)
    return summary


def _selected(done: dict[int, dict[str, Any]], episodes: int) -> list[dict[str, Any]] | None:
    """The first `episodes` kept attempts, once every attempt before the last of them is done."""
    selected = []
    index = 0
    while index in done and len(selected) < episodes:
        if done[index]["kept"]:
            selected.append(done[index])
        index += 1
    return selected if len(selected) == episodes else None


def _finish(out: Path, staging: Path, selected: list[dict[str, Any]], run: dict[str, Any]) -> dict:
    """Number the selected episodes 0..N-1 into out/data and write the metadata."""
    import fmmm

    tasks = list(dict.fromkeys(summary["instruction"] for summary in selected))

    def episodes() -> Iterator[tuple[robot.Episode, dict[str, Any]]]:
        for summary in selected:
            episode = robot.read_episode(staging / f"attempt_{summary['attempt']:06d}.parquet")
            frame_index = np.arange(summary["length"], dtype=np.int64)
            episode["timestamp"] = (frame_index / run["fps"]).astype(np.float32)
            episode["frame_index"] = frame_index
            episode["task_index"] = np.full_like(frame_index, tasks.index(summary["instruction"]))
            row = {k: summary[k] for k in ("length", "success", "seed", "attempt", "scene")}
            yield episode, {"tasks": [summary["instruction"]], **row}

    collection = {
        k: run[k] for k in ("task", "seed", "keep_failures", "policy", "noise") if k in run
    }
    return robot.write_dataset(
        out,
        run["fps"],
        episodes(),
        tasks,
        names=run["names"],
        fmmm_version=fmmm.__version__,
        mujoco_version=run["fingerprint"]["mujoco_version"],
        scene_sha256=run["fingerprint"]["scene_sha256"],
        env=run["fingerprint"],
        collection=collection | {"seed_split": "train", "attempts": selected[-1]["attempt"] + 1},
    )


def _staged_run(out: Path, wanted: dict[str, Any]) -> dict[str, Any]:
    """The run's settings and env fingerprint; refuses a staged run made with other ones."""
    import fmmm.envs
    from fmmm.eval.rollout import env_fingerprint

    env = fmmm.envs.make_env(wanted["task"])
    run = {**wanted, "fps": env.metadata["render_fps"], "fingerprint": env_fingerprint(env)}
    run["names"] = getattr(env.unwrapped, "feature_names", {})  # an env may name no dimensions
    run = json.loads(json.dumps(run))  # compared with the staged copy read back from JSON
    env.close()
    run_file = out / ".staging" / "run.json"
    if not run_file.exists():
        atomic_write_json(run_file, run)
        return run
    try:
        staged_run = json.loads(run_file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"corrupt {run_file}: {exc}") from None
    if staged_run != run:
        fingerprint = run["fingerprint"]
        differ = [k for k in run if k != "fingerprint" and staged_run.get(k) != run[k]]
        differ += [
            k for k in fingerprint if staged_run.get("fingerprint", {}).get(k) != fingerprint[k]
        ]
        raise ValueError(
            f"{out} holds an unfinished collection with other settings "
            f"({', '.join(differ)} differ; see {run_file})"
        )
    return run


def _staged_attempts(staging: Path) -> dict[int, dict[str, Any]]:
    """Summaries of the attempts finished by earlier runs (a kept one with its episode file)."""
    summaries = [json.loads(path.read_text()) for path in staging.glob("attempt_*.json")]
    return {
        s["attempt"]: s
        for s in summaries
        if not s["kept"] or (staging / f"attempt_{s['attempt']:06d}.parquet").exists()
    }


def collect(
    task: str,
    episodes: int,
    out: str | Path,
    seed: int = 0,
    workers: int = 1,
    keep_failures: bool = False,
    max_attempts: int | None = None,
    progress: bool = True,
    noise: float = 0.0,
) -> dict[str, Any]:
    """Record `episodes` scripted demonstrations of `task` into dataset folder `out`; returns info.

    `noise` > 0 executes the expert's actions with Gaussian noise of that standard deviation and
    records the expert's clean actions (DART, see `NoisyExpert`). A suite (`metaworld:mt10`,
    `all`) or a comma-separated list records `episodes` of each task (`collect_suite`).
    """
    import fmmm.envs
    from fmmm.eval.rollout import parallel_map
    from fmmm.utils.progress import progress as progress_bar

    if episodes <= 0:
        raise ValueError(f"--episodes must be positive, got {episodes}")
    if workers <= 0:
        raise ValueError(f"--workers must be positive, got {workers}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"--noise must be in [0, 1], got {noise}")
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"--max-attempts must be positive, got {max_attempts}")
    tasks = fmmm.envs.expand_tasks(task)
    if tasks != [task]:
        return collect_suite(
            task, episodes, out, seed, workers, keep_failures, max_attempts, progress, noise
        )
    if max_attempts is None:
        max_attempts = 2 * episodes + 20
    out = Path(out)
    wanted = {"task": task, "seed": seed, "keep_failures": keep_failures, "policy": "scripted"}
    if noise:
        wanted["noise"] = noise
    if (out / "meta" / "info.json").exists():
        info = robot.RobotDataset(out).info
        done_run = {k: v for k, v in info.get("collection", {}).items() if k in wanted}
        if done_run == wanted and info["total_episodes"] == episodes:
            return info
        raise ValueError(
            f"{out} already holds a finished dataset with other settings; pick another --out "
            "(or pass --overwrite to replace it)"
        )
    staging = out / ".staging"
    run = _staged_run(out, wanted)
    done = _staged_attempts(staging)
    initargs = (task, seed, str(staging), keep_failures, noise)
    bar = progress_bar(total=episodes, desc=f"collect {task}", unit="ep", disable=not progress)
    while (selected := _selected(done, episodes)) is None:
        kept = sum(s["kept"] for s in done.values())
        bar.update(min(kept, episodes) - bar.n)
        todo = [i for i in range(max_attempts) if i not in done][: max(episodes - kept, workers)]
        if not todo:
            raise ValueError(f"the expert kept only {kept} of {max_attempts} attempts on {task!r}")
        for summary in parallel_map(
            _attempt, todo, min(workers, len(todo)), _init_worker, initargs
        ):
            done[summary["attempt"]] = summary
            bar.update(min(sum(s["kept"] for s in done.values()), episodes) - bar.n)
            bar.set_postfix(attempts=len(done), refresh=False)
    bar.close()
    info = _finish(out, staging, selected, run)
    shutil.rmtree(staging)
    return info


def collect_suite(
    suite: str,
    episodes: int,
    out: str | Path,
    seed: int = 0,
    workers: int = 1,
    keep_failures: bool = False,
    max_attempts: int | None = None,
    progress: bool = True,
    noise: float = 0.0,
) -> dict[str, Any]:
    """Record `episodes` demonstrations of each task of `suite` into one dataset folder `out`.

    Each task is collected on its own (resumable, as `collect`) into out/.tasks/<task>; then their
    episodes are numbered task after task into `out`, each under its own instruction.
    """
    import hashlib

    import fmmm
    import fmmm.envs

    tasks = fmmm.envs.expand_tasks(suite)
    out = Path(out)
    wanted = {"task": suite, "seed": seed, "keep_failures": keep_failures, "policy": "scripted"}
    if noise:
        wanted["noise"] = noise
    if (out / "meta" / "info.json").exists():
        info = robot.RobotDataset(out).info
        done_run = {k: v for k, v in info.get("collection", {}).items() if k in wanted}
        if done_run == wanted and info["total_episodes"] == episodes * len(tasks):
            return info
        raise ValueError(
            f"{out} already holds a finished dataset with other settings; pick another --out "
            "(or pass --overwrite to replace it)"
        )
    parts = []
    for task in tasks:
        part = out / ".tasks" / task.replace(":", "_")
        collect(task, episodes, part, seed, workers, keep_failures, max_attempts, progress, noise)
        parts.append(robot.RobotDataset(part))
    first = parts[0].info
    for task, part in zip(tasks, parts):
        if part.fps != first["fps"] or part.features != first["features"]:
            raise ValueError(
                f"{task} records other frame rates or features than {tasks[0]}; "
                "one dataset holds tasks of one kind of env"
            )
    instructions = list(dict.fromkeys(text for part in parts for text in part.tasks))

    def episodes_of_all() -> Iterator[tuple[robot.Episode, dict[str, Any]]]:
        for task, part in zip(tasks, parts):
            for index in range(part.num_episodes):
                episode = dict(part.episode(index))
                text_index = instructions.index(part.instruction(index))
                episode["task_index"] = np.full_like(episode["task_index"], text_index)
                row = {k: v for k, v in part.episodes[index].items() if k != "episode_index"}
                yield episode, {**row, "env_task": task}

    names = {k: spec["names"] for k, spec in first["features"].items() if "names" in spec}
    scenes = "".join(part.info["scene_sha256"] for part in parts)
    attempts = {task: part.info["collection"]["attempts"] for task, part in zip(tasks, parts)}
    info = robot.write_dataset(
        out,
        first["fps"],
        episodes_of_all(),
        instructions,
        names=names,
        fmmm_version=fmmm.__version__,
        mujoco_version=first["mujoco_version"],
        scene_sha256=hashlib.sha256(scenes.encode()).hexdigest(),  # of the tasks' scene hashes
        env={task: part.info["env"] for task, part in zip(tasks, parts)},
        collection=wanted
        | {
            "tasks": tasks,
            "episodes_per_task": episodes,
            "seed_split": "train",
            "attempts": sum(attempts.values()),
            "attempts_per_task": attempts,
        },
    )
    shutil.rmtree(out / ".tasks")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fmmm.collect", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--task",
        required=True,
        help="task name, suite (all, metaworld:mt10) or comma list (see fmmm.envs.expand_tasks)",
    )
    parser.add_argument(
        "--episodes", type=int, required=True, help="episodes in the dataset (of each task)"
    )
    parser.add_argument("--out", type=Path, required=True, help="dataset folder")
    parser.add_argument("--seed", type=int, default=0, help="base seed (training seed stream)")
    parser.add_argument("--workers", type=int, default=1, help="parallel worker processes")
    parser.add_argument("--keep-failures", action="store_true", help="keep failed attempts too")
    parser.add_argument("--max-attempts", type=int, default=None, help="default 2N + 20")
    parser.add_argument(
        "--noise", type=float, default=0.0, help="DART action noise std (clean actions recorded)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty --out (in one rename, once the new dataset is complete)",
    )
    args = parser.parse_args(argv)
    return run_main(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    # an earlier collection (finished, or staged to resume) is this command's own folder
    own = (".staging", ".tasks", "meta/info.json")
    out = check_output_dir(args.out, overwrite=args.overwrite, own_markers=own)
    settings = (args.seed, args.workers, args.keep_failures, args.max_attempts)
    if args.overwrite and out.is_dir() and any(out.iterdir()):
        with atomic_dir(out) as tmp:
            info = collect(args.task, args.episodes, tmp, *settings, noise=args.noise)
    else:
        info = collect(args.task, args.episodes, out, *settings, noise=args.noise)
    attempts = info["collection"]["attempts"]
    print(
        f"{args.out}: {info['total_episodes']} episodes, {info['total_frames']} frames "
        f"({attempts} attempts)"
    )


if __name__ == "__main__":
    sys.exit(main())
