"""Sequence builder: interleave modalities into one token sequence and pack samples into a context.

A sample is a list of `Segment`s. Leading segments marked `prefix` form a bidirectional prefix;
the rest is causal. `SequenceBuilder` makes segments from raw inputs with its tokenizers and
`build(samples, context_length)` (or `pack_samples`) returns a `MultimodalBatch` (the table in docs/architecture.md).
Positions advance by one per token within a sample: a text token at sample index t sits at
(t, 0, 0); an image segment starting at t has (t, row, col), a video (t + time, row, col), audio
(t + time, 0, 0); the next segment starts after the last token of the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import torch

IGNORE_INDEX = -100


class Modality(IntEnum):
    """Modality id of each position of a `MultimodalBatch`."""

    PAD = 0
    TEXT = 1
    IMAGE = 2
    VIDEO = 3
    AUDIO = 4
    ACTION = 5
    STATE = 6

    @property
    def key(self) -> str:
        """Name used for this modality's entry in `MultimodalBatch.features`."""
        return self.name.lower()


DISCRETE = (Modality.TEXT, Modality.ACTION)


@dataclass
class MultimodalBatch:
    """Backbone input: batch-first tensors over a context of length L (see docs/architecture.md)."""

    input_ids: torch.Tensor  # (B, L) long
    modality: torch.Tensor  # (B, L) long, `Modality`
    positions: torch.Tensor  # (B, L, 3) long
    sample_ids: torch.Tensor  # (B, L) long, 0 = padding
    prefix: torch.Tensor  # (B, L) bool
    attention_mask: torch.Tensor  # (B, L, L) bool, True = query i may attend to key j
    targets: torch.Tensor  # (B, L) long, shifted, -100 = no loss
    features: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (N_m, F_m)

    @property
    def loss_mask(self) -> torch.Tensor:
        """(B, L) bool: positions whose logits are trained."""
        return self.targets != IGNORE_INDEX

    def to(self, device: torch.device | str) -> MultimodalBatch:
        """Copy of the batch with every tensor on `device`."""
        return MultimodalBatch(
            input_ids=self.input_ids.to(device),
            modality=self.modality.to(device),
            positions=self.positions.to(device),
            sample_ids=self.sample_ids.to(device),
            prefix=self.prefix.to(device),
            attention_mask=self.attention_mask.to(device),
            targets=self.targets.to(device),
            features={name: value.to(device) for name, value in self.features.items()},
        )


@dataclass
class Segment:
    """A run of tokens of one modality.

    Discrete segments (text, action) carry `ids` (n,); continuous ones carry `features` (n, F).
    `grid` (n, 3) holds the within-segment (time, row, col) offsets, added to the segment start in
    axis 0; None means one step per token. `loss` marks tokens that are prediction targets.
    """

    modality: Modality
    ids: torch.Tensor | None = None
    features: torch.Tensor | None = None
    grid: torch.Tensor | None = None
    prefix: bool = False
    loss: bool = False

    def __post_init__(self):
        self.modality = Modality(self.modality)
        if self.modality == Modality.PAD:
            raise ValueError("a segment cannot have the PAD modality")
        if self.prefix and self.loss:
            # prefix positions see the whole prefix, so predicting a prefix token would leak it
            raise ValueError("prefix tokens cannot carry loss: the bidirectional prefix sees them")
        if self.modality in DISCRETE:
            if self.ids is None or self.features is not None:
                raise ValueError(f"{self.modality.key} segment needs ids and no features")
            self.ids = torch.as_tensor(self.ids, dtype=torch.long).flatten()
            if len(self.ids) and self.ids.min() < 0:
                raise ValueError(f"{self.modality.key} ids must be >= 0")
        else:
            if self.features is None or self.ids is not None:
                raise ValueError(f"{self.modality.key} segment needs features and no ids")
            if self.features.ndim != 2 or not self.features.is_floating_point():
                raise ValueError(
                    f"{self.modality.key} features must be float (n, F), got "
                    f"{tuple(self.features.shape)} {self.features.dtype}"
                )
            if not torch.isfinite(self.features).all():
                raise ValueError(f"{self.modality.key} features contain NaN or inf")
            if self.loss:
                raise ValueError(
                    f"{self.modality.key} tokens are continuous: they cannot carry loss"
                )
        if len(self) == 0:
            raise ValueError(f"{self.modality.key} segment is empty")
        if self.grid is not None and self.grid.shape != (len(self), 3):
            raise ValueError(f"grid must have shape ({len(self)}, 3), got {tuple(self.grid.shape)}")

    def __len__(self) -> int:
        return len(self.ids) if self.ids is not None else self.features.shape[0]


