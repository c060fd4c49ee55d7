import json
import subprocess
import sys

import numpy as np
import pytest

from fmmm.datasets.lerobot import export_lerobot, import_lerobot
from fmmm.datasets.robot import RobotDataset


def test_export_then_import_round_trips_through_the_lerobot_layout(demo_dataset, tmp_path):
    exported = export_lerobot(demo_dataset, tmp_path / "lerobot")
    info = json.loads((exported / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v2.1"
    assert info["features"]["observation.images.wrist"]["dtype"] == "video"
    assert info["total_videos"] == 2 * info["total_episodes"]
    for name in ("episodes.jsonl", "episodes_stats.jsonl", "tasks.jsonl", "stats.json"):
        assert (exported / "meta" / name).is_file(), name
    video = exported / info["video_path"].format(
        episode_chunk=0, video_key="observation.images.agentview", episode_index=0
    )
    assert video.is_file()

    original = RobotDataset(demo_dataset)
    back = RobotDataset(import_lerobot(exported, tmp_path / "back"))
    assert back.num_episodes == original.num_episodes and len(back) == len(original)
    assert back.tasks == original.tasks
    assert back.episodes == original.episodes
    assert back.info["scene_sha256"] == original.info["scene_sha256"]
    for index in range(original.num_episodes):
        a, b = original.episode(index), back.episode(index)
        assert set(a) == set(b)
        for name in a:
            if name in original.camera_keys:
                # h264 at qp 0 in yuv444p: only RGB <-> YUV rounding remains
                error = np.abs(a[name].astype(int) - b[name].astype(int))
                assert error.max() <= 3 and error.mean() < 0.5, name
            else:
                assert a[name].dtype == b[name].dtype, name
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_lerobot_parquet_holds_vector_columns_as_lists(demo_dataset, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    exported = export_lerobot(demo_dataset, tmp_path / "lerobot")
    table = pq.read_table(exported / "data" / "chunk-000" / "episode_000000.parquet")
    assert pa.types.is_list(table.schema.field("action").type)
    assert {"timestamp", "frame_index", "episode_index", "index", "task_index"} <= set(
        table.column_names
    )
    assert not any(name.startswith("observation.images") for name in table.column_names)


def test_import_rejects_other_codebase_versions(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v3.0"}))
    with pytest.raises(ValueError, match="v3.0"):
        import_lerobot(tmp_path, tmp_path / "out")


def test_datasets_cli_reports_bad_input_in_one_line(tmp_path):
    command = [sys.executable, "-m", "fmmm.datasets", "info", str(tmp_path / "nothing")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("error:")
    assert result.stderr.count("\n") == 1
