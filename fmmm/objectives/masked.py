"""Masked patch prediction (MAE-style): hide some continuous patches, reconstruct their pixels.

`mask_patches` zeroes a random subset of one modality's patch features in a `MultimodalBatch`
(the encoder then sees only its bias there); the backbone's hidden states at those positions go
through a linear decoder and are scored by mean squared error against the per-patch normalised
original patches (He et al., 2021).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn


def mask_patches(
    batch, modality: str, ratio: float, generator: torch.Generator | None = None
) -> tuple[object, torch.Tensor, torch.Tensor]:
    """(masked batch, masked row mask (N_m,) bool, original patches (N_m, F)) for `modality`.

    At least one patch is masked and at least one kept whenever the batch has two or more.
    """
    if not 0 < ratio < 1:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    if modality not in batch.features:
        raise ValueError(f"the batch has no {modality!r} features to mask")
    original = batch.features[modality]  # (N_m, F)
    n = original.shape[0]
    scores = torch.rand(n, generator=generator, device="cpu").to(original.device)
    n_masked = min(max(1, round(ratio * n)), max(n - 1, 1))
    masked = torch.zeros(n, dtype=torch.bool, device=original.device)
    masked[scores.argsort()[:n_masked]] = True
    features = dict(batch.features)
    features[modality] = original.masked_fill(masked[:, None], 0.0)
    return dataclasses.replace(batch, features=features), masked, original


class MaskedPatchLoss(nn.Module):
    """Linear decoder from hidden states (N, D) to patches (N, F); MSE on normalised targets."""

    def __init__(self, dim: int, patch_features: int, normalize_targets: bool = True):
        super().__init__()
        self.decoder = nn.Linear(dim, patch_features)
        self.normalize_targets = normalize_targets

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """`hidden` (N, D) at the masked positions, `targets` (N, F) their original patches."""
        if hidden.ndim != 2 or targets.ndim != 2 or hidden.shape[0] != targets.shape[0]:
            raise ValueError(
                f"hidden (N, D) and targets (N, F) must have equal N, got {tuple(hidden.shape)} "
                f"and {tuple(targets.shape)}"
            )
        if hidden.shape[0] == 0:
            raise ValueError("no masked patches to reconstruct")
        targets = targets.float()
        if self.normalize_targets:
            mean = targets.mean(dim=-1, keepdim=True)
            var = targets.var(dim=-1, keepdim=True, unbiased=False)
            targets = (targets - mean) / (var + 1e-6).sqrt()
        loss = (self.decoder(hidden).float() - targets).square().mean()
        return {"loss": loss}
