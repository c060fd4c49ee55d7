"""Vision-language-action policy (RT-2 / OpenVLA recipe) on the pretrained `MultimodalModel`.

Camera images, the proprioceptive state and the instruction form a bidirectional prefix; the
policy then emits `chunk * D` action tokens (D = the action width its action tokenizer was
fitted on: 7 on fmmm's tasks, 4 on Meta-World; bins in the shared vocabulary at `action_offset`)
greedily, one at a time with the KV cache, and de-tokenizes them with the action statistics saved
beside the weights. `act()` serves actions from a queue refilled every `execute` steps.

A run directory holds:

    policy.json              {"type": "vla", "adaptation": ..., <VLAConfig fields>}
    model/                   MultimodalModel weights + config, tokenizers/ (text, image, action, state)
    adapter/                 LoRA adapter only (adapter_model.safetensors), when adaptation is "lora"
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fmmm.models.backbone import PrefixPasses, prefix_pass
from fmmm.models.multimodal import TOKENIZERS_DIR, MultimodalModel
from fmmm.policies.factory import PolicyFactory, policy_registry
from fmmm.policies.heads import HEADS, ContinuousActionHead, sample_flow_time
from fmmm.tokenizers.sequence import (
    IGNORE_INDEX,
    Modality,
    MultimodalBatch,
    Segment,
    SequenceBuilder,
)
from fmmm.utils.io import atomic_write_bytes, atomic_write_json

MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
POLICY_FILE = "policy.json"
HEAD_FILE = "action_head.safetensors"
CAMERAS = ("agentview", "wrist")


@dataclass
class VLAConfig:
    """What the policy sees and how it acts (saved in policy.json)."""

    cameras: list[str] = field(default_factory=lambda: ["agentview"])
    use_state: bool = True
    chunk: int = 4  # actions predicted per inference
    execute: int = 0  # actions executed from each chunk before predicting again; 0: all of them
    use_cache: bool = True  # KV cache during decoding (False: re-run the whole sequence per token)
    normalize_patches: bool = True  # standardize image patches with demonstration statistics
    # Training-time Gaussian noise on the normalized state and image patches: the initial arm
    # pose and the exact pixels identify a demonstration, and without noise the policy memorizes
    # demonstrations instead of learning where the named object is.
    state_noise: float = 0.0
    patch_noise: float = 0.0
    # How actions come out (fmmm/policies/heads.py): "tokens" (discrete bins decoded one at a time
    # with the KV cache), "l1" (the whole chunk in one pass, continuous, L1 loss; OpenVLA-OFT) or
    # "flow" (a flow-matching action expert integrated in `flow_steps` Euler steps; pi0).
    head: str = "tokens"
    flow_steps: int = 10
    # torch.compile the flow head's Euler steps over the cached prefix, as one graph. Opt-in: it
    # needs a C++ compiler and compiles for about 30 s on a 2-core CPU at the first chunk, and
    # again at the first chunk of another prefix length or batch size (then shapes go dynamic).
    flow_compile: bool = False

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"policy.head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.flow_steps < 1:
            raise ValueError(f"policy.flow_steps must be >= 1, got {self.flow_steps}")
        if not self.cameras and not self.use_state:
            raise ValueError("the policy needs at least one camera or use_state")
        for camera in self.cameras:
            if camera not in CAMERAS:
                raise ValueError(f"unknown camera {camera!r}; expected one of {CAMERAS}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")
        if not 0 <= self.execute <= self.chunk:
            raise ValueError(f"execute must be in [0, chunk={self.chunk}], got {self.execute}")
        if self.state_noise < 0 or self.patch_noise < 0:
            raise ValueError("state_noise and patch_noise must be >= 0")

    @property
    def steps_per_chunk(self) -> int:
        return self.execute or self.chunk


class PatchNormalizer:
    """Per-camera, per-patch-feature standardization of image patches, fitted on the demonstrations.

    Scene differences (a 3-pixel object, the arm) are a few percent of a patch's pixels; after
    subtracting the mean image and dividing by the per-pixel spread they dominate the input.
    """

    FILE = "patch_normalizer.safetensors"

    def __init__(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.stats = stats or {}  # camera -> (mean (N, F), std (N, F))

    @classmethod
    def fit(cls, patches: dict[str, torch.Tensor], floor: float = 0.1) -> PatchNormalizer:
        """Statistics of patches {camera: (frames, N, F)}; spreads below `floor` are raised to it."""
        stats = {}
        for camera, values in patches.items():
            if values.ndim != 3 or values.shape[0] == 0:
                raise ValueError(f"{camera} patches must be a non-empty (frames, N, F) tensor")
            stats[camera] = (values.mean(0), values.std(0, correction=0).clamp_min(floor))
        return cls(stats)

    def __call__(self, camera: str, patches: torch.Tensor) -> torch.Tensor:
        if camera not in self.stats:
            return patches
        mean, std = self.stats[camera]
        if patches.shape != mean.shape:
            raise ValueError(
                f"{camera} patches {tuple(patches.shape)} do not match the fitted {tuple(mean.shape)}"
            )
        return (patches - mean) / std

    def batch(self, camera: str, patches: torch.Tensor) -> torch.Tensor:
        """`__call__` on a batch of one camera's images: patches (B, N, F)."""
        if camera not in self.stats:
            return patches
        mean, std = self.stats[camera]
        if patches.shape[1:] != mean.shape:
            raise ValueError(
                f"{camera} patches {tuple(patches.shape[1:])} do not match the fitted {tuple(mean.shape)}"
            )
        return (patches - mean) / std

    @classmethod
    def fit_streaming(cls, batches: dict[str, Any], floor: float = 0.1) -> PatchNormalizer:
        """`fit` from an iterable of (frames, N, F) patch batches per camera, without holding
        them all: float64 running sums."""
        stats = {}
        for camera, parts in batches.items():
            count, total, squares = 0, None, None
            for values in parts:
                values = values.double()
                total = values.sum(0) if total is None else total + values.sum(0)
                squares = (values**2).sum(0) if squares is None else squares + (values**2).sum(0)
                count += values.shape[0]
            if not count:
                raise ValueError(f"no {camera} frames to fit the patch statistics on")
            mean = total / count
            std = (squares / count - mean**2).clamp_min(0).sqrt()
            stats[camera] = (mean.float(), std.float().clamp_min(floor))
        return cls(stats)

    def save(self, directory: Path) -> None:
        from safetensors.torch import save

        tensors = {}
        for camera, (mean, std) in self.stats.items():
            tensors[f"{camera}.mean"], tensors[f"{camera}.std"] = (
                mean.contiguous(),
                std.contiguous(),
            )
        atomic_write_bytes(Path(directory) / self.FILE, save(tensors))

    @classmethod
    def load(cls, directory: Path) -> PatchNormalizer:
        from safetensors.torch import load_file

        path = Path(directory) / cls.FILE
        if not path.is_file():
            return cls()
        tensors = load_file(path)
        cameras = {key.rsplit(".", 1)[0] for key in tensors}
        return cls({c: (tensors[f"{c}.mean"], tensors[f"{c}.std"]) for c in cameras})


