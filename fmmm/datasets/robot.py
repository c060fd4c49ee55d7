"""Robot demonstration datasets on disk: one parquet file per episode, JSON metadata beside them.

Layout (LeRobot v2-like, see docs/datasets.md):

    DIR/meta/info.json        features, fps, versions, scene hash, MuJoCo version, totals
    DIR/meta/episodes.jsonl   one line per episode: index, instruction, length, success, seed
    DIR/meta/tasks.jsonl      instruction -> task_index
    DIR/meta/stats.json       per feature: mean, std, min, max, q01, q99
    DIR/data/chunk-000/episode_000000.parquet

Camera frames are stored losslessly as uint8 in the same parquet file (fixed-size binary columns,
zstd-compressed), so training sees exactly the pixels the policy saw and an episode is one file
written atomically.
"""

from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fmmm.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

FORMAT_VERSION = "fmmm-robot-1.0"
CHUNK_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
IMAGE_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"

Episode = dict[str, np.ndarray]


def episode_path(root: str | os.PathLike, episode_index: int) -> Path:
    """Path of the parquet file holding episode `episode_index` under dataset `root`."""
    chunk = episode_index // CHUNK_SIZE
    return Path(root) / DATA_PATH.format(episode_chunk=chunk, episode_index=episode_index)


def episode_to_parquet_bytes(episode: Episode) -> bytes:
    """Serialize one episode (column name -> array with leading time axis) to parquet bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lengths = {len(v) for v in episode.values()}
    if len(lengths) != 1:
        raise ValueError(f"episode columns have different lengths: {sorted(lengths)}")
    fields, arrays = [], []
    for name, values in episode.items():
        values = np.ascontiguousarray(values)
        shape = list(values.shape[1:])
        meta = {b"shape": json.dumps(shape).encode(), b"dtype": str(values.dtype).encode()}
        if values.ndim == 1:
            array = pa.array(values)
        elif values.dtype == np.uint8:
            width = int(np.prod(shape))
            flat = pa.py_buffer(values.reshape(len(values), width).tobytes())
            array = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(width), len(values), [None, flat]
            )
        else:
            width = int(np.prod(shape))
            array = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width)
        fields.append(pa.field(name, array.type, metadata=meta))
        arrays.append(array)
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_episode(path: str | os.PathLike, episode: Episode) -> None:
    """Write one episode to `path` atomically."""
    atomic_write_bytes(path, episode_to_parquet_bytes(episode))


def read_episode(path: str | os.PathLike, columns: Sequence[str] | None = None) -> Episode:
    """Read an episode file back into arrays with their original shapes and dtypes."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=list(columns) if columns is not None else None)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read episode file {path}: {' '.join(str(exc).split())}") from None
    episode = {}
    for field, column in zip(table.schema, table.columns):
        meta = field.metadata or {}
        shape = json.loads(meta.get(b"shape", b"[]"))
        dtype = np.dtype(meta.get(b"dtype", b"float32").decode())
        column = column.combine_chunks()
        n = len(column)
        if not shape:
            values = column.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        elif dtype == np.uint8:
            buffer = column.buffers()[1]
            width = int(np.prod(shape))
            start = column.offset * width
            values = np.frombuffer(buffer, dtype=np.uint8)[start : start + n * width]
            values = values.reshape(n, *shape)
        else:
            values = column.flatten().to_numpy(zero_copy_only=False).astype(dtype, copy=False)
            values = values.reshape(n, *shape)
        episode[field.name] = values
    return episode


