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
from fmmm.data.shards import Sample, ShardError


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
        error = ShardError(root, 0, str(exc))
        if on_error is None:
            raise error from None
        on_error(error)
        return
    for index in range(dataset.num_episodes):
        try:
            arrays = robot.read_episode(
                robot.episode_path(root, index), columns=[robot.STATE_KEY, robot.ACTION_KEY]
            )
        except (ValueError, KeyError) as exc:
            error = ShardError(root, index, f"episode {index}: {exc}")
            if on_error is None:
                raise error from None
            on_error(error)
            continue
        yield {
            "key": f"episode_{index:06d}",
            "modality": "episode",
            "text": dataset.instruction(index),
            "state": arrays[robot.STATE_KEY],
            "action": arrays[robot.ACTION_KEY],
            "json": dataset.episodes[index],
            "image": None,
            "audio": None,
            "video": None,
            "ext": {},
            "source": str(root),
            "position": index,
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

    dataset = robot.RobotDataset(source)
    with atomic_dir(destination) as out:
        tasks: list[str] = []
        rows: list[dict[str, Any]] = []
        samples = []
        offset = 0
        for new_index, old_index in enumerate(keep):
            episode = dict(robot.read_episode(robot.episode_path(source, old_index)))
            length = len(episode[robot.ACTION_KEY])
            instruction = dataset.instruction(old_index)
            if instruction not in tasks:
                tasks.append(instruction)
            episode["episode_index"] = np.full(length, new_index, dtype=np.int64)
            episode["index"] = np.arange(length, dtype=np.int64) + offset
            episode["task_index"] = np.full(length, tasks.index(instruction), dtype=np.int64)
            robot.write_episode(robot.episode_path(out, new_index), episode)
            samples.append(robot.stats_sample(episode))
            rows.append(dataset.episodes[old_index] | {"episode_index": new_index})
            offset += length
        if not rows:
            raise ValueError(f"no episodes of {source} are left to write")
        info = dict(dataset.info)
        info.update(
            total_episodes=len(rows),
            total_frames=offset,
            total_tasks=len(tasks),
            splits={"train": f"0:{len(rows)}"},
            curated_from=str(source),
        )
        robot.write_metadata(out, info, rows, tasks, robot.compute_stats(samples))


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
