"""LeRobot datasets: export fmmm robot datasets as LeRobot v3.0 (or v2.1), import v2.x and v3.x.

LeRobot v3.0 (lerobot >= 0.4) packs many episodes into each file:

    meta/info.json      codebase_version "v3.0", integer fps, features with their `names`,
                        path templates, file size limits
    meta/stats.json     per feature: mean, std, min, max, count, q01, q10, q50, q90, q99
    meta/tasks.parquet  task strings (the pandas index) and their task_index
    meta/episodes/chunk-000/file-000.parquet
                        one row per episode: tasks, length, the files holding it, its rows in the
                        data file (dataset_from_index..dataset_to_index), its time span in each
                        video file (from_timestamp..to_timestamp), its statistics (stats/...)
    data/chunk-000/file-000.parquet              low-dim columns of consecutive episodes
    videos/<camera key>/chunk-000/file-000.mp4   their frames, back to back

A file is closed at about `data_files_size_in_mb` / `video_files_size_in_mb` and the next begun
(file-001, ...; 1000 files per chunk), as LeRobot does. LeRobot v2.1 keeps one parquet and one mp4
per episode and JSON Lines metadata; `export_lerobot(..., version="v2.1")` still writes it.

Videos are H.264 (libx264), yuv420p, a keyframe every 2 frames (LeRobot's `g=2`), index at the
front, CRF 23: x264's CRF 23 matches the quality and size of LeRobot's default, SVT-AV1 at CRF 30,
on fmmm's images, and H.264 decodes with every FFmpeg build and plays in every browser. The loss is
a few levels per pixel on average, more on the edges of small coloured objects where yuv420p halves
the colour resolution. Low-dim columns, tasks, episode metadata and feature names round-trip
exactly.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fmmm.datasets import robot
from fmmm.utils.io import atomic_dir, atomic_write_json, atomic_write_text, check_output_dir

if TYPE_CHECKING:
    import pyarrow as pa

CODEBASE_VERSION = "v3.0"
VERSIONS = ("v3.0", "v2.1")
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot's DEFAULT_QUANTILES
H264_OPTIONS = ["-crf", "23", "-g", "2", "-movflags", "+faststart"]
V30_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V30_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_TASKS_PATH = "meta/tasks.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
# Episode metadata that is not a scalar (fmmm's `scene`) travels as JSON text in `fmmm/<key>`.
JSON_PREFIX = "fmmm/"
_LEROBOT_EPISODE_KEYS = {
    "episode_index",
    "tasks",
    "length",
    "dataset_from_index",
    "dataset_to_index",
}
_LEROBOT_EPISODE_PREFIXES = ("data/", "videos/", "meta/", "stats/")
_MIB = 2**20


def _next_file(chunk_index: int, file_index: int) -> tuple[int, int]:
    """LeRobot's file numbering: file-000 .. file-999 in chunk-000, then chunk-001."""
    if file_index == robot.CHUNK_SIZE - 1:
        return chunk_index + 1, 0
    return chunk_index, file_index + 1


def _low_dim_table(episode: robot.Episode) -> pa.Table:
    """An episode's non-camera columns; vectors as fixed-size lists, the arrow type of the
    `Sequence(length=n)` feature LeRobot declares them as."""
    import pyarrow as pa

    columns = {}
    for name, values in episode.items():
        if name.startswith(robot.IMAGE_PREFIX):
            continue
        if values.ndim == 1:
            columns[name] = pa.array(values)
        else:
            flat = values.reshape(len(values), -1)
            columns[name] = pa.FixedSizeListArray.from_arrays(
                pa.array(flat.reshape(-1)), flat.shape[1]
            )
    return pa.table(columns)


def _write_parquet(table: pa.Table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def _encode_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """Encode (T, H, W, 3) uint8 frames into the mp4 `path` with LeRobot's H.264 settings."""
    import imageio_ffmpeg

    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p video needs even image sizes, got {height}x{width}")
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        quality=None,
        macro_block_size=1,
        ffmpeg_log_level="error",
        output_params=H264_OPTIONS,
    )
    encoder.send(None)
    for frame in frames:
        encoder.send(np.ascontiguousarray(frame))
    encoder.close()


