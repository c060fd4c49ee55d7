"""MultimodalModel: modality encoders + Transformer backbone + LM head + pooled projection heads.

    model = MultimodalModel(MultimodalConfig(backbone=preset("debug")))
    out = model(batch)              # batch: fmmm.tokenizers.sequence.MultimodalBatch
    out["logits"]                   # (B, L, vocab_size): text ids, then action bins at action_offset
    out["loss"]                     # next-token cross-entropy on batch.targets + aux_loss

Incremental decoding (for VLA policies):

    cache = model.new_cache(batch_size, max_len)
    out = model.prefill(prefix_batch, cache)                     # logits for the prefix
    out = model.decode(next_ids, next_positions, cache)          # (B, T) ids, (B, T, 3) positions

Saved as `config.json` (with `model_type`) + `model.safetensors` + a model card `README.md` by
`save_pretrained(dir, card=...)`; `from_pretrained(dir_or_hub_id, torch_dtype=...)` loads, a hub
id from the local Hugging Face cache; `push_to_hub(repo_id)` uploads (see `fmmm.models.hub`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fmmm.models.backbone import KVCache, Transformer, TransformerConfig
from fmmm.models.embeddings import (
    ConvStem,
    PatchEmbedding,
    PooledProjection,
    StateEmbedding,
    TextEmbedding,
    VisionTower,
)
from fmmm.tokenizers.sequence import Modality

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
# config.json's model_type (folders saved before it say "model": "MultimodalModel" instead)
MODEL_TYPE = "fmmm_multimodal"
# config.json keys that describe the file rather than the MultimodalConfig
FILE_KEYS = ("model_type", "architectures", "torch_dtype", "fmmm_version", "model")
# MultimodalConfig fields ("backbone.<name>" for TransformerConfig's) added after models were
# first saved, with the value those older models had; every other field must be in config.json
SAVED_BEFORE = {
    "image_pos_embed": False,
    "vision_film": False,
    "conv_channels": 32,
    "film_text_positions": 0,
}
TOKENIZERS_DIR = "tokenizers"
POOLED = ("text", "image", "video", "audio", "state")


@dataclass
class MultimodalConfig:
    """Backbone shape, shared vocabulary and the tokenizer settings the encoders' inputs follow.

    A new field (here or in TransformerConfig) needs an entry in `SAVED_BEFORE`, or models saved
    before it no longer load.
    """

    backbone: TransformerConfig = field(default_factory=TransformerConfig)
    text_vocab_size: int = 1024
    action_bins: int = 256
    image_size: int = 64
    patch_size: int = 8
    video_tubelet: int = 2
    audio_features: int = 256  # n_mels * frames_per_patch of the audio tokenizer
    state_dim: int = 0  # 0: no state encoder
    embed_dim: int = 256  # width of the pooled contrastive embeddings
    z_loss_weight: float = 0.0  # weight of mean(logsumexp(logits)^2) (Chameleon / PaLM z-loss)
    tie_embeddings: bool = False
    # "": linear patch embedding (ViT); "conv": convolutional stem (ConvStem); or a pretrained
    # tower "timm:<name>" / "open_clip:<name>".
    vision_tower: str = ""
    # With vision_tower "conv": FiLM-condition the stem on the mean embedding of each sample's
    # prefix text (the instruction), as RT-1's language-conditioned image tokenizer.
    vision_film: bool = False
    # With vision_film: the first `film_text_positions` positions of the instruction weight their
    # token embeddings in that mean with a learned per-position gate (later positions share the
    # last gate), so the condition tells "stack the red cube on the green cube" from "... the
    # green cube on the red cube". 0: a plain mean, blind to word order (models saved before it).
    film_text_positions: int = 32
    conv_channels: int = 32  # width of the conv stem's first convolution (doubles per stride)
    vision_tower_weights: str = ""  # "", "pretrained" or a checkpoint path (see VisionTower)
    # Learned absolute position embedding per image patch (ViT); models saved before it existed
    # load with False.
    image_pos_embed: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = TransformerConfig(**self.backbone)
        # Upper bounds far past any model trained today: larger values are typos, refused before
        # an embedding table or a parameter count tries to honour them.
        for name, limit in (
            ("text_vocab_size", 2**24),
            ("image_size", 2**14),
            ("patch_size", 2**10),
            ("video_tubelet", 2**10),
            ("audio_features", 2**16),
            ("embed_dim", 2**16),
            ("conv_channels", 2**12),
        ):
            if not 0 < getattr(self, name) <= limit:
                raise ValueError(f"{name} must be in [1, {limit}], got {getattr(self, name)}")
        for name, limit in (
            ("action_bins", 2**16),
            ("state_dim", 2**16),
            ("film_text_positions", 2**12),
        ):
            if not 0 <= getattr(self, name) <= limit:
                raise ValueError(f"{name} must be in [0, {limit}], got {getattr(self, name)}")
        if not math.isfinite(self.z_loss_weight):
            raise ValueError(f"z_loss_weight must be a finite number, got {self.z_loss_weight}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.vision_film and self.vision_tower != "conv":
            raise ValueError("vision_film needs vision_tower='conv'")
        if self.z_loss_weight < 0:
            raise ValueError(f"z_loss_weight must be >= 0, got {self.z_loss_weight}")

    @property
    def vocab_size(self) -> int:
        return self.text_vocab_size + self.action_bins

    @property
    def action_offset(self) -> int:
        return self.text_vocab_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class MultimodalModel(nn.Module):
    """One backbone over every modality; see the module docstring for the API."""

    def __init__(self, config: MultimodalConfig):
        super().__init__()
        self.config = config
        dim, patch = config.backbone.dim, config.patch_size
        self.embed = TextEmbedding(config.vocab_size, dim, config.backbone.init_std)
        self.modality_embed = nn.Embedding(len(Modality), dim)
        nn.init.zeros_(self.modality_embed.weight)
        encoders: dict[str, nn.Module] = {
            "video": PatchEmbedding(config.video_tubelet * 3 * patch * patch, dim),
            "audio": PatchEmbedding(config.audio_features, dim),
        }
        if config.vision_tower == "conv":
            encoders["image"] = ConvStem(
                dim,
                config.image_size,
                patch,
                channels=config.conv_channels,
                init_std=config.backbone.init_std,
                film=config.vision_film,
            )
        elif config.vision_tower:
            encoders["image"] = VisionTower(
                config.vision_tower, dim, config.image_size, patch, config.vision_tower_weights
            )
        else:
            grid = (config.image_size // patch) ** 2 if config.image_pos_embed else 0
            encoders["image"] = PatchEmbedding(
                3 * patch * patch, dim, grid, config.backbone.init_std
            )
        if config.state_dim:
            encoders["state"] = StateEmbedding(config.state_dim, dim)
        self.encoders = nn.ModuleDict(encoders)
        # Per-position gates of the FiLM condition's text mean; zero: a plain mean until trained.
        self.film_text_gates = (
            nn.Parameter(torch.zeros(config.film_text_positions, dim))
            if config.vision_film and config.film_text_positions
            else None
        )
        self.backbone = Transformer(config.backbone)
        self.lm_head = nn.Linear(dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        else:
            nn.init.normal_(self.lm_head.weight, std=config.backbone.init_std)
        self.pooled_heads = nn.ModuleDict(
            {m: PooledProjection(dim, config.embed_dim) for m in POOLED}
        )

    @property
    def action_offset(self) -> int:
        """Id of action bin 0 in the shared vocabulary (logits[..., action_offset:] are the bins)."""
        return self.config.action_offset

    def embed_batch(self, batch: Any) -> torch.Tensor:
        """Token embeddings (B, L, D): discrete ids embedded, continuous features scattered in."""
        ids, modality = batch.input_ids, batch.modality
        if ids.shape != modality.shape or ids.dim() != 2:
            raise ValueError(
                f"input_ids {tuple(ids.shape)} and modality {tuple(modality.shape)} must be equal (B, L)"
            )
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"input_ids must lie in [0, {self.config.vocab_size})")
        tokens = self.embed(ids)
        x = tokens + self.modality_embed(modality)  # (B, L, D)
        for name, features in batch.features.items():
            if name not in self.encoders:
                raise ValueError(f"batch has {name!r} features but the model has no {name} encoder")
            where = (modality == int(Modality[name.upper()])).nonzero(as_tuple=True)
            if features.shape[0] != where[0].numel():
                raise ValueError(
                    f"features[{name!r}] has {features.shape[0]} rows for {where[0].numel()} {name} positions"
                )
            if not torch.isfinite(features).all():
                raise ValueError(f"features[{name!r}] contains NaN or inf")
            if name == "image" and self.config.vision_film:
                condition = self._image_condition(batch, tokens, where)
                encoded = self.encoders[name](features.to(x.dtype), condition.to(x.dtype))
            else:
                encoded = self.encoders[name](features.to(x.dtype))  # (N_m, D)
            x = x.index_put(where, x[where] + encoded)
        return x

    def _image_condition(
        self, batch: Any, tokens: torch.Tensor, where: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """(n_images, D) FiLM condition of each image: the mean token embedding of its own
        sample's prefix text (zeros when it has none), each token gated by its position in that
        text (`film_text_positions`); packed samples never see each other's."""
        sample_ids = batch.sample_ids
        per_row = int(sample_ids.max()) + 1 if sample_ids.numel() else 1
        rows = torch.arange(sample_ids.shape[0], device=sample_ids.device)
        keys = rows[:, None] * per_row + sample_ids  # (B, L): one key per (row, sample)
        text = (batch.modality == int(Modality.TEXT)) & batch.prefix & (sample_ids > 0)
        weights = text.flatten().to(tokens.dtype)
        size = sample_ids.shape[0] * per_row
        if self.film_text_gates is not None:
            order = _text_order(text, keys, size).clamp_max(self.film_text_gates.shape[0] - 1)
            tokens = tokens * (1 + self.film_text_gates.to(tokens.dtype)[order])
        sums = tokens.new_zeros(size, tokens.shape[-1]).index_add_(
            0, keys.flatten(), tokens.flatten(0, 1) * weights[:, None]
        )
        counts = tokens.new_zeros(size).index_add_(0, keys.flatten(), weights)
        means = sums / counts.clamp_min(1.0)[:, None]
        per_image = (self.config.image_size // self.config.patch_size) ** 2
        first = (where[0][::per_image], where[1][::per_image])  # each image's first patch
        return means[keys[first]]

    @staticmethod
    def _mask(batch: Any) -> torch.Tensor | None:
        """None when the batch is one unpadded causal sample per row (fast SDPA path)."""
        if bool((batch.sample_ids == 1).all()) and not bool(batch.prefix.any()):
            return None
        return batch.attention_mask

    def _outputs(
        self, hidden: torch.Tensor, moe_aux: torch.Tensor, targets: torch.Tensor | None
    ) -> dict:
        logits = self.lm_head(hidden)  # (B, L, V)
        out = {"hidden": hidden, "logits": logits, "moe_aux_loss": moe_aux}
        aux = moe_aux
        if targets is not None and bool((targets != -100).any()):
            valid = targets != -100
            flat_logits = logits.float()
            out["ce_loss"] = F.cross_entropy(flat_logits[valid], targets[valid])
            if self.config.z_loss_weight:
                z_loss = flat_logits[valid].logsumexp(-1).square().mean()
                out["z_loss"] = z_loss
                aux = aux + self.config.z_loss_weight * z_loss
            out["loss"] = out["ce_loss"] + aux
        out["aux_loss"] = aux
        return out

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        """Run a `MultimodalBatch`.

        Returns `hidden` (B, L, D), `logits` (B, L, V), `aux_loss` (MoE balance + z-loss, scalar),
        `moe_aux_loss`, and when any target is set `ce_loss`, `z_loss` (if enabled) and `loss`.
        """
        x = self.embed_batch(batch)
        hidden, moe_aux = self.backbone(x, batch.positions, self._mask(batch))
        return self._outputs(hidden, moe_aux, batch.targets)

    def embed_pooled(self, batch: Any, modality: str) -> torch.Tensor:
        """L2-normalized embeddings (B, embed_dim) of a one-sample-per-row batch of `modality`."""
        if modality not in self.pooled_heads:
            raise ValueError(f"modality must be one of {', '.join(POOLED)}, got {modality!r}")
        x = self.embed_batch(batch)
        hidden, _ = self.backbone(x, batch.positions, self._mask(batch))
        valid = batch.modality == int(Modality[modality.upper()])  # (B, L)
        return self.pooled_heads[modality](hidden, valid)

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache on the model's device and dtype."""
        weight = self.lm_head.weight
        return KVCache(self.config.backbone, batch_size, max_len, weight.device, weight.dtype)

    def prefill(self, batch: Any, cache: KVCache) -> dict[str, torch.Tensor]:
        """Run a prefix batch into an empty `cache` (its own masks and positions); outputs as forward."""
        if cache.length:
            raise ValueError("prefill needs an empty cache")
        x = self.embed_batch(batch)
        hidden, moe_aux = self.backbone(x, batch.positions, self._mask(batch), cache)
        return self._outputs(hidden, moe_aux, None)

    def decode(
        self,
        input_ids: torch.Tensor,  # (B, T) long, in the shared vocabulary
        positions: torch.Tensor,  # (B, T, 3) long, e.g. (t, 0, 0) continuing the prefix
        cache: KVCache,
        modality: int = int(Modality.ACTION),
    ) -> dict[str, torch.Tensor]:
        """Append T discrete tokens after the cached ones (causal over the cache); returns
        `hidden` (B, T, D) and `logits` (B, T, V)."""
        if cache.length == 0:
            raise ValueError("decode needs a prefilled cache")
        if input_ids.numel() and (input_ids.min() < 0 or input_ids.max() >= self.config.vocab_size):
            raise ValueError(f"input_ids must lie in [0, {self.config.vocab_size})")
        x = self.embed(input_ids) + self.modality_embed.weight[modality]
        hidden, moe_aux = self.backbone(x, positions, None, cache)
        return self._outputs(hidden, moe_aux, None)

    def save_pretrained(
        self,
        directory: str | os.PathLike,
        tokenizers: dict[str, Any] | None = None,
        card: dict[str, Any] | None = None,
    ) -> None:
        """Write config.json, model.safetensors and the model card README.md into `directory`
        (other files there are kept).

        `tokenizers` ({"text": ..., "image": ..., ...}) are saved beside the weights in
        `directory/tokenizers/<name>/`, where `fmmm.encoders.load` finds them. `card` adds to the
        model card: "training_data", "evaluation", "commands", "title", "description" (JSON data;
        see `fmmm.models.hub.model_card_text`).
        """
        from safetensors.torch import save

        import fmmm
        from fmmm.models.hub import write_model_card
        from fmmm.utils.io import atomic_write_bytes, atomic_write_json

        directory = Path(directory)
        for name, tokenizer in (tokenizers or {}).items():
            tokenizer.save(directory / TOKENIZERS_DIR / name)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        if self.config.tie_embeddings:
            state.pop("lm_head.weight")
        atomic_write_bytes(directory / WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
        dtype = str(self.lm_head.weight.dtype).removeprefix("torch.")
        config = {
            "model_type": MODEL_TYPE,
            "architectures": [type(self).__name__],
            "torch_dtype": dtype,
            "fmmm_version": fmmm.__version__,
            **self.config.to_dict(),
        }
        atomic_write_json(directory / CONFIG_FILE, config)
        write_model_card(directory, config, card)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        device: str | torch.device = "cpu",
        torch_dtype: torch.dtype | str | None = None,
    ) -> MultimodalModel:
        """Load a model written by `save_pretrained` (pretrained tower weights are not re-fetched).

        Args:
            name_or_path: a saved folder, or a hub id (`org/name[@revision]`) in the local
                Hugging Face cache (never downloaded).
            torch_dtype: parameter dtype (`torch.bfloat16`, "float16", ...); "auto" keeps the
                saved one; None gives float32.
        """
        from safetensors.torch import load_file

        from fmmm.models.hub import resolve_model_dir

        directory = resolve_model_dir(name_or_path)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise ValueError(f"{directory} has no {name}; not a saved MultimodalModel")
        raw = _read_config(directory / CONFIG_FILE)
        dtype = _dtype(raw.get("torch_dtype", "float32") if torch_dtype == "auto" else torch_dtype)
        model = cls(_saved_config(raw, directory / CONFIG_FILE))
        state = load_file(directory / WEIGHTS_FILE, device=str(device))
        if model.config.tie_embeddings:
            state["lm_head.weight"] = state["embed.weight"]
        model.load_state_dict(state)
        return model.to(device=device, dtype=dtype)

    def push_to_hub(
        self,
        repo_id: str,
        tokenizers: dict[str, Any] | None = None,
        card: dict[str, Any] | None = None,
        private: bool | None = None,
    ) -> str:
        """Save (as `save_pretrained`) and upload to the Hub repository `repo_id`; returns its url.

        Only on this explicit call; offline or on a network failure, RuntimeError in one line.
        """
        import tempfile

        from fmmm.models.hub import push_folder

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, tokenizers=tokenizers, card=card)
            return push_folder(tmp, repo_id, private=private)