@dataclass
class _Flat:
    """One sample flattened to per-token arrays."""

    ids: torch.Tensor
    modality: torch.Tensor
    positions: torch.Tensor
    prefix: torch.Tensor
    loss: torch.Tensor
    features: list[tuple[str, torch.Tensor]]  # (modality key, rows) in sequence order


def _flatten(segments: list[Segment]) -> _Flat:
    if not segments:
        raise ValueError("a sample needs at least one segment")
    ids, modality, positions, prefix, loss, features = [], [], [], [], [], []
    start, in_prefix = 0, True
    for segment in segments:
        if segment.prefix and not in_prefix:
            raise ValueError("prefix segments must come before all causal segments of a sample")
        in_prefix = segment.prefix
        n = len(segment)
        if segment.grid is None:
            grid = torch.zeros(n, 3, dtype=torch.long)
            grid[:, 0] = torch.arange(n)
        else:
            grid = segment.grid.long()
        grid = grid.clone()
        grid[:, 0] += start
        start += n
        ids.append(segment.ids if segment.ids is not None else torch.zeros(n, dtype=torch.long))
        modality.append(torch.full((n,), int(segment.modality), dtype=torch.long))
        positions.append(grid)
        prefix.append(torch.full((n,), segment.prefix))
        loss.append(torch.full((n,), segment.loss))
        if segment.features is not None:
            features.append((segment.modality.key, segment.features.float()))
    return _Flat(
        torch.cat(ids), torch.cat(modality), torch.cat(positions), torch.cat(prefix),
        torch.cat(loss), features,
    )  # fmt: skip


def _truncate(flat: _Flat, length: int) -> _Flat:
    kept, features = flat.modality[:length], []
    remaining = {key: int((kept == int(Modality[key.upper()])).sum()) for key in _keys(flat)}
    for key, rows in flat.features:
        take = min(remaining[key], rows.shape[0])
        if take:
            features.append((key, rows[:take]))
        remaining[key] -= take
    return _Flat(
        flat.ids[:length], kept, flat.positions[:length], flat.prefix[:length],
        flat.loss[:length], features,
    )  # fmt: skip


def _keys(flat: _Flat) -> set[str]:
    return {key for key, _ in flat.features}


def pack_samples(
    samples: list[list[Segment]], context_length: int, pack: bool = True, truncate: bool = False
) -> MultimodalBatch:
    """Place samples into rows of `context_length` tokens and build the batch tensors.

    With `pack`, each sample goes into the first row with room (first fit, in order); otherwise
    one sample per row. A sample longer than the context raises unless `truncate` cuts it.
    """
    if context_length < 1:
        raise ValueError(f"context_length must be >= 1, got {context_length}")
    if not samples:
        raise ValueError("samples is empty: nothing to build")
    flats = []
    for index, segments in enumerate(samples):
        flat = _flatten(segments)
        if len(flat.ids) > context_length:
            if not truncate:
                raise ValueError(
                    f"sample {index} has {len(flat.ids)} tokens, more than context_length "
                    f"{context_length} (pass truncate=True to cut it)"
                )
            flat = _truncate(flat, context_length)
        flats.append(flat)

    rows: list[list[_Flat]] = []
    used: list[int] = []
    for flat in flats:
        n = len(flat.ids)
        row = next((r for r, u in enumerate(used) if pack and u + n <= context_length), None)
        if row is None:
            rows.append([])
            used.append(0)
            row = len(rows) - 1
        rows[row].append(flat)
        used[row] += n

    batch, length = len(rows), context_length
    input_ids = torch.zeros(batch, length, dtype=torch.long)
    modality = torch.zeros(batch, length, dtype=torch.long)
    positions = torch.zeros(batch, length, 3, dtype=torch.long)
    sample_ids = torch.zeros(batch, length, dtype=torch.long)
    prefix = torch.zeros(batch, length, dtype=torch.bool)
    loss = torch.zeros(batch, length, dtype=torch.bool)
    features: dict[str, list[torch.Tensor]] = {}
    for r, row in enumerate(rows):
        offset = 0
        for sample_index, flat in enumerate(row, start=1):
            span = slice(offset, offset + len(flat.ids))
            input_ids[r, span] = flat.ids
            modality[r, span] = flat.modality
            positions[r, span] = flat.positions
            sample_ids[r, span] = sample_index
            prefix[r, span] = flat.prefix
            loss[r, span] = flat.loss
            for key, rows_m in flat.features:
                features.setdefault(key, []).append(rows_m)
            offset += len(flat.ids)

    same_sample = sample_ids[:, :, None] == sample_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    both_prefix = prefix[:, :, None] & prefix[:, None, :]
    attention_mask = same_sample & (causal[None] | both_prefix)

    # logits at i predict token i+1 of the same sample when that token carries loss
    targets = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    next_valid = loss[:, 1:] & (sample_ids[:, 1:] == sample_ids[:, :-1])
    targets[:, :-1] = torch.where(next_valid, input_ids[:, 1:], IGNORE_INDEX)

    stacked = {}
    for key, parts in features.items():
        widths = {part.shape[1] for part in parts}
        if len(widths) > 1:
            raise ValueError(
                f"{key} features have different widths across samples: {sorted(widths)}"
            )
        stacked[key] = torch.cat(parts)
    return MultimodalBatch(
        input_ids, modality, positions, sample_ids, prefix, attention_mask, targets, stacked
    )