def feature_spec(
    episode: Episode, names: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """The `features` table of info.json, derived from one episode's arrays.

    `names` gives features their per-dimension names (LeRobot's `names`: a list, or a dict such as
    `{"motors": [...]}`); features without an entry get None.
    """
    names = names or {}
    features = {}
    for name, values in episode.items():
        shape = list(values.shape[1:]) or [1]
        if name.startswith(IMAGE_PREFIX):
            features[name] = {
                "dtype": "image",
                "shape": shape,
                "names": ["height", "width", "channels"],
                "storage": "parquet fixed-size binary, uint8, lossless",
            }
        else:
            features[name] = {"dtype": str(values.dtype), "shape": shape, "names": names.get(name)}
    return features


def stats_sample(episode: Episode) -> Episode:
    """The part of an episode statistics are computed on: all low-dim rows, 1/16 of the pixels."""
    return {
        name: values[::4, ::2, ::2] if name.startswith(IMAGE_PREFIX) else values
        for name, values in episode.items()
    }


def compute_stats(
    samples: Sequence[Episode], quantiles: Sequence[float] = (0.01, 0.99)
) -> dict[str, dict[str, list]]:
    """Per-feature mean/std/min/max and quantiles over `stats_sample`s (images: per channel in [0, 1]).

    Quantile `q` is named `q{100q:02d}` (0.01 -> "q01"), as LeRobot names them.
    """
    if not samples:
        raise ValueError("cannot compute statistics of an empty dataset")
    stats = {}
    for name in samples[0]:
        data = np.concatenate([np.asarray(sample[name]) for sample in samples])
        if name.startswith(IMAGE_PREFIX):
            data = data.reshape(-1, data.shape[-1]).astype(np.float32) / 255.0
        else:
            data = data.astype(np.float64).reshape(len(data), -1)
        values = {
            "mean": data.mean(0),
            "std": data.std(0),
            "min": data.min(0),
            "max": data.max(0),
        }
        for q, value in zip(quantiles, np.quantile(data, quantiles, axis=0)):
            values[f"q{round(100 * q):02d}"] = value
        # images follow LeRobot: per-channel statistics shaped (C, 1, 1)
        shape = (-1, 1, 1) if name.startswith(IMAGE_PREFIX) else (-1,)
        stats[name] = {k: v.reshape(shape).tolist() for k, v in values.items()}
        stats[name]["count"] = [sum(len(sample[name]) for sample in samples)]
    return stats


def dataset_info(
    fps: float,
    features: dict[str, Any],
    episodes: Sequence[dict[str, Any]],
    total_frames: int,
    tasks: Sequence[Any],
    **extra: Any,
) -> dict[str, Any]:
    """The `meta/info.json` record of a dataset of `episodes` rows; `extra` adds provenance keys."""
    return {
        "format": FORMAT_VERSION,
        "fps": fps,
        "features": features,
        "total_episodes": len(episodes),
        "total_frames": total_frames,
        "total_tasks": len(tasks),
        "chunks_size": CHUNK_SIZE,
        "data_path": DATA_PATH,
        "splits": {"train": f"0:{len(episodes)}"},
        **extra,
    }


def jsonl_text(rows: Iterable[dict[str, Any]]) -> str:
    """JSON Lines with sorted keys (the same rows always give the same bytes)."""
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def write_metadata(
    root: str | os.PathLike,
    info: dict[str, Any],
    episodes: Sequence[dict[str, Any]],
    tasks: Sequence[str],
    stats: dict[str, Any],
) -> None:
    """Write meta/episodes.jsonl, tasks.jsonl, stats.json, then info.json (the completion mark)."""
    meta = Path(root) / "meta"
    atomic_write_text(meta / "episodes.jsonl", jsonl_text(episodes))
    tasks_rows = [{"task_index": i, "task": task} for i, task in enumerate(tasks)]
    atomic_write_text(meta / "tasks.jsonl", jsonl_text(tasks_rows))
    atomic_write_json(meta / "stats.json", stats)
    atomic_write_json(meta / "info.json", info)


def write_dataset(
    root: str | os.PathLike,
    fps: float,
    episodes: Iterable[tuple[Episode, dict[str, Any]]],
    tasks: Sequence[str],
    names: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Write a dataset's episodes 0..N-1, then its metadata; return its info.

    `episodes` yields (episode, its episodes.jsonl row holding "length"); each episode gets its
    `episode_index` and global `index` columns here. `names`: per-dimension feature names, as
    `feature_spec` takes them.
    """
    rows, samples, features, offset = [], [], None, 0
    for episode_index, (episode, row) in enumerate(episodes):
        length = row["length"]
        episode["episode_index"] = np.full(length, episode_index, dtype=np.int64)
        episode["index"] = np.arange(offset, offset + length, dtype=np.int64)
        write_episode(episode_path(root, episode_index), episode)
        features = features or feature_spec(episode, names)
        samples.append(stats_sample(episode))
        rows.append({**row, "episode_index": episode_index})
        offset += length
    info = dataset_info(fps, features, rows, offset, tasks, **extra)
    write_metadata(root, info, rows, tasks, compute_stats(samples))
    return info


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"not a dataset: {path} is missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt {path}: {exc}") from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ValueError(f"not a dataset: {path} is missing")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"corrupt {path} line {number}: {exc}") from None
    return rows


class RobotDataset:
    """Reads a dataset folder: whole episodes, single frames by global index, or a frame stream.

    `dataset[i]` returns frame `i` (a dict of arrays plus `"instruction"`); `episode(e)` returns
    all of episode `e`; `iter_frames()` streams frames episode by episode (hand each torch
    DataLoader worker its own `episode_indices`). Decoded episodes are kept in a small LRU cache.
    """

    def __init__(self, root: str | os.PathLike, cache_episodes: int = 8):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"dataset folder not found: {self.root}")
        meta = self.root / "meta"
        self.info: dict[str, Any] = read_json(meta / "info.json")
        self.stats: dict[str, Any] = read_json(meta / "stats.json")
        self.episodes: list[dict[str, Any]] = read_jsonl(meta / "episodes.jsonl")
        self.tasks: list[str] = [row["task"] for row in read_jsonl(meta / "tasks.jsonl")]
        for key in ("features", "fps", "total_episodes", "total_frames"):
            if key not in self.info:
                raise ValueError(f"corrupt {meta / 'info.json'}: missing key {key!r}")
        if len(self.episodes) != self.info["total_episodes"]:
            raise ValueError(
                f"corrupt {meta}: episodes.jsonl has {len(self.episodes)} rows, "
                f"info.json says {self.info['total_episodes']}"
            )
        lengths = np.array([e["length"] for e in self.episodes], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(lengths)])
        if self._starts[-1] != self.info["total_frames"]:
            raise ValueError(f"corrupt {meta}: episode lengths do not add up to total_frames")
        self._cache: OrderedDict[int, Episode] = OrderedDict()
        self._cache_size = cache_episodes

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.info["features"]

    @property
    def camera_keys(self) -> list[str]:
        return [k for k in self.features if k.startswith(IMAGE_PREFIX)]

    @property
    def fps(self) -> float:
        return self.info["fps"]

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def episode(self, episode_index: int) -> Episode:
        """All frames of one episode: arrays with a leading time axis."""
        if not 0 <= episode_index < self.num_episodes:
            raise IndexError(f"episode {episode_index} out of range [0, {self.num_episodes})")
        if episode_index in self._cache:
            self._cache.move_to_end(episode_index)
            return self._cache[episode_index]
        path = episode_path(self.root, episode_index)
        if not path.is_file():
            raise ValueError(f"dataset {self.root} is missing episode file {path}")
        episode = read_episode(path)
        self._cache[episode_index] = episode
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return episode

    def instruction(self, episode_index: int) -> str:
        return self.episodes[episode_index]["tasks"][0]

    def locate(self, index: int) -> tuple[int, int]:
        """(episode_index, frame_index) of global frame `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range [0, {len(self)})")
        episode_index = int(np.searchsorted(self._starts, index, side="right") - 1)
        return episode_index, int(index - self._starts[episode_index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        episode_index, frame = self.locate(index)
        columns = self.episode(episode_index).items()
        return {**{k: v[frame] for k, v in columns}, "instruction": self.instruction(episode_index)}

    def iter_episodes(self, episode_indices: Sequence[int] | None = None) -> Iterator[Episode]:
        for episode_index in (
            range(self.num_episodes) if episode_indices is None else episode_indices
        ):
            yield self.episode(episode_index)

    def iter_frames(self, episode_indices: Sequence[int] | None = None) -> Iterator[dict[str, Any]]:
        """Stream frames episode by episode (for an IterableDataset)."""
        indices = range(self.num_episodes) if episode_indices is None else episode_indices
        for episode_index, episode in zip(indices, self.iter_episodes(indices)):
            instruction = self.instruction(episode_index)
            for frame in range(len(episode[ACTION_KEY])):
                yield {**{k: v[frame] for k, v in episode.items()}, "instruction": instruction}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_frames()
