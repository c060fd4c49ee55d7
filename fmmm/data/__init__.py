"""Data shards (webdataset tar, JSONL text, robot episodes) and curation (`python -m fmmm.data`).

Readers and writers live in `fmmm.data.shards` (re-exported here, imported on first use); the
curation commands in `dedup`, `decontaminate`, `filters` and `mixture`, configs in `config`.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "ShardDataset",
    "ShardError",
    "ShardWriter",
    "decode_audio",
    "decode_image",
    "decode_video",
    "encode_frames",
    "encode_image",
    "iter_samples",
    "list_shards",
    "make_sample",
    "write_shard",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("fmmm.data.shards"), name)
    raise AttributeError(f"module 'fmmm.data' has no attribute {name!r}")
