"""Export fmmm robot datasets to the LeRobot v2.1 layout and import LeRobot v2.x datasets.

LeRobot v2.x: `meta/info.json` (features, path templates), `meta/episodes.jsonl`,
`meta/tasks.jsonl`, `meta/stats.json`, `meta/episodes_stats.jsonl` (v2.1), low-dim columns in
`data/chunk-XXX/episode_XXXXXX.parquet` and one mp4 per camera and episode in
`videos/chunk-XXX/<camera key>/episode_XXXXXX.mp4`. Export encodes h264 at constant quantizer 0
in yuv444p, so the only loss is the RGB <-> YUV rounding (a pixel or two); low-dim data and
metadata round-trip exactly.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fmmm.datasets import robot
from fmmm.utils.io import atomic_dir, atomic_write_bytes, atomic_write_text

LEROBOT_VERSION = "v2.1"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"


def _low_dim_table_bytes(episode: robot.Episode) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {}
    for name, values in episode.items():
        if name.startswith(robot.IMAGE_PREFIX):
            continue
        if values.ndim == 1:
            columns[name] = pa.array(values)
        else:
            # LeRobot stores vectors as list<float32> (a `Sequence` feature of HF datasets)
            columns[name] = pa.array(
                list(values.reshape(len(values), -1)), pa.list_(pa.from_numpy_dtype(values.dtype))
            )
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def _write_video(path: Path, frames: np.ndarray, fps: float) -> None:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        imageio.mimwrite(
            tmp,
            list(frames),
            fps=fps,
            codec="libx264",
            pixelformat="yuv444p",
            macro_block_size=1,
            output_params=["-qp", "0"],
        )
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def export_lerobot(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Write the fmmm dataset at `source` as a LeRobot v2.1 dataset folder `destination`."""
    from fmmm.utils.progress import progress

    dataset = robot.RobotDataset(source)
    destination = Path(destination)
    features = {}
    for name, spec in dataset.features.items():
        if name in dataset.camera_keys:
            height, width, channels = spec["shape"]
            features[name] = {
                "dtype": "video",
                "shape": [height, width, channels],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.fps": float(dataset.fps),
                    "video.height": height,
                    "video.width": width,
                    "video.channels": channels,
                    "video.codec": "h264",
                    "video.pix_fmt": "yuv444p",
                    "video.is_depth_map": False,
                    "has_audio": False,
                },
            }
        else:
            features[name] = {key: spec[key] for key in ("dtype", "shape", "names")}
    with atomic_dir(destination) as tmp:
        episode_stats = []
        for index in progress(range(dataset.num_episodes), desc="export", unit="ep"):
            episode = dataset.episode(index)
            atomic_write_bytes(robot.episode_path(tmp, index), _low_dim_table_bytes(episode))
            for key in dataset.camera_keys:
                chunk = index // robot.CHUNK_SIZE
                path = tmp / VIDEO_PATH.format(
                    episode_chunk=chunk, video_key=key, episode_index=index
                )
                _write_video(path, episode[key], dataset.fps)
            stats = robot.compute_stats([robot.stats_sample(episode)])
            episode_stats.append({"episode_index": index, "stats": stats})
        info = {
            key: value
            for key, value in dataset.info.items()
            if key not in ("format", "features", "data_path")
        }
        info.update(
            codebase_version=LEROBOT_VERSION,
            robot_type=info.get("robot_type", "fmmm_mujoco_arm"),
            total_videos=dataset.num_episodes * len(dataset.camera_keys),
            total_chunks=(dataset.num_episodes - 1) // robot.CHUNK_SIZE + 1,
            data_path=robot.DATA_PATH,
            video_path=VIDEO_PATH,
            features=features,
        )
        atomic_write_text(tmp / "meta" / "episodes_stats.jsonl", robot.jsonl_text(episode_stats))
        robot.write_metadata(tmp, info, dataset.episodes, dataset.tasks, dataset.stats)
    return destination


def _read_video(path: Path) -> np.ndarray:
    import imageio.v2 as imageio

    if not path.is_file():
        raise ValueError(f"LeRobot dataset is missing video {path}")
    return np.stack(imageio.mimread(path, memtest=False))