class _VideoFiles:
    """One camera's v3.0 video files. As LeRobot does, each episode is encoded on its own, and the
    episodes of a file are joined by stream copy once the next episode would pass the size limit."""

    def __init__(self, root: Path, key: str, fps: int, limit_mb: float):
        self.root, self.key, self.fps, self.limit_mb = root, key, fps, limit_mb
        self.location = (0, 0)
        self._parts: list[Path] = []
        self._frames = 0
        self._size = 0
        self._encoded = 0

    def add(self, frames: np.ndarray) -> dict[str, Any]:
        """Encode an episode; return its episode-parquet columns (file, time span in the file)."""
        part = self.root / ".parts" / f"{self.key}-{self._encoded:06d}.mp4"
        _encode_video(part, frames, self.fps)
        self._encoded += 1
        size = part.stat().st_size
        if self._parts and self._size + size >= self.limit_mb * _MIB:
            self.close()
            self.location = _next_file(*self.location)
        start = self._frames / self.fps
        self._parts.append(part)
        self._frames += len(frames)
        self._size += size
        prefix = f"videos/{self.key}/"
        return {
            prefix + "chunk_index": self.location[0],
            prefix + "file_index": self.location[1],
            prefix + "from_timestamp": start,
            prefix + "to_timestamp": self._frames / self.fps,
        }

    def close(self) -> None:
        """Write the file of the episodes added since the last one."""
        import subprocess

        import imageio_ffmpeg

        if not self._parts:
            return
        chunk_index, file_index = self.location
        path = self.root / V30_VIDEO_PATH.format(
            video_key=self.key, chunk_index=chunk_index, file_index=file_index
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        listing = self._parts[0].with_suffix(".ffconcat")
        listing.write_text(
            "ffconcat version 1.0\n" + "".join(f"file '{part.name}'\n" for part in self._parts)
        )
        command = [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "concat", "-safe", "0"]
        command += ["-i", str(listing), "-c", "copy", "-movflags", "+faststart", str(path)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise ValueError(f"ffmpeg could not join {path}: {result.stderr.strip()}")
        for part in [*self._parts, listing]:
            part.unlink()
        self._parts, self._frames, self._size = [], 0, 0


class _VideoReader:
    """Frames of one mp4 at a time, decoded forward from its start (episodes come in file order)."""

    def __init__(self) -> None:
        self._path: Path | None = None
        self._decoder: Iterator[Any] | None = None
        self._next = 0

    def read(self, path: Path, frame_ids: np.ndarray) -> np.ndarray:
        """Frames `frame_ids` (an increasing sequence of a video's frame numbers) of `path`."""
        import imageio_ffmpeg

        if not path.is_file():
            raise ValueError(f"LeRobot dataset is missing video {path}")
        if path != self._path or int(frame_ids.min()) < self._next:
            self.close()
            self._decoder = imageio_ffmpeg.read_frames(
                str(path), output_params=["-fps_mode", "passthrough"]
            )
            width, height = next(self._decoder)["size"]
            self._path, self._next, self._shape = path, 0, (height, width, 3)
        frames = {}
        for frame_id in np.unique(frame_ids).tolist():
            while self._next <= frame_id:
                raw = next(self._decoder, None)
                if raw is None:
                    raise ValueError(f"{path} has {self._next} frames, rows need frame {frame_id}")
                self._next += 1
            frames[frame_id] = np.frombuffer(raw, np.uint8).reshape(self._shape)
        return np.stack([frames[frame_id] for frame_id in frame_ids.tolist()])

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
        self._path, self._decoder = None, None


def _video_feature(shape: list[int], fps: int) -> dict[str, Any]:
    height, width, channels = shape
    return {
        "dtype": "video",
        "shape": [height, width, channels],
        "names": ["height", "width", "channels"],
        "info": {
            "video.height": height,
            "video.width": width,
            "video.codec": "h264",
            "video.pix_fmt": "yuv420p",
            "video.is_depth_map": False,
            "video.fps": fps,
            "video.channels": channels,
            "has_audio": False,
        },
    }


def _episode_columns(row: dict[str, Any]) -> dict[str, Any]:
    """fmmm's own episode metadata as episode-parquet columns: scalars as they are, the rest
    (and integers past int64) as JSON text under `fmmm/<key>`."""
    columns = {}
    for key, value in row.items():
        if key in _LEROBOT_EPISODE_KEYS:
            continue
        if isinstance(value, bool | float | str) or (
            isinstance(value, int) and -(2**63) <= value < 2**63
        ):
            columns[key] = value
        else:
            columns[JSON_PREFIX + key] = json.dumps(value, sort_keys=True)
    return columns


def _episode_row(columns: dict[str, Any]) -> dict[str, Any]:
    """The fmmm episodes.jsonl row of a LeRobot v3 episode-parquet row (`_episode_columns` undone)."""
    row = {"tasks": list(columns["tasks"])}
    for key, value in columns.items():
        if value is None or key in _LEROBOT_EPISODE_KEYS:
            continue
        if key.startswith(JSON_PREFIX):
            row[key.removeprefix(JSON_PREFIX)] = json.loads(value)
        elif not key.startswith(_LEROBOT_EPISODE_PREFIXES):
            row[key] = value
    return row


def _flat_stats(stats: dict[str, dict[str, list]]) -> dict[str, list]:
    return {
        f"stats/{feature}/{name}": value
        for feature, values in stats.items()
        for name, value in values.items()
    }


def _tasks_table(tasks: list[str]) -> pa.Table:
    """meta/tasks.parquet as pandas writes LeRobot's tasks DataFrame: the task strings are its index."""
    import pyarrow as pa

    index = "__index_level_0__"
    pandas_meta = {
        "index_columns": [index],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": None,
                "field_name": index,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "creator": {"library": "pyarrow", "version": pa.__version__},
    }
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), index: tasks})
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def _write_v30(
    dataset: robot.RobotDataset,
    root: Path,
    info: dict[str, Any],
    data_files_size_in_mb: float,
    video_files_size_in_mb: float,
) -> None:
    import pyarrow as pa

    from fmmm.utils.progress import progress

    fps = info["fps"]
    data_location, data_tables, data_bytes = (0, 0), [], 0
    rows, samples, start = [], [], 0

    def write_data() -> None:
        chunk_index, file_index = data_location
        path = root / V30_DATA_PATH.format(chunk_index=chunk_index, file_index=file_index)
        _write_parquet(pa.concat_tables(data_tables), path)

    videos = {
        key: _VideoFiles(root, key, fps, video_files_size_in_mb) for key in dataset.camera_keys
    }
    for index in progress(range(dataset.num_episodes), desc="export", unit="ep"):
        episode, meta = dataset.episode(index), dataset.episodes[index]
        table = _low_dim_table(episode)
        if data_tables and data_bytes + table.nbytes >= data_files_size_in_mb * _MIB:
            write_data()
            data_location, data_tables, data_bytes = _next_file(*data_location), [], 0
        data_tables.append(table)
        data_bytes += table.nbytes
        row = {
            "episode_index": index,
            "tasks": meta["tasks"],
            "length": len(table),
            "data/chunk_index": data_location[0],
            "data/file_index": data_location[1],
            "dataset_from_index": start,
            "dataset_to_index": start + len(table),
        }
        for key, video in videos.items():
            row.update(video.add(episode[key]))
        row.update(_episode_columns(meta))
        samples.append(robot.stats_sample(episode))
        row.update(_flat_stats(robot.compute_stats(samples[-1:], QUANTILES)))
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
        rows.append(row)
        start += len(table)
    write_data()
    for video in videos.values():
        video.close()
    if videos:
        (root / ".parts").rmdir()
    # a key missing from some rows (episode metadata one source lacks) is null there
    keys = list(dict.fromkeys(key for row in rows for key in row))
    episodes = pa.table({key: [row.get(key) for row in rows] for key in keys})
    _write_parquet(episodes, root / V30_EPISODES_PATH.format(chunk_index=0, file_index=0))
    _write_parquet(_tasks_table(dataset.tasks), root / V30_TASKS_PATH)
    atomic_write_json(root / "meta" / "stats.json", robot.compute_stats(samples, QUANTILES))
    info.update(
        data_files_size_in_mb=data_files_size_in_mb,
        video_files_size_in_mb=video_files_size_in_mb,
        data_path=V30_DATA_PATH,
        video_path=V30_VIDEO_PATH if dataset.camera_keys else None,
    )
    atomic_write_json(root / "meta" / "info.json", info)


