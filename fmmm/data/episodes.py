"""Robot episodes as curation items: read from an fmmm robot dataset, hashed, and subset.

An episode item is a sample dict with modality "episode": `text` is its instruction, `state`
and `action` its (T, S) / (T, A) arrays, `position` its episode index in the dataset.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fmmm.data.minhash import content_hash, normalize_text
from fmmm.data.shards import Sample, ShardError, make_sample, report_error


def is_robot_dataset(path: str | os.PathLike) -> bool:
    """True for a folder holding an fmmm robot dataset (meta/info.json)."""
    return (Path(path) / "meta" / "info.json").is_file()


def iter_episodes(
    root: str | os.PathLike, on_error: Callable[[ShardError], None] | None = None
) -> Iterator[Sample]:
    """Yield the episodes of a robot dataset (state, action, instruction) in index order."""
    from fmmm.datasets import robot

    try:
        dataset = robot.RobotDataset(root)
    except ValueError as exc:
        report_error(ShardError(root, 0, str(exc)), on_error)
        return
    for index in range(dataset.num_episodes):
        try:
            arrays = robot.read_episode(
                robot.episode_path(root, index), columns=[robot.STATE_KEY, robot.ACTION_KEY]
            )
        except (ValueError, KeyError) as exc:
            report_error(ShardError(root, index, f"episode {index}: {exc}"), on_error)
            continue
        key, text, row = f"episode_{index:06d}", dataset.instruction(index), dataset.episodes[index]
        yield make_sample(key, text, json_meta=row, source=root, position=index) | {
            "modality": "episode",
            "state": arrays[robot.STATE_KEY],
            "action": arrays[robot.ACTION_KEY],
        }


def resample(trajectory: np.ndarray, points: int) -> np.ndarray:
    """Linearly resample a (T, D) trajectory to (points, D) over normalised time."""
    trajectory = np.asarray(trajectory, dtype=np.float64).reshape(len(trajectory), -1)
    if len(trajectory) == 0:
        return np.zeros((points, trajectory.shape[1]))
    source = np.linspace(0.0, 1.0, len(trajectory))
    target = np.linspace(0.0, 1.0, points)
    return np.stack(
        [np.interp(target, source, trajectory[:, d]) for d in range(trajectory.shape[1])], axis=1
    )


def episode_hash(sample: Sample, points: int = 32, decimals: int = 2) -> int:
    """Hash of the down-sampled, rounded state and action trajectories plus the instruction."""
    parts = [normalize_text(sample["text"] or "").encode("utf-8")]
    for name in ("state", "action"):
        rounded = np.round(resample(sample[name], points), decimals) + 0.0  # no negative zeros
        parts.append(rounded.astype(np.float64).tobytes())
    return content_hash(b"\0".join(parts))


def write_episode_subset(
    source: str | os.PathLike, destination: str | os.PathLike, keep: list[int]
) -> None:
    """Write the episodes `keep` of dataset `source` as a new dataset, renumbered 0..N-1."""
    from fmmm.datasets import robot
    from fmmm.utils.io import atomic_dir

    if not keep:
        raise ValueError(f"no episodes of {source} are left to write")
    dataset = robot.RobotDataset(source)
    tasks = list(dict.fromkeys(dataset.instruction(index) for index in keep))

    def episodes() -> Iterator[tuple[robot.Episode, dict[str, Any]]]:
        for index in keep:
            episode = robot.read_episode(robot.episode_path(source, index))
            task_index = tasks.index(dataset.instruction(index))
            length = dataset.episodes[index]["length"]
            episode["task_index"] = np.full(length, task_index, dtype=np.int64)
            yield episode, dataset.episodes[index]

    # the source's provenance carries over; the totals, features and layout are the subset's own
    layout = robot.dataset_info(dataset.fps, {}, [], 0, [])
    provenance = {k: v for k, v in dataset.info.items() if k not in layout}
    with atomic_dir(destination) as out:
        robot.write_dataset(
            out, dataset.fps, episodes(), tasks, **provenance | {"curated_from": str(source)}
        )


def sim_eval_episodes(spec: str) -> list[dict[str, Any]]:
    """Instructions and initial states of the simulation suite's evaluation episodes.

    `spec` is `sim:TASK:EPISODES[:BASE_SEED]`, the same episodes `python -m fmmm.eval` runs.
    """
    parts = spec.split(":")
    if len(parts) not in (3, 4) or parts[0] != "sim" or not parts[2].isdigit():
        raise ValueError(f"simulation eval set must be sim:TASK:EPISODES[:SEED], got {spec!r}")
    task, episodes = parts[1], int(parts[2])
    base_seed = int(parts[3]) if len(parts) == 4 else 0
    from fmmm.envs import make_env
    from fmmm.envs.seeds import episode_seed

    env = make_env(task, render=False)
    try:
        items = []
        for index in range(episodes):
            seed = episode_seed(task, base_seed, index, "eval")
            observation, _ = env.reset(seed=seed)
            items.append(
                {
                    "id": f"{task}:{index}",
                    "instruction": observation["instruction"],
                    "initial_state": np.asarray(observation["state"], dtype=np.float64),
                }
            )
        return items
    finally:
        env.close()
