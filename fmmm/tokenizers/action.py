"""Action discretization (OpenVLA-style quantile bins, optional Gato mu-law) and state normalization.

Output contract:
- `ActionTokenizer.fit(actions (N, D))` learns per-dimension ranges from the 1st-99th percentiles;
  `encode(actions (..., D) float) -> long (..., D)` in `[0, num_bins)`, values outside the range
  clipped; `decode(tokens (..., D)) -> float32 (..., D)` bin centres. Constant dimensions encode to
  the middle bin and decode to their constant.
- `StateNormalizer.fit(states (N, S))`; `normalize(states (..., S)) -> float32 (..., S)`, with
  `unnormalize` its inverse.
The fitted statistics are saved with the tokenizer (JSON + safetensors).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from fmmm.utils.io import atomic_write_bytes, atomic_write_json

ACTION_FILE = "action_tokenizer"
STATE_FILE = "state_normalizer"
CONSTANT_EPS = 1e-8


def _check_values(values, name: str, dims: int | None = None, min_rank: int = 1) -> torch.Tensor:
    """Validate a float array (..., D) with finite values; return it as float64."""
    if not isinstance(values, torch.Tensor):
        values = torch.as_tensor(values)
    if not values.is_floating_point():
        raise ValueError(f"{name} dtype must be floating point, got {values.dtype}")
    if values.ndim < min_rank:
        raise ValueError(f"{name} must have rank >= {min_rank}, got shape {tuple(values.shape)}")
    if values.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or inf")
    if dims is not None and values.shape[-1] != dims:
        raise ValueError(
            f"{name} last dimension must be {dims} (as fitted), got {values.shape[-1]}"
        )
    return values.double()


def _save_stats(directory, stem: str, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    directory = Path(directory)
    atomic_write_json(directory / f"{stem}.json", config)
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    atomic_write_bytes(directory / f"{stem}.safetensors", save(tensors))


def _load_stats(directory, stem: str) -> tuple[dict, dict[str, torch.Tensor]]:
    directory = Path(directory)
    config_path, tensor_path = directory / f"{stem}.json", directory / f"{stem}.safetensors"
    if not config_path.is_file():
        raise ValueError(f"no {stem} in {directory} (missing {config_path.name})")
    config = json.loads(config_path.read_text())
    return config, (load_file(tensor_path) if tensor_path.is_file() else {})


class ActionTokenizer:
    """Per-dimension uniform bins over a data-quantile range; optional mu-law companding."""

    def __init__(
        self,
        num_bins: int = 256,
        low_quantile: float = 0.01,
        high_quantile: float = 0.99,
        mu: float | None = None,
    ):
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        if not 0 <= low_quantile < high_quantile <= 1:
            raise ValueError("quantiles must satisfy 0 <= low_quantile < high_quantile <= 1")
        if mu is not None and mu <= 0:
            raise ValueError(f"mu must be > 0 (or None for linear bins), got {mu}")
        self.num_bins, self.mu = num_bins, mu
        self.low_quantile, self.high_quantile = low_quantile, high_quantile
        self.low: torch.Tensor | None = None  # (D,) float64
        self.high: torch.Tensor | None = None

    @property
    def dims(self) -> int | None:
        return None if self.low is None else self.low.numel()

    def fit(self, actions) -> ActionTokenizer:
        """Learn the per-dimension range from the quantiles of actions (N, D)."""
        actions = _check_values(actions, "actions", min_rank=2)
        if actions.ndim != 2:
            raise ValueError(f"fit expects actions (N, D), got shape {tuple(actions.shape)}")
        self.low = torch.quantile(actions, self.low_quantile, dim=0)
        self.high = torch.quantile(actions, self.high_quantile, dim=0)
        return self

    def _require_fit(self) -> None:
        if self.low is None:
            raise ValueError("ActionTokenizer is not fitted: call fit(actions) or load(dir) first")

    def _constant(self) -> torch.Tensor:
        return (self.high - self.low) < CONSTANT_EPS

    def _compand(self, unit: torch.Tensor) -> torch.Tensor:
        if self.mu is None:
            return unit
        return torch.sign(unit) * torch.log1p(self.mu * unit.abs()) / math.log1p(self.mu)

    def _expand(self, unit: torch.Tensor) -> torch.Tensor:
        if self.mu is None:
            return unit
        return torch.sign(unit) * torch.expm1(unit.abs() * math.log1p(self.mu)) / self.mu

    @property
    def bin_width(self) -> float:
        """Width of one bin in the (companded) [-1, 1] space."""
        return 2.0 / self.num_bins

    def encode(self, actions) -> torch.Tensor:
        """Actions (..., D) float -> bins (..., D) long in [0, num_bins)."""
        self._require_fit()
        actions = _check_values(actions, "actions", dims=self.dims)
        span = torch.where(self._constant(), torch.ones_like(self.low), self.high - self.low)
        unit = ((actions - self.low) / span * 2 - 1).clamp(-1, 1)
        bins = ((self._compand(unit) + 1) / self.bin_width).floor().clamp(0, self.num_bins - 1)
        bins = torch.where(self._constant(), torch.full_like(bins, self.num_bins // 2), bins)
        return bins.long()

    def decode(self, tokens) -> torch.Tensor:
        """Bins (..., D) long -> actions (..., D) float32 at the bin centres."""
        self._require_fit()
        tokens = torch.as_tensor(tokens)
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValueError(f"tokens dtype must be integer, got {tokens.dtype}")
        if tokens.ndim < 1 or tokens.shape[-1] != self.dims:
            raise ValueError(
                f"tokens last dimension must be {self.dims}, got {tuple(tokens.shape)}"
            )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.num_bins):
            raise ValueError(f"tokens must lie in [0, {self.num_bins})")
        centres = (tokens.double() + 0.5) * self.bin_width - 1
        unit = self._expand(centres)
        actions = self.low + (unit + 1) / 2 * (self.high - self.low)
        return torch.where(self._constant(), self.low, actions).float()

    def save(self, directory: str | os.PathLike) -> None:
        self._require_fit()
        config = {
            "num_bins": self.num_bins,
            "low_quantile": self.low_quantile,
            "high_quantile": self.high_quantile,
            "mu": self.mu,
        }
        _save_stats(directory, ACTION_FILE, config, {"low": self.low, "high": self.high})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ActionTokenizer:
        config, tensors = _load_stats(directory, ACTION_FILE)
        tokenizer = cls(**config)
        tokenizer.low, tokenizer.high = tensors["low"], tensors["high"]
        return tokenizer


class StateNormalizer:
    """Per-dimension standardization of proprioceptive state; constant dimensions only centred."""

    def __init__(self):
        self.mean: torch.Tensor | None = None  # (S,) float64
        self.std: torch.Tensor | None = None

    @property
    def dims(self) -> int | None:
        return None if self.mean is None else self.mean.numel()

    def fit(self, states) -> StateNormalizer:
        """Learn mean and standard deviation from states (N, S)."""
        states = _check_values(states, "states", min_rank=2)
        if states.ndim != 2:
            raise ValueError(f"fit expects states (N, S), got shape {tuple(states.shape)}")
        self.mean = states.mean(dim=0)
        std = states.std(dim=0, correction=0)
        self.std = torch.where(std < CONSTANT_EPS, torch.ones_like(std), std)
        return self

    def _require_fit(self) -> None:
        if self.mean is None:
            raise ValueError("StateNormalizer is not fitted: call fit(states) or load(dir) first")

    def normalize(self, states) -> torch.Tensor:
        """States (..., S) -> float32 (..., S), zero mean and unit variance on the fitted data."""
        self._require_fit()
        states = _check_values(states, "states", dims=self.dims)
        return ((states - self.mean) / self.std).float()

    def unnormalize(self, states) -> torch.Tensor:
        """Inverse of `normalize`."""
        self._require_fit()
        states = _check_values(states, "normalized states", dims=self.dims)
        return (states * self.std + self.mean).float()

    encode = normalize
    decode = unnormalize

    def save(self, directory: str | os.PathLike) -> None:
        self._require_fit()
        _save_stats(directory, STATE_FILE, {}, {"mean": self.mean, "std": self.std})

    @classmethod
    def load(cls, directory: str | os.PathLike) -> StateNormalizer:
        _, tensors = _load_stats(directory, STATE_FILE)
        normalizer = cls()
        normalizer.mean, normalizer.std = tensors["mean"], tensors["std"]
        return normalizer
