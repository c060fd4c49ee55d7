import json
from pathlib import Path

import numpy as np
import pytest

from fmmm.datasets import robot


def _synthetic_episode(length: int, episode_index: int, offset: int) -> robot.Episode:
    rng = np.random.default_rng(episode_index)
    frames = np.arange(length, dtype=np.int64)
    return {
        "observation.images.agentview": rng.integers(0, 256, (length, 8, 6, 3), dtype=np.uint8),
        "observation.state": rng.normal(size=(length, 5)).astype(np.float32),
        "action": rng.uniform(-1, 1, (length, 7)).astype(np.float32),
        "next.success": frames == length - 1,
        "timestamp": (frames / 10).astype(np.float32),
        "frame_index": frames,
        "episode_index": np.full(length, episode_index, dtype=np.int64),
        "index": frames + offset,
        "task_index": np.zeros(length, dtype=np.int64),
    }


def _write_synthetic(root: Path, lengths: list[int]) -> list[robot.Episode]:
    episodes, rows, offset = [], [], 0
    for index, length in enumerate(lengths):
        episode = _synthetic_episode(length, index, offset)
        robot.write_episode(robot.episode_path(root, index), episode)
        episodes.append(episode)
        rows.append({"episode_index": index, "tasks": [f"task {index % 2}"], "length": length})
        offset += length
    info = {
        "format": robot.FORMAT_VERSION,
        "fps": 10,
        "features": robot.feature_spec(episodes[0]),
        "total_episodes": len(lengths),
        "total_frames": offset,
    }
    stats = robot.compute_stats([robot.stats_sample(e) for e in episodes])
    robot.write_metadata(root, info, rows, ["task 0", "task 1"], stats)
    return episodes


def test_episode_file_round_trip_keeps_values_shapes_and_dtypes(tmp_path):
    episode = _synthetic_episode(7, 0, 0)
    robot.write_episode(tmp_path / "e.parquet", episode)
    back = robot.read_episode(tmp_path / "e.parquet")
    assert list(back) == list(episode)
    for name, values in episode.items():
        assert back[name].dtype == values.dtype, name
        np.testing.assert_array_equal(back[name], values, err_msg=name)


def test_random_access_matches_the_frame_stream(tmp_path):
    episodes = _write_synthetic(tmp_path, [4, 6, 3])
    dataset = robot.RobotDataset(tmp_path, cache_episodes=1)
    assert len(dataset) == 13 and dataset.num_episodes == 3
    assert dataset.camera_keys == ["observation.images.agentview"]
    streamed = list(dataset)
    assert len(streamed) == 13
    for index in [12, 0, 5, 4, 9]:
        item = dataset[index]
        for name in episodes[0]:
            np.testing.assert_array_equal(item[name], streamed[index][name])
        assert item["index"] == index
        assert item["instruction"] == f"task {item['episode_index'] % 2}"
    assert dataset.locate(4) == (1, 0)
    only_last = list(dataset.iter_frames([2]))
    np.testing.assert_array_equal(only_last[0]["action"], episodes[2]["action"][0])
    with pytest.raises(IndexError):
        dataset[13]


def test_stats_hold_mean_std_min_max_and_quantiles_per_dimension(tmp_path):
    episodes = _write_synthetic(tmp_path, [50, 30])
    stats = robot.RobotDataset(tmp_path).stats
    actions = np.concatenate([e["action"] for e in episodes])
    np.testing.assert_allclose(stats["action"]["mean"], actions.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], actions.std(0), rtol=1e-4)
    np.testing.assert_allclose(stats["action"]["min"], actions.min(0))
    np.testing.assert_allclose(
        stats["action"]["q99"], np.quantile(actions, 0.99, axis=0), rtol=1e-5
    )
    image = np.asarray(stats["observation.images.agentview"]["mean"])
    assert image.shape == (3, 1, 1) and np.all((0 <= image) & (image <= 1))


@pytest.mark.parametrize("broken", ["info.json", "episodes.jsonl", "missing"])
def test_corrupt_metadata_raises_one_line_value_error(tmp_path, broken):
    _write_synthetic(tmp_path, [3])
    if broken == "missing":
        (tmp_path / "meta" / "stats.json").unlink()
    else:
        (tmp_path / "meta" / broken).write_text("{not json")
    with pytest.raises(ValueError) as error:
        robot.RobotDataset(tmp_path)
    assert "\n" not in str(error.value) and "meta" in str(error.value)


def test_totals_that_disagree_with_the_episodes_are_rejected(tmp_path):
    _write_synthetic(tmp_path, [3, 4])
    info_path = tmp_path / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["total_frames"] = 99
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="total_frames"):
        robot.RobotDataset(tmp_path)


def test_missing_episode_file_is_named(tmp_path):
    _write_synthetic(tmp_path, [3, 4])
    robot.episode_path(tmp_path, 1).unlink()
    with pytest.raises(ValueError, match="episode_000001.parquet"):
        robot.RobotDataset(tmp_path).episode(1)
