"""Reuse a pretrained fmmm encoder in another project: raw inputs -> normalized embeddings.

    import fmmm.encoders
    encoder = fmmm.encoders.load("runs/pretrain/final", modality="image")
    embeddings = encoder(images)  # (B, 3, H, W) uint8 -> (B, embed_dim), L2-normalized

`path` is a folder written by `MultimodalModel.save_pretrained(path, tokenizers=...)`: the
tokenizers saved beside the weights (`path/tokenizers/<name>/`) give the exact preprocessing
the model was trained with.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

MODALITIES = ("text", "image", "video", "audio")


class PretrainedEncoder(nn.Module):
    """A MultimodalModel used as a single-modality encoder, with its tokenizers.

    `forward(raw)` returns pooled L2-normalized embeddings (B, embed_dim); `tokens(raw)` returns
    the backbone's hidden states (B, L, D) and the (B, L) mask of the modality's positions.
    Raw inputs: text `list[str]`; image `(B, 3, H, W)` uint8 or float in [0, 1]; video
    `(B, T, 3, H, W)`; audio `list` of 1-D waveforms at `sample_rate`.
    """

    def __init__(self, model: nn.Module, modality: str, builder: Any):
        super().__init__()
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
        self.model, self.modality, self.builder = model, modality, builder
        self.tokenizer = getattr(builder, f"{modality}_tokenizer")
        if self.tokenizer is None:
            raise ValueError(f"no {modality} tokenizer was saved with the model")

    def batch(self, raw: Any, sample_rate: int | None = None):
        """Tokenize raw inputs into a MultimodalBatch, one sample per row."""
        from fmmm.tokenizers.sequence import pack_samples

        if len(raw) == 0:
            raise ValueError(f"no {self.modality} inputs given")
        if self.modality == "text":
            samples = [self.builder.text(text, loss=False) for text in raw]
        elif self.modality == "audio":
            if sample_rate is None:
                raise ValueError("audio inputs need sample_rate")
            samples = [self.builder.audio(wave, sample_rate) for wave in raw]
        else:
            samples = [getattr(self.builder, self.modality)(item) for item in raw]
        length = max(sum(len(segment) for segment in sample) for sample in samples)
        device = next(self.model.parameters()).device
        return pack_samples(samples, length, pack=False).to(device)

    @torch.no_grad()
    def tokens(self, raw: Any, sample_rate: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (B, L, D) and the (B, L) bool mask of this modality's positions."""
        from fmmm.tokenizers.sequence import Modality

        batch = self.batch(raw, sample_rate)
        hidden = self.model(batch)["hidden"]
        return hidden, batch.modality == int(Modality[self.modality.upper()])

    @torch.no_grad()
    def forward(self, raw: Any, sample_rate: int | None = None) -> torch.Tensor:
        """Pooled, L2-normalized embeddings (B, embed_dim)."""
        return self.model.embed_pooled(self.batch(raw, sample_rate), self.modality)


def load(
    path: str | os.PathLike, modality: str = "image", device: str | torch.device = "cpu"
) -> PretrainedEncoder:
    """Load the encoder for `modality` from a saved MultimodalModel folder, in eval mode."""
    from fmmm.models.factory import load_model_and_builder

    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
    model, builder = load_model_and_builder(path, device=str(device))
    return PretrainedEncoder(model.eval(), modality, builder)
