"""Data shards (webdataset tar, JSONL text, robot episodes) and curation (`python -m fmmm.data`).

Readers and writers live in `fmmm.data.shards`; curation steps in `fmmm.data.curate`.
"""

from fmmm.data.shards import (
    ShardError,
    ShardWriter,
    decode_audio,
    decode_image,
    decode_video,
    iter_samples,
    list_shards,
    make_sample,
    write_shard,
)

__all__ = [
    "ShardError",
    "ShardWriter",
    "decode_audio",
    "decode_image",
    "decode_video",
    "iter_samples",
    "list_shards",
    "make_sample",
    "write_shard",
]
