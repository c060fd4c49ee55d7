"""Modality encoders: tokenizer output -> backbone-width tokens, plus pooled projection heads.

Each encoder is a standalone `nn.Module`:
- `TextEmbedding`: token ids (B, L) -> (B, L, D) (also the shared text + action-bin vocabulary).
- `PatchEmbedding`: image / video patches and audio frames (..., F) -> (..., D).
- `ActionEmbedding`: discretized actions (..., A) long in [0, bins) -> (..., A, D).
- `StateEmbedding`: proprioceptive state (..., S) float -> (..., D).
- `VisionTower`: a pretrained timm / open_clip ViT by name ("timm:vit_small_patch16_224",
  "open_clip:ViT-B-32") from patches (n_images * N, 3*p*p) -> (n_images * N, D).
- `PooledProjection`: masked mean of tokens (B, L, D) -> L2-normalized (B, E) for contrastive use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TextEmbedding(nn.Module):
    """Token ids (B, L) long -> embeddings (B, L, D)."""

    def __init__(self, vocab_size: int, dim: int, init_std: float = 0.02):
        super().__init__()
        if vocab_size <= 0 or dim <= 0:
            raise ValueError(f"vocab_size and dim must be positive, got {vocab_size}, {dim}")
        self.vocab_size = vocab_size
        self.weight = nn.Parameter(torch.randn(vocab_size, dim) * init_std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class PatchEmbedding(nn.Module):
    """Flattened patches or audio frames (..., F) float -> (..., D): a linear map, as in ViT."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        if in_features <= 0 or dim <= 0:
            raise ValueError(f"in_features and dim must be positive, got {in_features}, {dim}")
        self.in_features = in_features
        self.proj = nn.Linear(in_features, dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if patches.shape[-1] != self.in_features:
            raise ValueError(
                f"expected patches with {self.in_features} features, got {tuple(patches.shape)}"
            )
        return self.proj(patches)


class ActionEmbedding(nn.Module):
    """Action bins (..., A) long in [0, num_bins) -> (..., A, D): bin embedding + dimension embedding."""

    def __init__(self, num_bins: int, action_dim: int, dim: int, init_std: float = 0.02):
        super().__init__()
        if num_bins <= 1 or action_dim <= 0:
            raise ValueError(f"need num_bins > 1 and action_dim > 0, got {num_bins}, {action_dim}")
        self.num_bins, self.action_dim = num_bins, action_dim
        self.bins = nn.Parameter(torch.randn(num_bins, dim) * init_std)
        self.dims = nn.Parameter(torch.randn(action_dim, dim) * init_std)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] != self.action_dim or tokens.dtype != torch.long:
            raise ValueError(
                f"expected long tokens (..., {self.action_dim}), got {tokens.dtype} {tuple(tokens.shape)}"
            )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.num_bins):
            raise ValueError(f"action tokens must lie in [0, {self.num_bins})")
        return F.embedding(tokens, self.bins) + self.dims


class StateEmbedding(nn.Module):
    """Proprioceptive state (..., S) float -> (..., D) through a two-layer SiLU MLP."""

    def __init__(self, state_dim: int, dim: int):
        super().__init__()
        if state_dim <= 0 or dim <= 0:
            raise ValueError(f"state_dim and dim must be positive, got {state_dim}, {dim}")
        self.state_dim = state_dim
        self.net = nn.Sequential(nn.Linear(state_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if state.shape[-1] != self.state_dim:
            raise ValueError(f"expected state (..., {self.state_dim}), got {tuple(state.shape)}")
        return self.net(state)


class PooledProjection(nn.Module):
    """Tokens (B, L, D) and a validity mask (B, L) -> L2-normalized pooled embedding (B, E)."""

    def __init__(self, dim: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, embed_dim, bias=False)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            pooled = tokens.mean(dim=1)
        else:
            if not mask.any(dim=1).all():
                raise ValueError("every row needs at least one valid token to pool")
            weights = mask.to(tokens.dtype)[..., None]  # (B, L, 1)
            pooled = (tokens * weights).sum(1) / weights.sum(1)
        return F.normalize(self.proj(pooled), dim=-1)


class VisionTower(nn.Module):
    """A timm or open_clip ViT named "timm:<model>" or "open_clip:<model>" as a patch encoder.

    It takes the tokenizer's patches (rows of consecutive images, each flattened (c, y, x)),
    rebuilds the images, runs the tower and projects its patch tokens to width `dim`. The tower's
    patch size must equal the tokenizer's. `weights`: "" random init (tests), "pretrained" the
    library's published weights (from the local cache, or downloaded by the library), or a path
    to a checkpoint file for the tower.
    """

    def __init__(self, name: str, dim: int, image_size: int, patch_size: int, weights: str = ""):
        super().__init__()
        library, _, model_name = name.partition(":")
        if library not in ("timm", "open_clip") or not model_name:
            raise ValueError(
                f"vision tower must be 'timm:<name>' or 'open_clip:<name>', got {name!r}"
            )
        self.name, self.image_size, self.patch_size = name, image_size, patch_size
        self.library = library
        if library == "timm":
            import timm

            tower = timm.create_model(
                model_name, pretrained=weights == "pretrained", num_classes=0, img_size=image_size
            )
            tower_patch = tower.patch_embed.patch_size[0]
            width = tower.num_features
            self.prefix_tokens = tower.num_prefix_tokens
        else:
            import open_clip

            tag = "openai" if weights == "pretrained" else None
            tower = open_clip.create_model(model_name, pretrained=tag).visual
            tower.output_tokens = True
            tower_patch = tower.patch_size[0]
            if tuple(tower.image_size) != (image_size, image_size):
                raise ValueError(f"{name} needs image_size {tower.image_size[0]}, got {image_size}")
            width = tower.transformer.width
            self.prefix_tokens = 0
        if tower_patch != patch_size:
            raise ValueError(f"{name} has patch size {tower_patch}, tokenizer has {patch_size}")
        if weights not in ("", "pretrained"):
            from safetensors.torch import load_file

            state = (
                load_file(weights)
                if weights.endswith(".safetensors")
                else torch.load(weights, weights_only=True)
            )
            tower.load_state_dict(state)
        self.tower = tower
        self.proj = nn.Linear(width, dim)
        self.grid = image_size // patch_size

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """(n_images * N, 3*p*p) -> (n_images * N, D)."""
        per_image, p, g = self.grid**2, self.patch_size, self.grid
        if patches.ndim != 2 or patches.shape[0] % per_image or patches.shape[1] != 3 * p * p:
            raise ValueError(
                f"expected ({per_image}*n, {3 * p * p}) patches, got {tuple(patches.shape)}"
            )
        images = patches.reshape(-1, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5)
        images = images.reshape(-1, 3, g * p, g * p)  # (n, 3, S, S)
        if self.library == "timm":
            tokens = self.tower.forward_features(images)[:, self.prefix_tokens :]
        else:
            tokens = self.tower(images)[1]
        return self.proj(tokens.reshape(-1, tokens.shape[-1]))
