"""Build the offline pretraining corpus as the same shards users supply, cached by its settings.

    root = build_corpus(CorpusConfig(), cache_dir)   # <cache_dir>/<hash>/<source>/<split>/*.tar|jsonl

Sources: `image_text` and `video_text` (webdataset tar: `.png` / `.npy` frames + `.txt`, rendered
from the MuJoCo scene), `audio_text` (tar: `.wav` + `.txt`, synthesised) and `text` (JSONL).
Splits: `train` and `heldout` (drawn from separate seeds). Same settings, same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

GENERATOR_VERSION = 2
SOURCES = ("image_text", "video_text", "audio_text", "text")
SPLITS = ("train", "heldout")


@dataclass
class CorpusConfig:
    """How much of each kind of data to generate."""

    seed: int = 0
    image_size: int = 64  # rendered frame size
    image_pairs: int = 3000
    video_pairs: int = 600
    video_frames: int = 4
    audio_pairs: int = 1500
    audio_seconds: float = 1.0
    sample_rate: int = 16000
    text_docs: int = 3000
    heldout: int = 200  # per source
    samples_per_shard: int = 500

    def __post_init__(self) -> None:
        for name in ("image_pairs", "video_pairs", "audio_pairs", "text_docs", "heldout"):
            if getattr(self, name) < 0:
                raise ValueError(f"corpus.{name} must be >= 0, got {getattr(self, name)}")
        if self.image_size < 8 or self.video_frames < 1 or self.samples_per_shard < 1:
            raise ValueError("corpus.image_size >= 8, video_frames >= 1, samples_per_shard >= 1")
        if self.audio_seconds <= 0 or self.sample_rate < 1000:
            raise ValueError("corpus.audio_seconds must be > 0 and sample_rate >= 1000")

    def key(self) -> str:
        blob = json.dumps({"version": GENERATOR_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """`$FMMM_CACHE/corpus` or `~/.cache/fmmm/corpus`."""
    base = os.environ.get("FMMM_CACHE") or Path.home() / ".cache" / "fmmm"
    return Path(base) / "corpus"


def _count(cfg: CorpusConfig, source: str, split: str) -> int:
    if split == "heldout":
        total = {"image_text": cfg.image_pairs, "video_text": cfg.video_pairs}
        total |= {"audio_text": cfg.audio_pairs, "text": cfg.text_docs}
        return cfg.heldout if total[source] else 0
    return {
        "image_text": cfg.image_pairs,
        "video_text": cfg.video_pairs,
        "audio_text": cfg.audio_pairs,
        "text": cfg.text_docs,
    }[source]


def _samples(cfg: CorpusConfig, source: str, split: str, renderer, progress):
    from fmmm.corpus.audio import synth_audio_pair, wav_bytes
    from fmmm.corpus.scenes import render_image_pair, render_video_pair
    from fmmm.corpus.text import text_document
    from fmmm.data.shards import encode_frames, encode_image, make_sample

    rng = np.random.default_rng([cfg.seed, SOURCES.index(source), SPLITS.index(split)])
    for index in range(_count(cfg, source, split)):
        key = f"{source}_{split}_{index:06d}"
        if source == "image_text":
            image, caption = render_image_pair(renderer, rng)
            yield make_sample(key, caption, image=encode_image(image, "png"))
        elif source == "video_text":
            frames, caption = render_video_pair(renderer, rng, cfg.video_frames)
            yield make_sample(key, caption, video=encode_frames(frames))
        elif source == "audio_text":
            wave, caption = synth_audio_pair(rng, cfg.sample_rate, cfg.audio_seconds)
            yield make_sample(key, caption, audio=wav_bytes(wave, cfg.sample_rate))
        else:
            yield make_sample(key, text_document(rng))
        progress.update(1)


def _generate(cfg: CorpusConfig, root: Path) -> None:
    from fmmm.corpus.scenes import SceneRenderer
    from fmmm.data.shards import ShardWriter
    from fmmm.utils.io import atomic_dir, atomic_write_json
    from fmmm.utils.progress import progress as progress_bar

    total = sum(_count(cfg, s, split) for s in SOURCES for split in SPLITS)
    renderer = SceneRenderer(cfg.image_size) if cfg.image_pairs or cfg.video_pairs else None
    try:
        with (
            atomic_dir(root) as tmp,
            progress_bar(total=total, desc="corpus", unit="sample") as progress,
        ):
            counts = {}
            for source in SOURCES:
                for split in SPLITS:
                    if not _count(cfg, source, split):
                        continue
                    fmt = "jsonl" if source == "text" else "tar"
                    with ShardWriter(tmp / source / split, fmt, cfg.samples_per_shard) as writer:
                        for sample in _samples(cfg, source, split, renderer, progress):
                            writer.write(sample)
                    counts[f"{source}/{split}"] = _count(cfg, source, split)
            atomic_write_json(tmp / "corpus.json", {"config": asdict(cfg), "counts": counts})
    finally:
        if renderer is not None:
            renderer.close()


def build_corpus(cfg: CorpusConfig, cache_dir: str | Path | None = None) -> Path:
    """Generate the corpus unless a complete copy for these settings exists; return its folder.

    Generation runs in a fresh process: the OpenGL context of the renderer stays out of the
    caller (loading some CUDA/Triton libraries after an EGL context exists crashes the process).
    """
    import multiprocessing

    root = Path(cache_dir or default_cache_dir()) / cfg.key()
    if (root / "corpus.json").is_file():
        return root
    process = multiprocessing.get_context("spawn").Process(target=_generate, args=(cfg, root))
    process.start()
    process.join()
    if process.exitcode != 0 or not (root / "corpus.json").is_file():
        raise RuntimeError(f"corpus generation failed (exit code {process.exitcode})")
    return root
