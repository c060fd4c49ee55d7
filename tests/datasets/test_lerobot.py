import io
import json
import subprocess
import sys

import numpy as np
import pytest

from fmmm.datasets.lerobot import export_lerobot, import_lerobot
from fmmm.datasets.robot import RobotDataset

# H.264 yuv420p at CRF 23 on 64x64 renders: about 3 levels mean error; chroma subsampling costs
# more on the edges of small coloured objects
MEAN_PIXEL_ERROR = 5.0
P99_PIXEL_ERROR = 48


def assert_same_dataset(original: RobotDataset, back: RobotDataset) -> None:
    """Low-dim columns, episode rows, tasks and names exact; camera frames within the codec's error."""
    assert back.num_episodes == original.num_episodes and len(back) == len(original)
    assert back.tasks == original.tasks
    assert back.episodes == original.episodes
    assert back.info["scene_sha256"] == original.info["scene_sha256"]
    for name in ("observation.state", "action"):
        assert back.features[name]["names"] == original.features[name]["names"], name
    for index in range(original.num_episodes):
        a, b = original.episode(index), back.episode(index)
        assert set(a) == set(b)
        for name in a:
            if name in original.camera_keys:
                error = np.abs(a[name].astype(int) - b[name].astype(int))
                assert error.mean() < MEAN_PIXEL_ERROR, (name, error.mean())
                assert np.percentile(error, 99) <= P99_PIXEL_ERROR, name
            else:
                assert a[name].dtype == b[name].dtype, name
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_v30_export_then_import_round_trips_across_many_files(demo_dataset, tmp_path):
    # tiny size limits: every data file and most video files hold one episode
    exported = export_lerobot(
        demo_dataset, tmp_path / "v30", data_files_size_in_mb=0.001, video_files_size_in_mb=0.02
    )
    info = json.loads((exported / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10 and isinstance(info["fps"], int)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["features"]["observation.state"]["names"][:2] == ["joint1", "joint2"]
    video_info = info["features"]["observation.images.wrist"]["info"]
    assert (video_info["video.codec"], video_info["video.pix_fmt"]) == ("h264", "yuv420p")
    assert len(list((exported / "data").glob("chunk-000/file-*.parquet"))) > 1
    assert len(list((exported / "videos" / "observation.images.wrist").rglob("*.mp4"))) > 1
    assert not (exported / ".parts").exists()
    stats = json.loads((exported / "meta" / "stats.json").read_text())
    assert {"mean", "std", "min", "max", "count", "q01", "q10", "q50", "q90", "q99"} <= set(
        stats["action"]
    )

    back = RobotDataset(import_lerobot(exported, tmp_path / "back"))
    assert_same_dataset(RobotDataset(demo_dataset), back)
    assert back.info["source"]["lerobot_codebase_version"] == "v3.0"


def test_v30_episode_table_locates_rows_and_video_spans(demo_dataset, tmp_path):
    import imageio_ffmpeg
    import pyarrow.parquet as pq

    exported = export_lerobot(demo_dataset, tmp_path / "v30")
    original = RobotDataset(demo_dataset)
    episodes = pq.read_table(exported / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in episodes] == list(range(original.num_episodes))
    key = "observation.images.agentview"
    for episode, meta in zip(episodes, original.episodes):
        assert episode["length"] == meta["length"] and episode["tasks"] == meta["tasks"]
        assert episode["dataset_to_index"] - episode["dataset_from_index"] == meta["length"]
        span = episode[f"videos/{key}/to_timestamp"] - episode[f"videos/{key}/from_timestamp"]
        assert span == pytest.approx(meta["length"] / 10)
        assert json.loads(episode["fmmm/scene"]) == meta["scene"] and "stats/action/q50" in episode
    # all episodes in one data file and one mp4 per camera, back to back
    data = pq.read_table(exported / "data/chunk-000/file-000.parquet")
    assert data.num_rows == len(original)
    frames = imageio_ffmpeg.read_frames(str(exported / f"videos/{key}/chunk-000/file-000.mp4"))
    meta = next(frames)
    assert (meta["codec"], meta["pix_fmt"].split("(")[0], meta["fps"]) == ("h264", "yuv420p", 10)
    assert sum(1 for _ in frames) == len(original)
    tasks = pq.read_table(exported / "meta" / "tasks.parquet")
    pandas_meta = json.loads(tasks.schema.metadata[b"pandas"])
    assert tasks[pandas_meta["index_columns"][0]].to_pylist() == original.tasks


def test_v21_export_and_import_still_round_trip_from_the_cli(demo_dataset, tmp_path):
    command = [sys.executable, "-m", "fmmm.datasets"]
    exported, back = tmp_path / "v21", tmp_path / "back"
    export = [*command, "export-lerobot", str(demo_dataset), str(exported), "--version", "v2.1"]
    subprocess.run(export, check=True, capture_output=True, timeout=300)
    subprocess.run(
        [*command, "import-lerobot", str(exported), str(back)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    info = json.loads((exported / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["total_videos"] == 2 * info["total_episodes"]
    for name in ("episodes.jsonl", "episodes_stats.jsonl", "tasks.jsonl", "stats.json"):
        assert (exported / "meta" / name).is_file(), name
    assert (exported / "videos/chunk-000/observation.images.wrist/episode_000000.mp4").is_file()
    assert_same_dataset(RobotDataset(demo_dataset), RobotDataset(back))


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    sink = io.BytesIO()
    Image.fromarray(image).save(sink, format="PNG")
    return sink.getvalue()


def test_import_reads_v30_image_features_task_column_and_dict_names(tmp_path):
    """A v3.0 dataset as other writers make it: PNG `image` features, a plain `task` column in
    tasks.parquet, `names` as a dict, two episodes in one data file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    state = rng.normal(size=(5, 2)).astype(np.float32)
    episode_index = [0, 0, 0, 1, 1]
    frame_index = [0, 1, 2, 0, 1]
    data = pa.table(
        {
            "observation.image": [{"bytes": _png(image), "path": None} for image in images],
            "observation.state": pa.FixedSizeListArray.from_arrays(pa.array(state.ravel()), 2),
            "timestamp": pa.array([f / 5 for f in frame_index], pa.float32()),
            "frame_index": pa.array(frame_index, pa.int64()),
            "episode_index": pa.array(episode_index, pa.int64()),
            "index": pa.array(range(5), pa.int64()),
            "task_index": pa.array([1, 1, 1, 0, 0], pa.int64()),
        }
    )
    names = {"motors": ["shoulder", "elbow"]}
    features = {
        "observation.image": {"dtype": "image", "shape": [8, 8, 3], "names": None},
        "observation.state": {"dtype": "float32", "shape": [2], "names": names},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        **{
            key: {"dtype": "int64", "shape": [1], "names": None}
            for key in ("frame_index", "episode_index", "index", "task_index")
        },
    }
    root = tmp_path / "other"
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    (root / "data" / "chunk-000").mkdir(parents=True)
    pq.write_table(data, root / "data/chunk-000/file-000.parquet")
    episodes = {
        "episode_index": [0, 1],
        "tasks": [["stack"], ["push"]],
        "length": [3, 2],
        "data/chunk_index": [0, 0],
        "data/file_index": [0, 0],
        "dataset_from_index": [0, 3],
        "dataset_to_index": [3, 5],
        "stats/observation.state/mean": [[0.0, 0.0], [0.0, 0.0]],
    }
    pq.write_table(pa.table(episodes), root / "meta/episodes/chunk-000/file-000.parquet")
    pq.write_table(
        pa.table({"task": ["push", "stack"], "task_index": [0, 1]}), root / "meta/tasks.parquet"
    )
    info = {
        "codebase_version": "v3.0",
        "fps": 5,
        "features": features,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": None,
        "robot_type": "so100",
    }
    (root / "meta" / "info.json").write_text(json.dumps(info))

    back = RobotDataset(import_lerobot(root, tmp_path / "back"))
    assert back.tasks == ["push", "stack"]
    assert [back.instruction(i) for i in range(2)] == ["stack", "push"]
    assert back.episodes == [
        {"episode_index": 0, "tasks": ["stack"], "length": 3},
        {"episode_index": 1, "tasks": ["push"], "length": 2},
    ]
    assert back.features["observation.state"]["names"] == names
    assert back.info["robot_type"] == "so100"
    frames = np.concatenate([back.episode(i)["observation.image"] for i in range(2)])
    np.testing.assert_array_equal(frames, images)
    np.testing.assert_array_equal(back.episode(1)["observation.state"], state[3:])
    np.testing.assert_array_equal(back.episode(1)["task_index"], [0, 0])


def test_export_refuses_an_unknown_version(demo_dataset, tmp_path):
    with pytest.raises(ValueError, match="v1.6"):
        export_lerobot(demo_dataset, tmp_path / "out", version="v1.6")


def test_import_rejects_other_codebase_versions(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v1.6"}))
    with pytest.raises(ValueError, match="v1.6"):
        import_lerobot(tmp_path, tmp_path / "out")


def test_datasets_cli_reports_bad_input_in_one_line(tmp_path):
    command = [sys.executable, "-m", "fmmm.datasets", "info", str(tmp_path / "nothing")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error:")
    assert result.stderr.count("\n") == 1