@dataclass
class ActionBatch:
    """A training batch: the token sequences, plus the continuous targets of the `l1`/`flow` heads
    (normalized actions (B, chunk, D) and which of them lie inside the episode (B, chunk))."""

    tokens: MultimodalBatch
    actions: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def to(self, device: Any, non_blocking: bool = False) -> ActionBatch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return ActionBatch(self.tokens.to(device), move(self.actions), move(self.mask))

    @property
    def sample_ids(self) -> torch.Tensor:
        return self.tokens.sample_ids


def open_action_block(batch: MultimodalBatch) -> MultimodalBatch:
    """Let the action positions of each row attend to each other (bidirectional chunk)."""
    action = (batch.modality == int(Modality.ACTION)) & (batch.sample_ids > 0)
    mask = batch.attention_mask | (action[:, :, None] & action[:, None, :])
    return dataclasses.replace(batch, attention_mask=mask)


def token_positions(t: torch.Tensor) -> torch.Tensor:
    """(K,) sequence positions -> (K, 1, 3) positions (t, 0, 0) of one new token per row."""
    return torch.stack([t, torch.zeros_like(t), torch.zeros_like(t)], dim=-1)[:, None]


def base_model(model: nn.Module) -> nn.Module:
    """The MultimodalModel inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if is_lora(model) else model


class VLA(nn.Module):
    """MultimodalModel + tokenizers (+ a continuous action head): training loss and chunk prediction."""

    def __init__(
        self,
        model: nn.Module,
        builder: SequenceBuilder,
        config: VLAConfig,
        patch_normalizer: PatchNormalizer | None = None,
    ):
        super().__init__()
        if builder.action_tokenizer is None or builder.action_tokenizer.dims is None:
            raise ValueError("the VLA needs a fitted action tokenizer")
        if config.use_state and builder.state_normalizer is None:
            raise ValueError("use_state needs a fitted state normalizer")
        self.model = model  # a MultimodalModel, or a peft wrapper around one
        self.builder = builder
        self.config = config
        self.num_bins = builder.action_tokenizer.num_bins
        self.action_dim = builder.action_tokenizer.dims
        self.action_offset = builder.action_offset
        self.patch_normalizer = patch_normalizer or PatchNormalizer()
        self.action_head = None
        if config.head != "tokens":
            dim = base_model(model).config.backbone.dim
            self.action_head = ContinuousActionHead(config.head, dim, self.action_dim, config.chunk)
        low, high = builder.action_tokenizer.low.float(), builder.action_tokenizer.high.float()
        self.register_buffer("action_low", low, persistent=False)
        self.register_buffer("action_span", (high - low).clamp_min(1e-6), persistent=False)
        self.generator = torch.Generator().manual_seed(0)  # flow-matching noise at inference
        # per-dimension names of observation.state and action in the training data (policy.json)
        self.features: dict[str, Any] | None = None

    @property
    def forward_passes_per_chunk(self) -> int:
        """Backbone passes per predicted chunk (a KV-cached decoding step counts as one)."""
        if self.config.head == "tokens":
            return self.config.chunk * self.action_dim
        return self.config.flow_steps if self.config.head == "flow" else 1

    # ------------------------------------------------------------------ normalization
    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Actions (..., D) -> [-1, 1] per dimension (1st/99th percentiles of the demonstrations)."""
        return (actions.float() - self.action_low) / self.action_span * 2 - 1

    def unnormalize_actions(self, unit: torch.Tensor) -> torch.Tensor:
        return self.action_low + (unit.float() + 1) / 2 * self.action_span

    # ------------------------------------------------------------------ sequences
    def prefix_segments(self, observation: dict[str, Any]) -> list[Segment]:
        """Prefix of one observation in the robot layout of `SequenceBuilder.vla_sample`:
        BOS, instruction, camera images (patches standardized per camera), state, `<|action|>`."""
        instruction = observation.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("observation needs a non-empty 'instruction' string")
        images = []
        for camera in self.config.cameras:
            if camera not in observation:
                raise ValueError(f"observation has no {camera!r} image")
            image = torch.tensor(np.asarray(observation[camera]))
            if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != torch.uint8:
                raise ValueError(
                    f"observation[{camera!r}] must be uint8 (H, W, 3), got {image.dtype} {tuple(image.shape)}"
                )
            images.append(image.permute(2, 0, 1))
        state = np.array(observation["state"], dtype=np.float32) if self.config.use_state else None
        segments = self.builder.vla_sample(images, state, instruction)
        length = sum(len(segment) for segment in segments)
        actions = self.config.chunk * (self.action_dim if self.config.head == "tokens" else 1)
        context = base_model(self.model).config.backbone.max_seq_len
        if length + actions > context:
            raise ValueError(
                f"instruction too long: the prefix is {length} tokens and the actions {actions}, "
                f"past the model's context of {context} (max_seq_len); shorten the instruction"
            )
        patches = [segment for segment in segments if segment.modality == Modality.IMAGE]
        for camera, segment in zip(self.config.cameras, patches):
            segment.features = self.patch_normalizer(camera, segment.features)
        return segments

    def action_segment(self, action_ids: torch.Tensor | None = None) -> Segment:
        """The action positions after the prefix: the chunk's bins (tokens head) or `chunk`
        placeholder positions that the continuous head fills in."""
        if self.config.head == "tokens":
            return Segment(Modality.ACTION, ids=action_ids + self.action_offset, loss=True)
        ids = torch.full((self.config.chunk,), self.action_offset + self.num_bins // 2)
        return Segment(Modality.ACTION, ids=ids)

    def training_batch(
        self, prefixes: list[list[Segment]], action_ids: torch.Tensor, action_mask: torch.Tensor
    ) -> MultimodalBatch:
        """Batch of prefixes followed by the action positions; for the tokens head, targets are
        the bins (B, chunk*D) and masked bins carry no loss."""
        samples = [prefix + [self.action_segment(ids)] for prefix, ids in zip(prefixes, action_ids)]
        length = max(sum(len(s) for s in sample) for sample in samples)
        batch = self.builder.build(samples, length, pack=False)
        if self.config.head != "tokens":
            return open_action_block(batch)
        # The marker and action positions are the last chunk*D+1 of each row's sample.
        ends = (batch.sample_ids > 0).sum(dim=1)  # (B,)
        width = action_ids.shape[1]
        rows = torch.arange(len(samples))[:, None]
        columns = ends[:, None] - width - 1 + torch.arange(width)[None]  # predicting positions
        batch.targets[rows, columns] = torch.where(
            action_mask, batch.targets[rows, columns], IGNORE_INDEX
        )
        return batch

    def forward(
        self, batch: MultimodalBatch | ActionBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The head's loss: cross-entropy over the action bins (tokens), L1 on the normalized
        chunk (l1) or the flow-matching error (flow); (loss, info)."""
        if isinstance(batch, ActionBatch) and self.action_head is not None:
            return self._continuous_loss(batch)
        if isinstance(batch, ActionBatch):
            batch = batch.tokens
        if self.training:
            batch = self._augment(batch)
        out = self.model(batch)
        valid = batch.targets != IGNORE_INDEX  # (B, L)
        if not bool(valid.any()):
            raise ValueError("the batch has no action targets")
        logits = out["logits"][valid][:, self.action_offset : self.action_offset + self.num_bins]
        bins = batch.targets[valid] - self.action_offset
        if bool(((bins < 0) | (bins >= self.num_bins)).any()):
            raise ValueError("targets must be action tokens")
        loss = nn.functional.cross_entropy(logits.float(), bins)
        accuracy = (logits.argmax(-1) == bins).float().mean()
        return loss + out["aux_loss"], {"action_loss": loss.detach(), "action_accuracy": accuracy}

    def _head_outputs(
        self,
        batch: MultimodalBatch,
        noisy: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the backbone with the head's inputs at the action positions; returns the head's
        output (B, chunk, D) and the backbone's auxiliary loss."""
        model = base_model(self.model)
        x = model.embed_batch(batch)
        where = batch.modality == int(Modality.ACTION)  # (B, L): `chunk` positions per row
        rows = batch.input_ids.shape[0]
        if int(where.sum()) != rows * self.config.chunk:
            raise ValueError(f"every row needs {self.config.chunk} action positions")
        extra = self.action_head.inputs(rows, noisy, t).to(x.dtype).reshape(-1, x.shape[-1])
        x = x.masked_scatter(where[..., None], (x[where] + extra))
        hidden, moe_aux = model.backbone(x, batch.positions, batch.attention_mask)
        return self.action_head(hidden[where].view(rows, self.config.chunk, -1)), moe_aux

    def _continuous_loss(self, batch: ActionBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tokens = self._augment(batch.tokens) if self.training else batch.tokens
        target, mask = batch.actions, batch.mask[..., None].float()  # (B, C, D), (B, C, 1)
        if self.config.head == "l1":
            predicted, aux = self._head_outputs(tokens)
            error = (predicted - target).abs()
            loss = (error * mask).sum() / (mask.sum() * self.action_dim).clamp_min(1)
            return loss + aux, {"action_loss": loss.detach(), "l1": loss.detach()}
        rows = target.shape[0]
        t = sample_flow_time(rows).to(target.device)
        noise = torch.randn_like(target)
        noisy = t[:, None, None] * noise + (1 - t[:, None, None]) * target
        velocity, aux = self._head_outputs(tokens, noisy, t)
        error = (velocity - (noise - target)).square()
        loss = (error * mask).sum() / (mask.sum() * self.action_dim).clamp_min(1)
        return loss + aux, {"action_loss": loss.detach(), "flow_mse": loss.detach()}

    def _augment(self, batch: MultimodalBatch) -> MultimodalBatch:
        """The batch with training noise added to its state and image features."""
        noise = {"state": self.config.state_noise, "image": self.config.patch_noise}
        features = dict(batch.features)
        for key, scale in noise.items():
            if scale and key in features:
                features[key] = features[key] + scale * torch.randn_like(features[key])
        return dataclasses.replace(batch, features=features)

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict_chunk(
        self, observation: dict[str, Any], use_cache: bool | None = None
    ) -> np.ndarray:
        """The next `chunk` actions: float32 (chunk, D) in [-1, 1]."""
        if self.action_head is not None:
            return self.predict_chunks([observation])[0]
        use_cache = self.config.use_cache if use_cache is None else use_cache
        prefix = self.prefix_segments(observation)
        total = self.config.chunk * self.action_dim
        batch = self.builder.build([prefix], sum(len(s) for s in prefix), pack=False)
        prefix_len = batch.input_ids.shape[1]
        generated: list[int] = []
        if use_cache:
            model = self.model
            cache = model.new_cache(1, prefix_len + total)
            logits = model.prefill(batch, cache)["logits"][:, -1]
            for step in range(total):
                token = self._greedy(logits)
                generated.append(token)
                if step + 1 == total:
                    break
                positions = torch.tensor([[[prefix_len + step, 0, 0]]])
                ids = torch.tensor([[token + self.action_offset]])
                logits = model.decode(ids, positions, cache)["logits"][:, -1]
        else:
            for _ in range(total):
                ids = torch.tensor(generated, dtype=torch.long) + self.action_offset
                sample = prefix + ([Segment(Modality.ACTION, ids=ids)] if generated else [])
                full = self.builder.build([sample], prefix_len + len(generated), pack=False)
                generated.append(self._greedy(self.model(full)["logits"][:, -1]))
        bins = torch.tensor(generated).view(self.config.chunk, self.action_dim)
        actions = self.builder.action_tokenizer.decode(bins).clamp(-1.0, 1.0)
        return actions.numpy().astype(np.float32)

    @torch.no_grad()
    def predict_chunks(
        self, observations: list[dict[str, Any]], noise: torch.Tensor | None = None
    ) -> np.ndarray:
        """Chunks of K observations at once: float32 (K, chunk, D) in [-1, 1]. The continuous
        heads run the K prefixes as one batch; the tokens head decodes them one by one. The flow
        head starts from `noise` (K, chunk, D) when given, else from the policy's generator."""
        if not observations:
            raise ValueError("predict_chunks needs at least one observation")
        if self.action_head is None:
            if len(observations) == 1 or not self.config.use_cache:
                return np.stack([self.predict_chunk(o) for o in observations])
            return self._decode_batch(observations)
        prefixes = [self.prefix_segments(o) for o in observations]
        if self.config.head == "l1":
            unit, _ = self._head_outputs(self._action_batch(prefixes))
        else:
            shape = (len(prefixes), self.config.chunk, self.action_dim)
            unit = torch.randn(shape, generator=self.generator) if noise is None else noise
            if unit.shape != shape:
                raise ValueError(f"noise must have shape {shape}, got {tuple(unit.shape)}")
            integrate = self._cached_flow if self.config.use_cache else self._uncached_flow
            unit = integrate(prefixes, unit)
        actions = self.unnormalize_actions(unit.clamp(-1.5, 1.5)).clamp(-1.0, 1.0)
        return actions.numpy().astype(np.float32)

    def _action_batch(self, prefixes: list[list[Segment]]) -> MultimodalBatch:
        """The prefixes followed by the continuous head's `chunk` action positions."""
        samples = [prefix + [self.action_segment()] for prefix in prefixes]
        length = max(sum(len(s) for s in sample) for sample in samples)
        return open_action_block(self.builder.build(samples, length, pack=False))

    def _decode_batch(self, observations: list[dict[str, Any]]) -> np.ndarray:
        """Greedy KV-cached decoding of K prefixes of different lengths at once (the tokens head):
        rows are padded at the end, and each decoded token sits at its own row's next position
        and attends to that row's prefix and decoded tokens only."""
        model = base_model(self.model)
        prefixes = [self.prefix_segments(o) for o in observations]
        batch = self.builder.build(prefixes, max(sum(map(len, p)) for p in prefixes), pack=False)
        rows, width = batch.input_ids.shape
        total = self.config.chunk * self.action_dim
        cache = model.new_cache(rows, width + total)
        logits = model.prefill(batch, cache)["logits"]
        lengths = (batch.sample_ids > 0).sum(dim=1)  # (K,)
        logits = logits[torch.arange(rows), lengths - 1]  # (K, V) at each row's marker
        keys = batch.sample_ids > 0  # (K, width): the keys each row may see, grown per step
        bins = self.action_offset + torch.arange(self.num_bins)
        generated = []
        for step in range(total):
            token = logits[:, bins].argmax(-1)  # (K,)
            generated.append(token)
            if step + 1 == total:
                break
            keys = torch.cat([keys, torch.ones(rows, 1, dtype=torch.bool)], dim=1)
            positions = token_positions(lengths + step)
            x = model.embed(token[:, None] + self.action_offset)
            x = x + model.modality_embed.weight[int(Modality.ACTION)]
            hidden, _ = model.backbone(x, positions, keys[:, None, :], cache)
            logits = model.lm_head(hidden)[:, -1]
        tokens = torch.stack(generated, dim=1).view(rows, self.config.chunk, self.action_dim)
        actions = self.builder.action_tokenizer.decode(tokens).clamp(-1.0, 1.0)
        return actions.numpy().astype(np.float32)

    def _uncached_flow(self, prefixes: list[list[Segment]], unit: torch.Tensor) -> torch.Tensor:
        """Euler integration of the flow head from `unit` (K, chunk, D) at t = 1 to t = 0, each
        step one forward pass over the whole sequence (the reference for `_cached_flow`)."""
        batch, steps = self._action_batch(prefixes), self.config.flow_steps
        for k in range(steps):
            t = torch.full((len(prefixes),), 1.0 - k / steps)
            unit = unit - self._head_outputs(batch, unit, t)[0] / steps
        return unit

    def _cached_flow(self, prefixes: list[list[Segment]], unit: torch.Tensor) -> torch.Tensor:
        """`_uncached_flow` with only the `chunk` action positions run at each step, over the
        prefix's keys and values computed once (the prefix never attends to the actions). What
        the steps share is computed once too: the action positions' rotary angles and mask, their
        embeddings, the query and time inputs of every step (the flow times are known ahead)."""
        model, head = base_model(self.model), self.action_head
        prefix = self.builder.build(prefixes, max(sum(map(len, p)) for p in prefixes), pack=False)
        rows, width = prefix.input_ids.shape
        chunk, steps = self.config.chunk, self.config.flow_steps
        cache = model.new_cache(rows, width + chunk)
        model.backbone.fill_cache(
            model.embed_batch(prefix), prefix.positions, prefix.attention_mask, cache
        )
        # The action segment continues each row's positions after its prefix (SequenceBuilder).
        lengths = (prefix.sample_ids > 0).sum(dim=1)  # (K,)
        positions = token_positions((lengths[:, None] + torch.arange(chunk)).flatten())
        positions = positions.view(rows, chunk, 3)
        keys = torch.cat([prefix.sample_ids > 0, torch.ones(rows, chunk, dtype=torch.bool)], 1)
        mask = keys[:, None, :].expand(rows, chunk, width + chunk)
        passes = PrefixPasses(model.backbone, positions, mask, cache)
        ids = self.action_segment().ids.expand(rows, chunk)
        embedded = model.embed(ids) + model.modality_embed.weight[int(Modality.ACTION)]
        times = torch.tensor([1.0 - k / steps for k in range(steps)])
        fixed = embedded + head.flow_inputs(times).to(embedded.dtype)[:, None]  # (S, K, chunk, D)
        if self.config.flow_compile:
            return _compiled_euler_steps()(head, unit, fixed, passes.arguments())
        for k in range(steps):
            x = fixed[k] + head.action_in(unit.to(fixed.dtype))
            unit = unit - head(passes(x)) / steps
        return unit

    def _greedy(self, logits: torch.Tensor) -> int:
        """Argmax over the action bins of (1, V) logits."""
        return int(logits[0, self.action_offset : self.action_offset + self.num_bins].argmax())

    # ------------------------------------------------------------------ files
    def save(self, run_dir: str | os.PathLike, adaptation: str = "full") -> None:
        """Write policy.json, the model with its tokenizers, and the LoRA adapter if any."""
        from fmmm.models.factory import builder_tokenizers
        from fmmm.policies.lora import base_state_dict, save_adapter

        run_dir = Path(run_dir)
        tokenizers = builder_tokenizers(self.builder)
        if is_lora(self.model):
            save_adapter(self.model, run_dir / ADAPTER_DIR)
            base = MultimodalModel(self.model.get_base_model().config)
            base.load_state_dict(base_state_dict(self.model))
            base.save_pretrained(run_dir / MODEL_DIR, tokenizers=tokenizers)
        else:
            self.model.save_pretrained(run_dir / MODEL_DIR, tokenizers=tokenizers)
        self.patch_normalizer.save(run_dir / MODEL_DIR / TOKENIZERS_DIR)
        if self.action_head is not None:
            from safetensors.torch import save

            state = {
                k: v.detach().cpu().contiguous() for k, v in self.action_head.state_dict().items()
            }
            atomic_write_bytes(run_dir / HEAD_FILE, save(state))
        spec = {"type": "vla", "adaptation": adaptation, **dataclasses.asdict(self.config)}
        if self.features:
            spec["features"] = self.features
        atomic_write_json(run_dir / POLICY_FILE, spec)

    def check_features(self, names: dict[str, Any], source: str) -> None:
        """Refuse data whose state or action dimensions are named differently from the ones the
        policy was trained on (the saved normalization statistics would be applied to the wrong
        dimensions); `names` maps feature -> per-dimension names, as datasets record them."""
        for feature, trained in (self.features or {}).items():
            given = names.get(feature)
            if trained is not None and given is not None and list(given) != list(trained):
                raise ValueError(
                    f"{source}: {feature} is {list(given)} but the policy was trained on "
                    f"{list(trained)}"
                )

    @classmethod
    def load(cls, run_dir: str | os.PathLike, merge: bool = True, **overrides: Any) -> VLA:
        """Load a saved VLA; a LoRA adapter is attached and, with `merge`, folded into the weights."""
        run_dir = Path(run_dir)
        spec_path = run_dir / POLICY_FILE
        if not spec_path.is_file():
            raise ValueError(f"{run_dir} has no {POLICY_FILE}")
        spec = json.loads(spec_path.read_text())
        return cls.from_spec(run_dir, spec, merge=merge, **overrides)

    @classmethod
    def from_spec(
        cls, run_dir: Path, spec: dict[str, Any], merge: bool = True, **overrides: Any
    ) -> VLA:
        """Build from a policy.json dict (with or without its "type" key)."""
        from fmmm.models.factory import load_model_and_builder
        from fmmm.policies.lora import load_adapter, merge_adapter

        fields = {f.name for f in dataclasses.fields(VLAConfig)}
        values = {k: v for k, v in spec.items() if k in fields}
        unknown = set(spec) - fields - {"type", "adaptation", "features"}
        if unknown:
            raise ValueError(
                f"{run_dir / POLICY_FILE} (with any --policy-option): unknown keys "
                f"{', '.join(sorted(unknown))}; a VLA policy has {', '.join(sorted(fields))}"
            )
        config = VLAConfig(**{**values, **overrides})
        model, builder = load_model_and_builder(run_dir / MODEL_DIR)
        if (run_dir / ADAPTER_DIR).is_dir():
            model = load_adapter(model, run_dir / ADAPTER_DIR)
            if merge:
                model = merge_adapter(model)
        model.eval()
        patch_normalizer = PatchNormalizer.load(run_dir / MODEL_DIR / TOKENIZERS_DIR)
        vla = cls(model, builder, config, patch_normalizer)
        vla.features = spec.get("features")
        if vla.action_head is not None:
            from safetensors.torch import load_file

            path = run_dir / HEAD_FILE
            if not path.is_file():
                raise ValueError(
                    f"{run_dir}: policy.head is {config.head!r} but {HEAD_FILE} is missing"
                )
            vla.action_head.load_state_dict(load_file(path))
        vla.eval()
        return vla


def _euler_steps(
    head: ContinuousActionHead, unit: torch.Tensor, fixed: torch.Tensor, arguments: tuple
) -> torch.Tensor:
    """`VLA._cached_flow`'s Euler steps as one function of tensors, for torch.compile to make one
    graph of (`flow_compile`): `fixed` (S, K, chunk, D) holds each step's inputs but the noisy
    actions', `arguments` the prefix passes' (`PrefixPasses.arguments`)."""
    steps = fixed.shape[0]
    for k in range(steps):
        x = fixed[k] + head.action_in(unit.to(fixed.dtype))
        unit = unit - head(prefix_pass(x, *arguments)) / steps
    return unit


@functools.cache
def _compiled_euler_steps() -> Any:
    return torch.compile(_euler_steps)


def is_lora(model: nn.Module) -> bool:
    """Whether `model` is wrapped with LoRA adapters (peft)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


class VLAPolicy:
    """The evaluation `Policy`: actions served from queues of predicted chunks, one queue per
    environment; `act_batch` predicts the chunks of every environment whose queue is empty in one
    batch (the continuous heads run them as one forward pass)."""

    def __init__(self, vla: VLA):
        self.vla = vla
        self.queues: list[deque[np.ndarray]] = [deque()]
        self.generators: list[torch.Generator] = []
        self.chunk = vla.config.chunk
        self.execute = vla.config.steps_per_chunk  # actions of each chunk served
        self.forward_passes_per_action = vla.forward_passes_per_chunk / vla.config.steps_per_chunk

    def seed(self, seed: int) -> None:
        """Seed the flow head's noise (other heads are deterministic)."""
        self.seed_index(0, seed)

    def seed_index(self, index: int, seed: int) -> None:
        """Seed the flow noise of environment `index`: each environment draws from its own
        generator, so its actions do not depend on how many environments share the batch."""
        while len(self.generators) <= index:
            self.generators.append(torch.Generator().manual_seed(len(self.generators)))
        self.generators[index].manual_seed(int(seed))

    def reset(self) -> None:
        for queue in self.queues:
            queue.clear()

    def reset_index(self, index: int) -> None:
        """Start a new episode in environment `index` of a batch."""
        while len(self.queues) <= index:
            self.queues.append(deque())
        self.queues[index].clear()

    def queued(self, index: int) -> int:
        """Actions queued for environment `index`, which `act_batch` serves without looking at
        its observation."""
        return len(self.queues[index]) if index < len(self.queues) else 0

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        return self.act_batch([observation], [0])[0]

    def act_batch(
        self, observations: list[dict[str, Any]], indices: list[int] | None = None
    ) -> np.ndarray:
        """Actions (K, D) for the environments `indices` (default 0..K-1) observing `observations`."""
        indices = list(range(len(observations))) if indices is None else list(indices)
        if len(indices) != len(observations):
            raise ValueError("act_batch needs one index per observation")
        for index in indices:
            self.reset_index(index) if index >= len(self.queues) else None
        empty = [k for k, index in enumerate(indices) if not self.queues[index]]
        if empty:
            noise = None
            if self.vla.config.head == "flow":
                shape = (self.vla.config.chunk, self.vla.action_dim)
                for k in empty:
                    self.seed_index(indices[k], 0) if len(self.generators) <= indices[k] else None
                generators = [self.generators[indices[k]] for k in empty]
                noise = torch.stack([torch.randn(shape, generator=g) for g in generators])
            chunks = self.vla.predict_chunks([observations[k] for k in empty], noise)
            for k, chunk in zip(empty, chunks):
                self.queues[indices[k]].extend(chunk[: self.vla.config.steps_per_chunk])
        return np.stack([self.queues[index].popleft() for index in indices])


@policy_registry.register("vla")
def load_vla(run_dir: Path | None, config: dict[str, Any]) -> PolicyFactory:
    """Factory of VLA policies sharing one loaded model (each env gets its own action queue)."""
    if run_dir is None:
        raise ValueError(
            "the vla policy needs a run directory (python -m fmmm.eval --policy RUN_DIR)"
        )
    vla = VLA.from_spec(Path(run_dir), config)

    def factory(env: Any) -> VLAPolicy:
        names = getattr(env, "feature_names", None)
        if names:
            vla.check_features(names, f"env {getattr(env, 'task_name', type(env).__name__)}")
        return VLAPolicy(vla)

    return factory
