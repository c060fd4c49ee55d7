"""Image patches and video tubelets after resize and normalize (torchvision transforms v2).

Output contract:
- `ImageTokenizer.encode(images (B, 3, H, W) uint8 or float in [0, 1])` ->
  `patches float32 (B, N, 3*p*p)`, `positions long (B, N, 2)` as (row, col), N = (S/p)^2 in
  row-major order; each patch is flattened as (channel, y, x).
- `VideoTokenizer.encode(videos (B, T, 3, H, W))` -> `patches float32 (B, N, t*3*p*p)`,
  `positions long (B, N, 3)` as (time, row, col), N = (T/t) * (S/p)^2, time-major; each tubelet is
  flattened as (frame, channel, y, x).
`decode` inverts both exactly up to float rounding: patches -> normalized-back images in [0, 1].
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torchvision.transforms import v2

from fmmm.tokenizers.common import read_config
from fmmm.utils.io import atomic_write_json

IMAGE_FILE = "image_tokenizer.json"
VIDEO_FILE = "video_tokenizer.json"
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def _check_pixels(pixels: torch.Tensor, name: str, rank: int, layout: str) -> torch.Tensor:
    """Validate pixels and return them as float32 in [0, 1]."""
    if not isinstance(pixels, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor {layout}, got {type(pixels).__name__}")
    if pixels.ndim != rank or pixels.shape[-3] != 3:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(pixels.shape)}")
    if pixels.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    if pixels.dtype == torch.uint8:
        return pixels.float() / 255.0
    if not pixels.is_floating_point():
        raise ValueError(f"{name} dtype must be uint8 or float in [0, 1], got {pixels.dtype}")
    if not torch.isfinite(pixels).all():
        raise ValueError(f"{name} contains NaN or inf")
    if pixels.min() < 0 or pixels.max() > 1:
        raise ValueError(
            f"float {name} must lie in [0, 1], got [{pixels.min():.3g}, {pixels.max():.3g}]"
        )
    return pixels.float()


def _grid_positions(rows: int, cols: int) -> torch.Tensor:
    """(rows*cols, 2) long (row, col) in row-major order."""
    grid_rows, grid_cols = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([grid_rows.flatten(), grid_cols.flatten()], dim=-1)


class ImageTokenizer:
    """Resize to `image_size`, normalize, and cut into non-overlapping `patch_size` patches."""

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 8,
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
    ):
        if patch_size < 1 or image_size < patch_size or image_size % patch_size:
            raise ValueError(
                f"image_size ({image_size}) must be a positive multiple of patch_size ({patch_size})"
            )
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError("mean and std need 3 values each, std > 0")
        self.image_size, self.patch_size = image_size, patch_size
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.grid = image_size // patch_size
        self.num_patches = self.grid**2
        self.patch_dim = 3 * patch_size**2
        self.transform = v2.Compose(
            [v2.Resize((image_size, image_size), antialias=True), v2.Normalize(self.mean, self.std)]
        )

    def _check_size(self, height: int, width: int) -> None:
        if height < self.patch_size or width < self.patch_size:
            raise ValueError(
                f"image {height}x{width} is smaller than one {self.patch_size}x{self.patch_size} patch"
            )

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 / float [0, 1] -> normalized float32 (B, 3, S, S)."""
        pixels = _check_pixels(images, "images", 4, "(B, 3, H, W)")
        self._check_size(*pixels.shape[-2:])
        return self.transform(pixels)

    def patchify(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, N, 3*p*p), patches row-major, each flattened (c, y, x)."""
        batch, p, g = pixels.shape[0], self.patch_size, self.grid
        patches = pixels.reshape(batch, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5)
        return patches.reshape(batch, g * g, self.patch_dim)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, N, 3*p*p) -> (B, 3, S, S), the exact inverse of `patchify`."""
        if patches.ndim != 3 or patches.shape[1:] != (self.num_patches, self.patch_dim):
            raise ValueError(
                f"patches must have shape (B, {self.num_patches}, {self.patch_dim}), "
                f"got {tuple(patches.shape)}"
            )
        batch, p, g = patches.shape[0], self.patch_size, self.grid
        pixels = patches.reshape(batch, g, g, 3, p, p).permute(0, 3, 1, 4, 2, 5)
        return pixels.reshape(batch, 3, g * p, g * p)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> patches float32 (B, N, 3*p*p), positions long (B, N, 2) as (row, col)."""
        patches = self.patchify(self.preprocess(images))
        positions = _grid_positions(self.grid, self.grid).expand(patches.shape[0], -1, -1)
        return patches, positions.clone()

    def decode(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches -> images float32 (B, 3, S, S) in [0, 1] (normalization undone)."""
        pixels = self.unpatchify(patches)
        mean = torch.tensor(self.mean, dtype=pixels.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=pixels.dtype).view(1, 3, 1, 1)
        return pixels * std + mean

    def config(self) -> dict:
        return {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def save(self, directory: str | os.PathLike) -> None:
        atomic_write_json(Path(directory) / IMAGE_FILE, self.config())

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ImageTokenizer:
        return cls(**read_config(Path(directory) / IMAGE_FILE))


class VideoTokenizer:
    """Spatio-temporal tubelets of `tubelet` frames x `patch_size` x `patch_size` pixels."""

    def __init__(
        self,
        image_size: int = 64,
        patch_size: int = 8,
        tubelet: int = 2,
        mean: Sequence[float] = DEFAULT_MEAN,
        std: Sequence[float] = DEFAULT_STD,
    ):
        if tubelet < 1:
            raise ValueError(f"tubelet must be >= 1, got {tubelet}")
        self.frames = ImageTokenizer(image_size, patch_size, mean, std)
        self.tubelet = tubelet
        self.patch_dim = tubelet * self.frames.patch_dim

    def _check_video(self, videos: torch.Tensor) -> torch.Tensor:
        pixels = _check_pixels(videos, "videos", 5, "(B, T, 3, H, W)")
        if pixels.shape[1] == 0 or pixels.shape[1] % self.tubelet:
            raise ValueError(
                f"video length {pixels.shape[1]} must be a positive multiple of tubelet {self.tubelet}"
            )
        self.frames._check_size(*pixels.shape[-2:])
        return pixels

    def encode(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Videos -> patches float32 (B, N, t*3*p*p), positions long (B, N, 3) (time, row, col)."""
        pixels = self._check_video(videos)
        batch, length = pixels.shape[:2]
        frames = self.frames.transform(pixels.flatten(0, 1))
        patches = self.frames.patchify(frames)  # (B*T, n, 3*p*p)
        steps, n = length // self.tubelet, self.frames.num_patches
        patches = patches.reshape(batch, steps, self.tubelet, n, -1).permute(0, 1, 3, 2, 4)
        patches = patches.reshape(batch, steps * n, self.patch_dim)
        grid = _grid_positions(self.frames.grid, self.frames.grid).repeat(steps, 1)
        time = torch.arange(steps).repeat_interleave(n)[:, None]
        positions = torch.cat([time, grid], dim=-1).expand(batch, -1, -1)
        return patches, positions.clone()

    def decode(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches -> videos float32 (B, T, 3, S, S) in [0, 1]."""
        n = self.frames.num_patches
        if patches.ndim != 3 or patches.shape[1] % n or patches.shape[2] != self.patch_dim:
            raise ValueError(
                f"patches must have shape (B, k*{n}, {self.patch_dim}), got {tuple(patches.shape)}"
            )
        batch, steps = patches.shape[0], patches.shape[1] // n
        tubes = patches.reshape(batch, steps, n, self.tubelet, -1).permute(0, 1, 3, 2, 4)
        frames = self.frames.decode(tubes.reshape(batch * steps * self.tubelet, n, -1))
        return frames.reshape(batch, steps * self.tubelet, *frames.shape[1:])

    def save(self, directory: str | os.PathLike) -> None:
        atomic_write_json(
            Path(directory) / VIDEO_FILE, {**self.frames.config(), "tubelet": self.tubelet}
        )

    @classmethod
    def load(cls, directory: str | os.PathLike) -> VideoTokenizer:
        return cls(**read_config(Path(directory) / VIDEO_FILE))