def _decode_images(column: list[Any], root: Path) -> np.ndarray:
    """LeRobot `image` features: structs of PNG/JPEG `bytes` (or a `path`) per row."""
    from PIL import Image

    frames = []
    for cell in column:
        source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else root / cell["path"]
        frames.append(np.asarray(Image.open(source).convert("RGB")))
    return np.stack(frames)


def _read_info(source: Path) -> dict[str, Any]:
    """`meta/info.json` of the LeRobot v2.x dataset at `source`, checked for what import needs."""
    info_path = source / "meta" / "info.json"
    if not info_path.is_file():
        raise ValueError(f"not a LeRobot dataset: {info_path} is missing")
    try:
        info = json.loads(info_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt {info_path}: {exc}") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v2."):
        raise ValueError(f"{info_path}: unsupported codebase_version {version!r}, expected v2.x")
    for key in ("features", "fps", "data_path"):
        if key not in info:
            raise ValueError(f"corrupt {info_path}: missing key {key!r}")
    return info


def _read_episode(source: Path, info: dict[str, Any], index: int) -> tuple[robot.Episode, int]:
    """Episode `index` of a LeRobot dataset (camera frames, then low-dim columns) and its length."""
    import pyarrow.parquet as pq

    chunk = index // info.get("chunks_size", robot.CHUNK_SIZE)
    data_path = source / info["data_path"].format(episode_chunk=chunk, episode_index=index)
    try:
        table = pq.read_table(data_path).to_pydict()
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {data_path}: {' '.join(str(exc).split())}") from None
    features = info["features"]
    camera_keys = [k for k, f in features.items() if f["dtype"] in ("video", "image")]
    episode: robot.Episode = {}
    for key in camera_keys:
        if features[key]["dtype"] == "image":
            episode[key] = _decode_images(table[key], source)
            continue
        video_path = info["video_path"].format(
            episode_chunk=chunk, video_key=key, episode_index=index
        )
        video = _read_video(source / video_path)
        # rows map to video frames through their timestamps
        frame_ids = np.rint(np.asarray(table["timestamp"]) * info["fps"]).astype(np.int64)
        if frame_ids.max() >= len(video):
            raise ValueError(
                f"video of {key} episode {index} has {len(video)} frames, rows need {frame_ids.max() + 1}"
            )
        episode[key] = video[frame_ids]
    for key, spec in features.items():
        if key in camera_keys or key not in table:
            continue
        values = np.asarray(table[key], dtype=np.dtype(spec["dtype"]))
        if values.ndim == 2 and values.shape[1] == 1 and spec["shape"] == [1]:
            values = values[:, 0]
        episode[key] = values
    return episode, len(table["frame_index"])


def import_lerobot(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Convert the LeRobot v2.x dataset folder `source` into an fmmm dataset at `destination`."""
    from fmmm.utils.progress import progress

    source = Path(source)
    info = _read_info(source)
    episodes_meta = robot.read_jsonl(source / "meta" / "episodes.jsonl")
    tasks = [
        row["task"]
        for row in sorted(
            robot.read_jsonl(source / "meta" / "tasks.jsonl"), key=lambda r: r["task_index"]
        )
    ]
    if not episodes_meta:
        raise ValueError(f"LeRobot dataset {source} has no episodes")

    def episodes() -> Iterator[tuple[robot.Episode, dict[str, Any]]]:
        for meta in progress(episodes_meta, desc="import", unit="ep"):
            episode, length = _read_episode(source, info, meta["episode_index"])
            yield episode, {**meta, "length": length}

    kept = ("mujoco_version", "scene_sha256", "env", "collection", "robot_type")
    origin = {"lerobot_codebase_version": info["codebase_version"], "path": str(source)}
    with atomic_dir(destination) as tmp:
        provenance = {k: v for k, v in info.items() if k in kept}
        robot.write_dataset(tmp, info["fps"], episodes(), tasks, source=origin, **provenance)
    return Path(destination)
