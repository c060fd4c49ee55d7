"""Per-modality input embeddings: tokenizer output -> backbone-width tokens, plus pooled projection heads.

Each encoder is a standalone `nn.Module`:
- `TextEmbedding`: token ids (B, L) -> (B, L, D) (the shared vocabulary: text ids, then action bins).
- `PatchEmbedding`: image / video patches and audio frames (..., F) -> (..., D).
- `StateEmbedding`: proprioceptive state (..., S) float -> (..., D).
- `ConvStem`: a small convolutional stem (stride-2 3x3 convolutions with coordinate channels) from
  patches (n_images * N, 3*p*p) -> (n_images * N, D), one token per patch cell.
- `VisionTower`: a pretrained timm / open_clip ViT by name ("timm:vit_small_patch16_224",
  "open_clip:ViT-B-32") from patches (n_images * N, 3*p*p) -> (n_images * N, D).
- `PooledProjection`: masked mean of tokens (B, L, D) -> L2-normalized (B, E) for contrastive use.
"""

from __future__ import annotations

import os
from pathlib import Path

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
    """Flattened patches or audio frames (..., F) float -> (..., D): a linear map, as in ViT.

    With `grid_tokens` > 0 the input is whole images of `grid_tokens` patches each, in raster
    order (rows of consecutive images, (n_images * grid_tokens, F)), and a learned absolute
    position embedding per grid cell is added, as in ViT. Rotary attention alone tells the
    backbone how far apart two patches are, not where the patch it attends to lies; the absolute
    embedding puts that location into the attended value (a policy reads an object's image
    position from it).
    """

    def __init__(self, in_features: int, dim: int, grid_tokens: int = 0, init_std: float = 0.02):
        super().__init__()
        if in_features <= 0 or dim <= 0 or grid_tokens < 0:
            raise ValueError(
                f"in_features and dim must be positive and grid_tokens >= 0, got {in_features}, {dim}, {grid_tokens}"
            )
        self.in_features = in_features
        self.grid_tokens = grid_tokens
        self.proj = nn.Linear(in_features, dim)
        self.pos_embed = (
            nn.Parameter(torch.randn(grid_tokens, dim) * init_std) if grid_tokens else None
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if patches.shape[-1] != self.in_features:
            raise ValueError(
                f"expected patches with {self.in_features} features, got {tuple(patches.shape)}"
            )
        out = self.proj(patches)
        if self.pos_embed is None:
            return out
        if patches.ndim != 2 or patches.shape[0] % self.grid_tokens:
            raise ValueError(
                f"expected (n_images * {self.grid_tokens}, {self.in_features}) patches, got {tuple(patches.shape)}"
            )
        return out + self.pos_embed.repeat(patches.shape[0] // self.grid_tokens, 1)


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


def patches_to_images(patches: torch.Tensor, grid: int, patch_size: int) -> torch.Tensor:
    """Tokenizer patches (n_images * grid**2, 3*p*p), each flattened (c, y, x), -> (n, 3, S, S)."""
    per_image, p = grid**2, patch_size
    if patches.ndim != 2 or patches.shape[0] % per_image or patches.shape[1] != 3 * p * p:
        raise ValueError(
            f"expected ({per_image}*n, {3 * p * p}) patches, got {tuple(patches.shape)}"
        )
    images = patches.reshape(-1, grid, grid, 3, p, p).permute(0, 3, 1, 4, 2, 5)
    return images.reshape(-1, 3, grid * p, grid * p)


class ConvStem(nn.Module):
    """Convolutional image stem: one backbone token per patch cell, as an early-convolution ViT.

    Xiao et al. 2021 ("Early convolutions help transformers see better") replace the ViT's
    linear patchify with stride-2 3x3 convolutions; here a stride-1 convolution over the image
    plus two coordinate channels (CoordConv, Liu et al. 2018) comes first, then log2(patch_size)
    stride-2 convolutions reach the patch grid, and a 1x1 convolution projects to the backbone
    width. Convolutions share their weights across the image, so a small object is recognized
    wherever it lies from few examples (a linear patch embedding must learn each location apart),
    and the coordinate channels let each token say where inside its cell the object is. A learned
    absolute position embedding per cell is added, as in `PatchEmbedding`. With `film`, a
    conditioning vector per image (the model passes the mean embedding of the sample's prefix text,
    i.e. the instruction) modulates every convolution, so the stem can single out what the
    instruction names before the backbone sees the image.
    """

    def __init__(
        self,
        dim: int,
        image_size: int,
        patch_size: int,
        channels: int = 32,
        init_std: float = 0.02,
        film: bool = False,
    ):
        super().__init__()
        if patch_size < 2 or patch_size & (patch_size - 1):
            raise ValueError(
                f"the conv stem needs a power-of-two patch_size >= 2, got {patch_size}"
            )
        if image_size % patch_size:
            raise ValueError(
                f"image_size {image_size} is not a multiple of patch_size {patch_size}"
            )
        self.image_size, self.patch_size = image_size, patch_size
        self.grid = image_size // patch_size
        convs = [nn.Conv2d(5, channels, 3, padding=1)]
        width = channels
        for _ in range(patch_size.bit_length() - 1):
            out = min(2 * width, 4 * channels)
            convs.append(nn.Conv2d(width, out, 3, stride=2, padding=1))
            width = out
        self.convs = nn.ModuleList(convs)
        self.out = nn.Conv2d(width, dim, 1)
        # FiLM (Perez et al. 2018; RT-1's language-conditioned image tokenizer): a conditioning
        # vector scales and shifts every convolution's channels. Zero-initialized: identity until
        # trained, and for images without a condition.
        self.film = (
            nn.ModuleList(nn.Linear(dim, 2 * conv.out_channels) for conv in convs) if film else None
        )
        if self.film is not None:
            for layer in self.film:
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        axis = torch.linspace(-1.0, 1.0, image_size)
        coords = torch.stack(torch.meshgrid(axis, axis, indexing="ij"))  # (2, S, S): y, x
        self.register_buffer("coords", coords, persistent=False)
        self.pos_embed = nn.Parameter(torch.randn(self.grid**2, dim) * init_std)

    def forward(self, patches: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """(n_images * N, 3*p*p) -> (n_images * N, D); `condition` (n_images, D) drives FiLM."""
        images = patches_to_images(patches, self.grid, self.patch_size)
        if condition is not None and (
            self.film is None or condition.shape != (images.shape[0], self.pos_embed.shape[1])
        ):
            raise ValueError(
                f"condition must be (n_images={images.shape[0]}, {self.pos_embed.shape[1]}) for a FiLM stem, "
                f"got {tuple(condition.shape)}"
                + ("" if self.film is not None else " (film is off)")
            )
        if condition is not None:
            # Unit RMS: raw token embeddings are ~init_std small, and FiLM would learn as slowly.
            condition = F.rms_norm(condition, (condition.shape[-1],), eps=1e-6)
        coords = self.coords.to(images.dtype).expand(images.shape[0], -1, -1, -1)
        h = torch.cat([images, coords], dim=1)
        for index, conv in enumerate(self.convs):
            h = conv(h)
            if condition is not None:
                scale, shift = self.film[index](condition)[:, :, None, None].chunk(2, dim=1)
                h = h * (1 + scale) + shift
            h = F.gelu(h)
        tokens = self.out(h)  # (n, D, g, g)
        tokens = tokens.flatten(2).transpose(1, 2) + self.pos_embed  # (n, g*g, D) raster order
        return tokens.reshape(-1, tokens.shape[-1])


def _cached_file(repo_id: str, filenames: list[str]) -> str | None:
    """The first of `filenames` of Hub repository `repo_id` in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    cache_dir = os.environ.get("HF_HUB_CACHE")  # read per call, as fmmm.models.hub does
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(found, str):
            return found
    return None


def _missing_weights(name: str, repo_id: str, filename: str) -> ValueError:
    where = os.environ.get("HF_HUB_CACHE") or "the default Hugging Face cache"
    return ValueError(
        f"pretrained weights of {name} are not in {where} and fmmm does not download; "
        f"fetch them with `hf download {repo_id} {filename}` or set vision_tower_weights to a "
        "local .safetensors file"
    )


def _pretrained_timm(model_name: str, name: str) -> dict:
    """timm's `pretrained_cfg_overlay` pointing at the locally cached published weights."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is None or not cfg.hf_hub_id:
        raise ValueError(f"timm publishes no Hub weights for {name}; set vision_tower_weights")
    filenames = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
    filenames = filenames or ["model.safetensors", "pytorch_model.bin"]
    path = _cached_file(cfg.hf_hub_id, filenames)
    if path is None:
        raise _missing_weights(name, cfg.hf_hub_id, filenames[0])
    return {"file": path, "source": ""}


def _pretrained_open_clip(model_name: str, name: str) -> tuple[str, bool]:
    """(locally cached OpenAI weight file, whether the model uses QuickGELU) for open_clip."""
    from open_clip import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name, "openai")
    if not cfg.get("hf_hub"):
        raise ValueError(f"open_clip publishes no OpenAI Hub weights for {name}")
    # "org/name/file" or "org/name/" (open_clip's default file name)
    repo_id, filename = os.path.split(cfg["hf_hub"])
    filename = filename or "open_clip_pytorch_model.bin"
    if filename == "open_clip_pytorch_model.bin":
        safe = ["open_clip_model.safetensors"]
    elif filename.endswith((".bin", ".pth")):
        safe = [filename[:-4] + ".safetensors"]
    else:
        safe = []
    path = _cached_file(repo_id, [*safe, filename])
    if path is None:
        raise _missing_weights(name, repo_id, (safe or [filename])[0])
    return path, bool(cfg.get("quick_gelu", False))


class VisionTower(nn.Module):
    """A timm or open_clip ViT named "timm:<model>" or "open_clip:<model>" as a patch encoder.

    It takes the tokenizer's patches (rows of consecutive images, each flattened (c, y, x)),
    rebuilds the images, runs the tower and projects its patch tokens to width `dim`. The tower's
    patch size must equal the tokenizer's. `weights`: "" random init (tests), "pretrained" the
    library's published weights from the local Hugging Face cache (never downloaded: missing
    weights are an error saying how to fetch them), or a path to a checkpoint file for the tower.
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
        if weights not in ("", "pretrained") and not Path(weights).is_file():
            raise ValueError(f"vision tower weights {weights} is not a file")
        if library == "timm":
            import timm

            overlay = _pretrained_timm(model_name, name) if weights == "pretrained" else None
            tower = timm.create_model(
                model_name,
                pretrained=overlay is not None,
                pretrained_cfg_overlay=overlay,
                num_classes=0,
                img_size=image_size,
            )
            tower_patch = tower.patch_embed.patch_size[0]
            width = tower.num_features
            self.prefix_tokens = tower.num_prefix_tokens
        else:
            import open_clip

            if weights == "pretrained":
                path, quick_gelu = _pretrained_open_clip(model_name, name)
                model = open_clip.create_model(
                    model_name, pretrained=path, force_quick_gelu=quick_gelu
                )
            else:
                model = open_clip.create_model(model_name)
            tower = model.visual
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
        images = patches_to_images(patches, self.grid, self.patch_size)
        if self.library == "timm":
            tokens = self.tower.forward_features(images)[:, self.prefix_tokens :]
        else:
            tokens = self.tower(images)[1]
        return self.proj(tokens.reshape(-1, tokens.shape[-1]))
