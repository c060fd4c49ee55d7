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
import json
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fmmm.models.multimodal import TOKENIZERS_DIR, MultimodalModel
from fmmm.policies.factory import PolicyFactory, policy_registry
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

    def __post_init__(self) -> None:
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


class VLA(nn.Module):
    """MultimodalModel + tokenizers: training loss on action tokens and chunk prediction."""

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
        patches = [segment for segment in segments if segment.modality == Modality.IMAGE]
        for camera, segment in zip(self.config.cameras, patches):
            segment.features = self.patch_normalizer(camera, segment.features)
        return segments

    def training_batch(
        self, prefixes: list[list[Segment]], action_ids: torch.Tensor, action_mask: torch.Tensor
    ) -> MultimodalBatch:
        """Batch of prefixes followed by action bins (B, chunk*D); masked bins carry no loss."""
        samples = []
        for prefix, ids in zip(prefixes, action_ids):
            samples.append(
                prefix + [Segment(Modality.ACTION, ids=ids + self.action_offset, loss=True)]
            )
        length = max(sum(len(s) for s in sample) for sample in samples)
        batch = self.builder.build(samples, length, pack=False)
        # The marker and action positions are the last chunk*D+1 of each row's sample.
        ends = (batch.sample_ids > 0).sum(dim=1)  # (B,)
        width = action_ids.shape[1]
        rows = torch.arange(len(samples))[:, None]
        columns = ends[:, None] - width - 1 + torch.arange(width)[None]  # predicting positions
        batch.targets[rows, columns] = torch.where(
            action_mask, batch.targets[rows, columns], IGNORE_INDEX
        )
        return batch

    def forward(self, batch: MultimodalBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy over the action bins at every action target; (loss, info)."""
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
        """Greedy decoding of the next `chunk` actions: float32 (chunk, D) in [-1, 1]."""
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
        spec = {"type": "vla", "adaptation": adaptation, **dataclasses.asdict(self.config)}
        atomic_write_json(run_dir / POLICY_FILE, spec)

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
        unknown = set(spec) - fields - {"type", "adaptation"}
        if unknown:
            raise ValueError(f"{run_dir / POLICY_FILE}: unknown keys {', '.join(sorted(unknown))}")
        config = VLAConfig(**{**values, **overrides})
        model, builder = load_model_and_builder(run_dir / MODEL_DIR)
        if (run_dir / ADAPTER_DIR).is_dir():
            model = load_adapter(model, run_dir / ADAPTER_DIR)
            if merge:
                model = merge_adapter(model)
        model.eval()
        patch_normalizer = PatchNormalizer.load(run_dir / MODEL_DIR / TOKENIZERS_DIR)
        return cls(model, builder, config, patch_normalizer)


def is_lora(model: nn.Module) -> bool:
    """Whether `model` is wrapped with LoRA adapters (peft)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


class VLAPolicy:
    """The evaluation `Policy`: actions served from a queue of predicted chunks."""

    def __init__(self, vla: VLA):
        self.vla = vla
        self.queue: deque[np.ndarray] = deque()

    def reset(self) -> None:
        self.queue.clear()

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        if not self.queue:
            chunk = self.vla.predict_chunk(observation)
            self.queue.extend(chunk[: self.vla.config.steps_per_chunk])
        return self.queue.popleft()


@policy_registry.register("vla")
def load_vla(run_dir: Path | None, config: dict[str, Any]) -> PolicyFactory:
    """Factory of VLA policies sharing one loaded model (each env gets its own action queue)."""
    if run_dir is None:
        raise ValueError(
            "the vla policy needs a run directory (python -m fmmm.eval --policy RUN_DIR)"
        )
    vla = VLA.from_spec(Path(run_dir), config)

    def factory(env: Any) -> VLAPolicy:
        return VLAPolicy(vla)

    return factory
