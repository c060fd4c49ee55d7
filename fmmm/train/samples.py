"""Raw samples -> pretraining batches: shard samples and robot frames through the sequence builder.

Every sample kind becomes one next-token sequence: text alone; a caption after its image, video
or audio prefix; an action chunk after a camera image, the proprioceptive state and the
instruction (robot frames). Captioned media also give a (media alone, caption alone) pair for the
pooled contrastive embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

KINDS = ("image_text", "video_text", "audio_text", "text", "robot")
MEDIA = {"image_text": "image", "video_text": "video", "audio_text": "audio"}


@dataclass
class PretrainBatch:
    """Sequences for the next-token loss and, per modality, (media alone, captions alone)."""

    lm: Any  # MultimodalBatch
    pairs: dict[str, tuple[Any, Any]]
    tokens: int  # non-padding positions over all of the above

    def to(self, device: Any, non_blocking: bool = False) -> PretrainBatch:
        pairs = {m: (media.to(device), text.to(device)) for m, (media, text) in self.pairs.items()}
        return PretrainBatch(self.lm.to(device), pairs, self.tokens)


class RobotFrames:
    """Frames of a robot dataset (`fmmm.datasets.robot`) as samples: one camera image, the
    state, the episode's instruction and the next `chunk` actions (the last one repeated at the end
    of an episode)."""

    def __init__(self, root: str | Path, chunk: int = 1, camera: str = ""):
        from fmmm.datasets.robot import IMAGE_PREFIX, RobotDataset

        self.dataset = RobotDataset(root)
        cameras = self.dataset.camera_keys
        if not cameras:
            raise ValueError(f"robot dataset {root} has no camera images")
        self.camera = IMAGE_PREFIX + camera if camera else cameras[0]
        if self.camera not in cameras:
            raise ValueError(f"robot dataset {root} has no camera {camera!r}; has {cameras}")
        if chunk < 1:
            raise ValueError(f"action chunk must be >= 1, got {chunk}")
        self.root, self.chunk = str(root), chunk

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from fmmm.datasets.robot import ACTION_KEY, STATE_KEY

        episode_index, frame = self.dataset.locate(index)
        episode = self.dataset.episode(episode_index)
        actions = episode[ACTION_KEY]
        steps = np.minimum(np.arange(frame, frame + self.chunk), len(actions) - 1)
        return {
            "source": self.root,
            "key": f"frame_{index}",
            "position": index,
            "text": self.dataset.instruction(episode_index),
            "image": episode[self.camera][frame],  # (H, W, 3) uint8
            "state": episode[STATE_KEY][frame],
            "actions": actions[steps],  # (chunk, D)
        }

    def fit_arrays(self, max_episodes: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """(actions (N, D), states (N, S)) of the first episodes, to fit the tokenizers."""
        from fmmm.datasets.robot import ACTION_KEY, STATE_KEY

        episodes = range(min(max_episodes, self.dataset.num_episodes))
        columns = [ACTION_KEY, STATE_KEY]
        parts = [self.dataset.episode(e) for e in episodes]
        return tuple(np.concatenate([p[c] for p in parts]).astype(np.float32) for c in columns)


class SampleDecoder:
    """Turns samples into segment lists and batches with the sequence builder.

    A sample's media segments are computed once and kept (up to `cache_size` samples): epochs
    over a corpus then cost no decoding or spectrograms, and results are identical either way.
    """

    def __init__(
        self,
        builder: Any,
        context_length: int,
        cache_size: int = 50_000,
        length_buckets: tuple[int, ...] = (),
    ):
        self.builder = builder
        self.context_length = context_length
        self.length_buckets = length_buckets  # row lengths padded up to one of these (compile)
        self.cache_size = cache_size
        self._cache: dict[tuple[str, str], list] = {}

    def media(self, sample: dict, kind: str) -> dict[str, Any]:
        """Decoded payload as the sequence builder takes it."""
        from fmmm.corpus.audio import read_wav
        from fmmm.data.shards import decode_audio, decode_image, decode_video

        if kind == "robot":
            return {"image": torch.tensor(np.asarray(sample["image"])).permute(2, 0, 1)}
        if kind == "image_text":
            return {"image": torch.from_numpy(decode_image(sample).copy()).permute(2, 0, 1)}
        if kind == "video_text":
            return {"video": torch.from_numpy(decode_video(sample).copy()).permute(0, 3, 1, 2)}
        if sample["ext"].get("audio") == "wav":
            wave, rate = read_wav(sample["audio"])
        else:
            wave, rate = decode_audio(sample)
            wave = wave.mean(axis=0)
        return {"audio": torch.from_numpy(wave), "sample_rate": rate}

    def media_segments(self, sample: dict, kind: str) -> list:
        """Marker + patches of the sample's image, video or audio (cached)."""
        key = (sample["source"], sample["key"])
        if key not in self._cache:
            media = self.media(sample, kind)
            if "image" in media:
                segments = self.builder.image(media["image"])
            elif "video" in media:
                segments = self.builder.video(media["video"])
            else:
                segments = self.builder.audio(media["audio"], media["sample_rate"])
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = segments
        return self._cache[key]

    def _bos(self) -> list:
        from fmmm.tokenizers.sequence import Modality, Segment

        return [Segment(Modality.TEXT, ids=[self.builder.text_tokenizer.bos_id], prefix=True)]

    def media_alone(self, sample: dict, kind: str) -> list:
        """BOS + media as a bidirectional prefix: the input of the pooled media embedding."""
        return self._bos() + self.media_segments(sample, kind)

    def caption_alone(self, caption: str) -> list:
        """BOS caption EOS without loss: the input of the pooled text embedding."""
        return self.builder.text(caption, bos=True, eos=True, loss=False)

    def lm_sample(self, sample: dict, kind: str) -> list:
        """The next-token sequence of a sample (`SequenceBuilder.caption_sample` / `vla_sample`)."""
        builder = self.builder
        if kind == "text":
            return builder.text_sample(sample["text"])
        if kind == "robot":
            return builder.vla_sample(
                [self.media(sample, kind)["image"]],
                torch.tensor(np.asarray(sample["state"]), dtype=torch.float32),
                sample["text"],
                torch.tensor(np.asarray(sample["actions"]), dtype=torch.float32),
            )
        return self.media_alone(sample, kind) + builder.text(sample["text"], eos=True)

    def fit_length(self, rows: list[list]) -> int:
        """Row length for one-sample-per-row batches: the longest row, capped by the context, and
        rounded up to a length bucket when there are some."""
        from fmmm.train.parallel import bucket_length

        longest = min(self.context_length, max(sum(len(s) for s in row) for row in rows))
        return min(self.context_length, bucket_length(longest, self.length_buckets))

    def __call__(
        self, samples: list[dict], kinds: list[str], modalities: list[str]
    ) -> PretrainBatch:
        lm_samples, pair_samples = [], {m: ([], []) for m in modalities}
        for sample, kind in zip(samples, kinds):
            if not sample.get("text"):
                raise ValueError(f"{sample['source']}:{sample['position']}: sample has no text")
            lm_samples.append(self.lm_sample(sample, kind))
            if kind in MEDIA and MEDIA[kind] in pair_samples:
                pair_samples[MEDIA[kind]][0].append(self.media_alone(sample, kind))
                pair_samples[MEDIA[kind]][1].append(self.caption_alone(sample["text"]))
        build = self.builder.build
        lm = build(lm_samples, self.context_length, pack=True, truncate=True)
        tokens = int((lm.sample_ids > 0).sum())
        pairs = {}
        for modality, (media_rows, text_rows) in pair_samples.items():
            if media_rows:
                media = build(media_rows, self.fit_length(media_rows), pack=False, truncate=True)
                text = build(text_rows, self.fit_length(text_rows), pack=False, truncate=True)
                pairs[modality] = (media, text)
                tokens += int((media.sample_ids > 0).sum() + (text.sample_ids > 0).sum())
        return PretrainBatch(lm, pairs, tokens)