def _write_v21(dataset: robot.RobotDataset, root: Path, info: dict[str, Any]) -> None:
    from fmmm.utils.progress import progress

    episode_stats = []
    for index in progress(range(dataset.num_episodes), desc="export", unit="ep"):
        episode = dataset.episode(index)
        _write_parquet(_low_dim_table(episode), robot.episode_path(root, index))
        for key in dataset.camera_keys:
            chunk = index // robot.CHUNK_SIZE
            path = root / V21_VIDEO_PATH.format(
                episode_chunk=chunk, video_key=key, episode_index=index
            )
            _encode_video(path, episode[key], info["fps"])
        stats = robot.compute_stats([robot.stats_sample(episode)])
        episode_stats.append({"episode_index": index, "stats": stats})
    info.update(
        total_videos=dataset.num_episodes * len(dataset.camera_keys),
        total_chunks=(dataset.num_episodes - 1) // robot.CHUNK_SIZE + 1,
        data_path=robot.DATA_PATH,
        video_path=V21_VIDEO_PATH,
    )
    atomic_write_text(root / "meta" / "episodes_stats.jsonl", robot.jsonl_text(episode_stats))
    robot.write_metadata(root, info, dataset.episodes, dataset.tasks, dataset.stats)


def export_lerobot(
    source: str | os.PathLike,
    destination: str | os.PathLike,
    version: str = CODEBASE_VERSION,
    data_files_size_in_mb: float = 100,
    video_files_size_in_mb: float = 200,
    overwrite: bool = False,
) -> Path:
    """Write the fmmm dataset at `source` as a LeRobot dataset folder `destination`.

    Args:
        version: "v3.0" (LeRobot 0.4 and later) or "v2.1" (earlier LeRobot).
        data_files_size_in_mb, video_files_size_in_mb: v3.0 starts the next data or video file
            once one reaches this size (LeRobot's defaults).
        overwrite: replace a non-empty `destination` (in one rename, once the new one is
            complete); without it such a destination is refused.
    """
    if version not in VERSIONS:
        raise ValueError(f"unknown LeRobot version {version!r}; expected one of {VERSIONS}")
    dataset = robot.RobotDataset(source)
    check_output_dir(destination, overwrite=overwrite, sources=(source,))
    fps = round(dataset.fps)
    if fps != dataset.fps:
        raise ValueError(f"LeRobot datasets have an integer fps; {source} has {dataset.fps}")
    features = {
        name: _video_feature(spec["shape"], fps)
        if name in dataset.camera_keys
        else {key: spec[key] for key in ("dtype", "shape", "names")}
        for name, spec in dataset.features.items()
    }
    info = {
        key: value
        for key, value in dataset.info.items()
        if key not in ("format", "features", "data_path")
    }
    info.update(
        codebase_version=version,
        robot_type=info.get("robot_type", "fmmm_mujoco_arm"),
        fps=fps,
        features=features,
    )
    with atomic_dir(destination) as tmp:
        if version == "v2.1":
            _write_v21(dataset, tmp, info)
        else:
            _write_v30(dataset, tmp, info, data_files_size_in_mb, video_files_size_in_mb)
    return Path(destination)