def _text_order(text: torch.Tensor, keys: torch.Tensor, size: int) -> torch.Tensor:
    """(B, L) index of each text position among its own sample's text positions (0, 1, ...);
    0 elsewhere. `keys` (B, L) names each position's (row, sample), `size` bounds the keys."""
    text = text.long()
    before = text.cumsum(1) - text  # text positions earlier in the row
    past_end = text.shape[1] * text.shape[0] + 1
    first = torch.full((size,), past_end, dtype=before.dtype, device=before.device)
    first = first.scatter_reduce(
        0, keys.flatten(), torch.where(text.bool(), before, past_end).flatten(), "amin"
    )
    return torch.where(text.bool(), before - first[keys], 0)


def _read_config(path: Path) -> dict[str, Any]:
    """The JSON object in a saved model's config.json; ValueError naming the file otherwise."""
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or (
        raw.get("model_type") != MODEL_TYPE and raw.get("model") != "MultimodalModel"
    ):
        raise ValueError(f"{path} does not describe a MultimodalModel")
    return raw


def _saved_config(raw: dict[str, Any], path: Path) -> MultimodalConfig:
    """The MultimodalConfig a saved config.json describes.

    Every field is required: a default in place of a missing field builds a model of another
    shape, whose weights then fail to load far from the cause. Only the fields in `SAVED_BEFORE`
    fall back, to the value the models saved before them were trained with.
    """
    fields = {k: v for k, v in raw.items() if k not in FILE_KEYS}
    fields["vision_tower_weights"] = ""  # a pretrained tower's weights are in model.safetensors
    problems = _field_problems(fields, MultimodalConfig, "")
    backbone = fields.get("backbone")
    if isinstance(backbone, dict):
        problems += _field_problems(backbone, TransformerConfig, "backbone.")
    elif backbone is not None:
        problems.append(f"backbone must be a JSON object, got {backbone!r}")
    if problems:
        raise ValueError(f"{path} does not describe a MultimodalConfig: {', '.join(problems)}")
    try:
        return MultimodalConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _field_problems(given: dict[str, Any], config_class: type, prefix: str) -> list[str]:
    """Fill `given` from `SAVED_BEFORE`; list the fields of `config_class` it lacks or has extra."""
    for name, value in SAVED_BEFORE.items():
        if name.startswith(prefix) and "." not in name.removeprefix(prefix):
            given.setdefault(name.removeprefix(prefix), value)
    expected = {f.name for f in dataclasses.fields(config_class)}
    return [f"missing {prefix}{name}" for name in sorted(expected - given.keys())] + [
        f"unknown {prefix}{name}" for name in sorted(given.keys() - expected)
    ]


def _dtype(value: torch.dtype | str | None) -> torch.dtype:
    """A torch dtype from a dtype or its name ("bfloat16", "torch.float16"); None is float32."""
    if value is None:
        return torch.float32
    if isinstance(value, torch.dtype):
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"torch_dtype must be a floating dtype or 'auto', got {value!r}")
    return dtype
