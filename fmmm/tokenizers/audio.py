"""Audio as log-mel frame patches (torchaudio), resampled from any input rate.

Output contract: `encode(waveforms, sample_rate)` with waveforms a float tensor (B, S) or a list of
1-D float tensors of any lengths -> `patches float32 (B, N, frames_per_patch*n_mels)` (each patch
flattened (frame, mel)), `positions long (B, N, 1)` (patch index in time), `mask bool (B, N)` (patch
holds at least one real frame). Frames hop every `hop_length` samples at `sample_rate`.
`decode(patches)` reassembles the log-mel spectrogram (B, n_mels, N*frames_per_patch).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torchaudio

from fmmm.tokenizers.common import read_config
from fmmm.utils.io import atomic_write_json

AUDIO_FILE = "audio_tokenizer.json"
LOG_FLOOR = 1e-10


class AudioTokenizer:
    """Log-mel spectrogram frames grouped `frames_per_patch` at a time."""

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 64,
        frames_per_patch: int = 4,
        n_fft: int = 400,
        hop_length: int = 160,
    ):
        if min(sample_rate, n_mels, frames_per_patch, n_fft, hop_length) < 1:
            raise ValueError(
                "sample_rate, n_mels, frames_per_patch, n_fft, hop_length must be >= 1"
            )
        self.sample_rate, self.n_mels, self.frames_per_patch = sample_rate, n_mels, frames_per_patch
        self.n_fft, self.hop_length = n_fft, hop_length
        self.patch_dim = n_mels * frames_per_patch
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels
        )

    def _waveforms(self, waveforms) -> list[torch.Tensor]:
        if isinstance(waveforms, torch.Tensor):
            if waveforms.ndim != 2:
                raise ValueError(
                    f"waveforms must be (B, S) or a list of 1-D tensors, got shape {tuple(waveforms.shape)}"
                )
            waveforms = list(waveforms)
        if not isinstance(waveforms, Sequence) or len(waveforms) == 0:
            raise ValueError("waveforms must be a non-empty batch")
        out = []
        for index, wave in enumerate(waveforms):
            wave = torch.as_tensor(wave)
            if wave.ndim != 1:
                raise ValueError(f"waveform {index} must be 1-D, got shape {tuple(wave.shape)}")
            if not wave.is_floating_point():
                raise ValueError(f"waveform {index} dtype must be float, got {wave.dtype}")
            if wave.numel() == 0:
                raise ValueError(f"waveform {index} has zero length")
            if not torch.isfinite(wave).all():
                raise ValueError(f"waveform {index} contains NaN or inf")
            out.append(wave.float())
        return out

    def log_mel(self, waveforms, sample_rate: int) -> tuple[list[torch.Tensor], list[int]]:
        """Per waveform: log-mel (frames, n_mels) at `self.sample_rate`, and its frame count."""
        if sample_rate < 1:
            raise ValueError(f"sample_rate must be >= 1, got {sample_rate}")
        spectra = []
        for wave in self._waveforms(waveforms):
            if sample_rate != self.sample_rate:
                wave = torchaudio.functional.resample(wave, sample_rate, self.sample_rate)
            if wave.numel() <= self.n_fft // 2:  # reflect padding needs more samples than this
                wave = torch.nn.functional.pad(wave, (0, self.n_fft // 2 + 1 - wave.numel()))
            spectra.append(torch.log(self.mel(wave).clamp_min(LOG_FLOOR)).T)
        return spectra, [s.shape[0] for s in spectra]

    def encode(
        self, waveforms, sample_rate: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Waveforms -> patches (B, N, f*n_mels), positions (B, N, 1), mask (B, N)."""
        spectra, frames = self.log_mel(waveforms, sample_rate)
        f = self.frames_per_patch
        counts = [-(-n // f) for n in frames]
        num = max(counts)
        padded = torch.full(
            (len(spectra), num * f, self.n_mels), float(torch.log(torch.tensor(LOG_FLOOR)))
        )
        for row, spectrum in enumerate(spectra):
            padded[row, : spectrum.shape[0]] = spectrum
        patches = padded.reshape(len(spectra), num, self.patch_dim)
        positions = torch.arange(num).view(1, num, 1).expand(len(spectra), -1, -1).clone()
        mask = torch.arange(num)[None, :] < torch.tensor(counts)[:, None]
        return patches, positions, mask

    def decode(self, patches: torch.Tensor) -> torch.Tensor:
        """Patches (B, N, f*n_mels) -> log-mel spectrogram (B, n_mels, N*f)."""
        if patches.ndim != 3 or patches.shape[-1] != self.patch_dim:
            raise ValueError(
                f"patches must have shape (B, N, {self.patch_dim}), got {tuple(patches.shape)}"
            )
        return patches.reshape(patches.shape[0], -1, self.n_mels).transpose(1, 2)

    def save(self, directory: str | os.PathLike) -> None:
        config = {
            "sample_rate": self.sample_rate,
            "n_mels": self.n_mels,
            "frames_per_patch": self.frames_per_patch,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
        }
        atomic_write_json(Path(directory) / AUDIO_FILE, config)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> AudioTokenizer:
        return cls(**read_config(Path(directory) / AUDIO_FILE))