class SequenceBuilder:
    """Makes segments from raw inputs with the given tokenizers and builds batches.

    Action bins live in the shared discrete vocabulary at `action_offset` (the text vocabulary
    size by default), so one LM head predicts text and actions; `vocab_size` is the total.
    Non-text segments are preceded by their marker token (`<|image|>`, ...) when `markers`.
    """

    def __init__(
        self,
        text_tokenizer,
        image_tokenizer=None,
        video_tokenizer=None,
        audio_tokenizer=None,
        action_tokenizer=None,
        state_normalizer=None,
        action_offset: int | None = None,
        markers: bool = True,
    ):
        self.text_tokenizer = text_tokenizer
        self.image_tokenizer, self.video_tokenizer = image_tokenizer, video_tokenizer
        self.audio_tokenizer, self.action_tokenizer = audio_tokenizer, action_tokenizer
        self.state_normalizer = state_normalizer
        self.action_offset = text_tokenizer.vocab_size if action_offset is None else action_offset
        if self.action_offset < text_tokenizer.vocab_size:
            raise ValueError(
                f"action_offset {self.action_offset} overlaps the text vocabulary "
                f"({text_tokenizer.vocab_size} ids)"
            )
        self.markers = markers

    @property
    def vocab_size(self) -> int:
        """Size of the shared discrete vocabulary (text ids, then action bins)."""
        bins = self.action_tokenizer.num_bins if self.action_tokenizer is not None else 0
        return self.action_offset + bins

    def _need(self, tokenizer, name: str):
        if tokenizer is None:
            raise ValueError(f"this SequenceBuilder has no {name}")
        return tokenizer

    def _with_marker(self, segment: Segment) -> list[Segment]:
        if not self.markers:
            return [segment]
        marker_id = self.text_tokenizer.marker_ids[segment.modality.key]
        marker = Segment(Modality.TEXT, ids=[marker_id], prefix=segment.prefix)
        return [marker, segment]

    def text(
        self,
        text: str,
        prefix: bool = False,
        loss: bool | None = None,
        bos: bool = False,
        eos: bool = False,
    ) -> list[Segment]:
        """Text segment; `loss` (default: outside the prefix) trains the model to predict it."""
        ids = self.text_tokenizer.encode([text], add_bos=bos, add_eos=eos)[0]
        loss = not prefix if loss is None else loss
        return [Segment(Modality.TEXT, ids=ids, prefix=prefix, loss=loss)]

    def image(self, image: torch.Tensor, prefix: bool = True) -> list[Segment]:
        """One image (3, H, W) uint8 or float [0, 1] as patches at (start, row, col)."""
        tokenizer = self._need(self.image_tokenizer, "image_tokenizer")
        patches, positions = tokenizer.encode(_one(image, "image", 3))
        grid = torch.cat([torch.zeros_like(positions[0, :, :1]), positions[0]], dim=-1)
        return self._with_marker(
            Segment(Modality.IMAGE, features=patches[0], grid=grid, prefix=prefix)
        )

    def video(self, video: torch.Tensor, prefix: bool = True) -> list[Segment]:
        """One video (T, 3, H, W) as tubelets at (start + time, row, col)."""
        tokenizer = self._need(self.video_tokenizer, "video_tokenizer")
        patches, positions = tokenizer.encode(_one(video, "video", 4))
        segment = Segment(Modality.VIDEO, features=patches[0], grid=positions[0], prefix=prefix)
        return self._with_marker(segment)

    def audio(self, waveform: torch.Tensor, sample_rate: int, prefix: bool = True) -> list[Segment]:
        """One waveform (S,) at any rate as log-mel patches at (start + time, 0, 0)."""
        tokenizer = self._need(self.audio_tokenizer, "audio_tokenizer")
        patches, positions, mask = tokenizer.encode([waveform], sample_rate)
        valid = mask[0]
        grid = torch.zeros(int(valid.sum()), 3, dtype=torch.long)
        grid[:, 0] = positions[0, valid, 0]
        segment = Segment(Modality.AUDIO, features=patches[0, valid], grid=grid, prefix=prefix)
        return self._with_marker(segment)

    def state(self, state: torch.Tensor, prefix: bool = True) -> list[Segment]:
        """One proprioceptive state (S,) as a single continuous token (normalized if fitted)."""
        state = torch.as_tensor(state)
        if state.ndim != 1:
            raise ValueError(f"state must be 1-D (S,), got shape {tuple(state.shape)}")
        if self.state_normalizer is not None:
            state = self.state_normalizer.normalize(state)
        segment = Segment(Modality.STATE, features=state.float()[None], prefix=prefix)
        return self._with_marker(segment)

    def actions(self, actions: torch.Tensor, loss: bool = True) -> list[Segment]:
        """An action chunk (T, D) as T*D discrete tokens at `action_offset` + bin (causal)."""
        tokenizer = self._need(self.action_tokenizer, "action_tokenizer")
        actions = torch.as_tensor(actions)
        if actions.ndim != 2:
            raise ValueError(f"actions must be (T, D), got shape {tuple(actions.shape)}")
        ids = tokenizer.encode(actions).flatten() + self.action_offset
        return self._with_marker(Segment(Modality.ACTION, ids=ids, prefix=False, loss=loss))

    def text_sample(self, text: str) -> list[Segment]:
        """(a) Causal language modelling: BOS text EOS with loss on every predicted token."""
        return self.text(text, bos=True, eos=True)

    def caption_sample(
        self, caption: str, image=None, video=None, audio=None, sample_rate: int | None = None
    ) -> list[Segment]:
        """(b) One image, video or audio clip as a bidirectional prefix, then the caption with loss."""
        given = [x is not None for x in (image, video, audio)]
        if sum(given) != 1:
            raise ValueError("caption_sample needs exactly one of image, video, audio")
        if image is not None:
            media = self.image(image)
        elif video is not None:
            media = self.video(video)
        else:
            if sample_rate is None:
                raise ValueError("caption_sample with audio needs sample_rate")
            media = self.audio(audio, sample_rate)
        bos = Segment(Modality.TEXT, ids=[self.text_tokenizer.bos_id], prefix=True)
        return [bos, *media, *self.text(caption, eos=True)]

    def vla_sample(
        self, images: list[torch.Tensor], state, instruction: str, actions=None
    ) -> list[Segment]:
        """(c) Instruction + images + state as bidirectional prefix, then actions with loss.

        The one robot layout, in pretraining and in policies: BOS, instruction, images, state,
        `<|action|>`. The instruction comes first so every action token sits at the same offset
        from every image patch whatever the instruction's length (rotary attention then reads a
        patch's place in the image from the query-key offset). Without `actions` the sample ends
        at the `<|action|>` marker, ready for decoding.
        """
        segments = [Segment(Modality.TEXT, ids=[self.text_tokenizer.bos_id], prefix=True)]
        segments += self.text(instruction, prefix=True)
        for image in images:
            segments += self.image(image)
        if state is not None:
            segments += self.state(state)
        if actions is None:
            return segments + [Segment(Modality.TEXT, ids=[self.text_tokenizer.action_id])]
        return segments + self.actions(actions)

    def build(
        self, samples: list[list[Segment]], context_length: int, pack: bool = True,
        truncate: bool = False,
    ) -> MultimodalBatch:  # fmt: skip
        """Pack samples into a `MultimodalBatch` of rows of `context_length` tokens."""
        return pack_samples(samples, context_length, pack=pack, truncate=truncate)


def _one(x: torch.Tensor, name: str, rank: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != rank:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"one {name} must be a tensor of rank {rank}, got {shape}")
    return x[None]