def _decode_images(column: list[Any], root: Path) -> np.ndarray:
    """LeRobot `image` features: structs of PNG/JPEG `bytes` (or a `path`) per row."""
    from PIL import Image

    frames = []
    for cell in column:
        source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else root / cell["path"]
        frames.append(np.asarray(Image.open(source).convert("RGB")))
    return np.stack(frames)


def _column_values(column: pa.ChunkedArray, spec: dict[str, Any]) -> np.ndarray:
    """A parquet column as an array of the feature's dtype, shaped (rows, *shape) ((rows,) for [1])."""
    import pyarrow as pa

    values = column.combine_chunks()
    rows = len(values)
    while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type):
        values = values.flatten()
    values = values.to_numpy(zero_copy_only=False).astype(np.dtype(spec["dtype"]), copy=False)
    shape = [int(size) for size in spec["shape"]]
    return values.reshape(rows) if shape == [1] else values.reshape(rows, *shape)


def _read_parquet(path: Path) -> pa.Table:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {' '.join(str(exc).split())}") from None


def _read_info(source: Path) -> dict[str, Any]:
    """`meta/info.json` of the LeRobot dataset at `source`, checked for what import needs."""
    info_path = source / "meta" / "info.json"
    if not info_path.is_file():
        raise ValueError(f"not a LeRobot dataset: {info_path} is missing")
    try:
        info = json.loads(info_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt {info_path}: {exc}") from None
    version = str(info.get("codebase_version", ""))
    if not version.startswith(("v2.", "v3.")):
        raise ValueError(
            f"{info_path}: unsupported codebase_version {version!r}, expected v2.x or v3.x"
        )
    for key in ("features", "fps", "data_path"):
        if key not in info:
            raise ValueError(f"corrupt {info_path}: missing key {key!r}")
    return info


class _Source:
    """The episodes of a LeRobot dataset folder, read in order: v2.x (a file per episode) or v3.x
    (episodes packed into files, located through meta/episodes/)."""

    def __init__(self, root: Path, info: dict[str, Any]):
        self.root, self.info = root, info
        self.v3 = info["codebase_version"].startswith("v3.")
        self._data_path: Path | None = None
        self._data: pa.Table | None = None
        self.videos: dict[str, _VideoReader] = {}
        if self.v3:
            self.tasks = self._v3_tasks()
            self.episodes = self._v3_episodes()
        else:
            rows = robot.read_jsonl(root / "meta" / "tasks.jsonl")
            self.tasks = [row["task"] for row in sorted(rows, key=lambda r: r["task_index"])]
            self.episodes = robot.read_jsonl(root / "meta" / "episodes.jsonl")
        if not self.episodes:
            raise ValueError(f"LeRobot dataset {root} has no episodes")

    def _v3_tasks(self) -> list[str]:
        path = self.root / V30_TASKS_PATH
        table = _read_parquet(path)
        pandas_meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
        candidates = [c for c in pandas_meta.get("index_columns", []) if isinstance(c, str)]
        column = next((c for c in [*candidates, "task"] if c in table.column_names), None)
        if column is None or "task_index" not in table.column_names:
            raise ValueError(f"corrupt {path}: expected task strings and a task_index column")
        pairs = sorted(zip(table["task_index"].to_pylist(), table[column].to_pylist()))
        if [index for index, _ in pairs] != list(range(len(pairs))):
            raise ValueError(f"corrupt {path}: task_index is not 0..{len(pairs) - 1}")
        return [task for _, task in pairs]

    def _v3_episodes(self) -> list[dict[str, Any]]:
        folder = self.root / "meta" / "episodes"
        rows = []
        for path in sorted(folder.glob("*/*.parquet")):
            table = _read_parquet(path)
            columns = [name for name in table.column_names if not name.startswith("stats/")]
            for key in ("episode_index", "tasks", "data/chunk_index", "data/file_index"):
                if key not in columns:
                    raise ValueError(f"corrupt {path}: missing column {key!r}")
            rows += table.select(columns).to_pylist()
        rows.sort(key=lambda row: row["episode_index"])
        if [row["episode_index"] for row in rows] != list(range(len(rows))):
            raise ValueError(f"corrupt {folder}: episode_index is not 0..{len(rows) - 1}")
        return rows

    def _rows(self, meta: dict[str, Any]) -> pa.Table:
        """The data-file rows of the episode with metadata `meta`."""
        import pyarrow.compute as pc

        index = meta["episode_index"]
        if not self.v3:
            chunk = index // self.info.get("chunks_size", robot.CHUNK_SIZE)
            path = self.info["data_path"].format(episode_chunk=chunk, episode_index=index)
            return _read_parquet(self.root / path)
        path = self.root / self.info["data_path"].format(
            chunk_index=meta["data/chunk_index"], file_index=meta["data/file_index"]
        )
        if path != self._data_path:
            self._data_path, self._data = path, _read_parquet(path)
        return self._data.filter(pc.equal(self._data["episode_index"], index))

    def _video(self, key: str, meta: dict[str, Any]) -> tuple[Path, float]:
        """The video holding camera `key` of an episode and the episode's start time in it."""
        index = meta["episode_index"]
        if not self.v3:
            chunk = index // self.info.get("chunks_size", robot.CHUNK_SIZE)
            path = self.info["video_path"].format(
                episode_chunk=chunk, video_key=key, episode_index=index
            )
            return self.root / path, 0.0
        path = self.info["video_path"].format(
            video_key=key,
            chunk_index=meta[f"videos/{key}/chunk_index"],
            file_index=meta[f"videos/{key}/file_index"],
        )
        return self.root / path, meta[f"videos/{key}/from_timestamp"]

    def episode(self, meta: dict[str, Any]) -> tuple[robot.Episode, dict[str, Any]]:
        """An episode's columns and its fmmm episodes.jsonl row."""
        rows = self._rows(meta)
        if len(rows) == 0:
            raise ValueError(f"LeRobot dataset {self.root} has no rows of episode {meta}")
        timestamps = rows["timestamp"].to_numpy().astype(np.float64)
        episode: robot.Episode = {}
        for key, spec in self.info["features"].items():
            if spec["dtype"] == "video":
                path, start = self._video(key, meta)
                # rows map to frames of the file through their timestamps
                frame_ids = np.rint((start + timestamps) * self.info["fps"]).astype(np.int64)
                episode[key] = self.videos.setdefault(key, _VideoReader()).read(path, frame_ids)
            elif spec["dtype"] == "image":
                episode[key] = _decode_images(rows[key].to_pylist(), self.root)
            elif key in rows.column_names:
                episode[key] = _column_values(rows[key], spec)
        row = _episode_row(meta) if self.v3 else dict(meta)
        return episode, {**row, "length": len(rows)}

    def close(self) -> None:
        for video in self.videos.values():
            video.close()


def import_lerobot(
    source: str | os.PathLike, destination: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Convert the LeRobot v2.x or v3.x dataset folder `source` into an fmmm dataset at `destination`.

    Feature names (LeRobot's per-dimension `names`) and episode metadata are kept. A non-empty
    `destination` is refused unless `overwrite` (then replaced in one rename once complete).
    """
    from fmmm.utils.progress import progress

    source = Path(source)
    info = _read_info(source)
    check_output_dir(destination, overwrite=overwrite, sources=(source,))
    dataset = _Source(source, info)

    def episodes() -> Iterator[tuple[robot.Episode, dict[str, Any]]]:
        for meta in progress(dataset.episodes, desc="import", unit="ep"):
            yield dataset.episode(meta)

    names = {
        key: spec["names"]
        for key, spec in info["features"].items()
        if spec["dtype"] not in ("video", "image") and spec.get("names") is not None
    }
    kept = ("mujoco_version", "scene_sha256", "env", "collection", "robot_type", "fmmm_version")
    provenance = {key: value for key, value in info.items() if key in kept}
    origin = {"lerobot_codebase_version": info["codebase_version"], "path": str(source)}
    try:
        with atomic_dir(destination) as tmp:
            robot.write_dataset(
                tmp, info["fps"], episodes(), dataset.tasks, names, source=origin, **provenance
            )
    finally:
        dataset.close()
    return Path(destination)
