"""Synthesised audio-caption pairs: tones, chirps, noise bursts and rhythms, described in words."""

from __future__ import annotations

import numpy as np

KINDS = ("tone", "chirp", "noise", "rhythm")
PITCHES = {"low": 220.0, "middle": 660.0, "high": 1800.0}


def _envelope(n: int, sample_rate: int) -> np.ndarray:
    ramp = min(n // 2, int(0.01 * sample_rate))
    env = np.ones(n)
    env[:ramp] = np.linspace(0, 1, ramp)
    env[n - ramp :] = np.linspace(1, 0, ramp)
    return env


def _tone(freq: float, n: int, sample_rate: int) -> np.ndarray:
    return np.sin(2 * np.pi * freq * np.arange(n) / sample_rate) * _envelope(n, sample_rate)


def synth_audio_pair(
    rng: np.random.Generator, sample_rate: int = 16000, seconds: float = 1.0
) -> tuple[np.ndarray, str]:
    """(waveform float32 (N,) in [-1, 1], caption) of one random synthesised sound."""
    n = int(sample_rate * seconds)
    kind = KINDS[int(rng.integers(len(KINDS)))]
    loud = bool(rng.integers(2))
    gain = 0.8 if loud else 0.25
    volume = "loud" if loud else "quiet"
    if kind == "tone":
        pitch = list(PITCHES)[int(rng.integers(len(PITCHES)))]
        freq = PITCHES[pitch] * rng.uniform(0.9, 1.1)
        wave, caption = _tone(freq, n, sample_rate), f"A {volume} steady {pitch} pitched tone."
    elif kind == "chirp":
        rising = bool(rng.integers(2))
        low, high = 200.0 * rng.uniform(0.9, 1.1), 3000.0 * rng.uniform(0.9, 1.1)
        start, end = (low, high) if rising else (high, low)
        freq = np.geomspace(start, end, n)
        phase = 2 * np.pi * np.cumsum(freq) / sample_rate
        wave = np.sin(phase) * _envelope(n, sample_rate)
        caption = f"A {volume} chirp sweeping {'up' if rising else 'down'} in pitch."
    elif kind == "noise":
        bursts = int(rng.integers(1, 4))
        wave = np.zeros(n)
        length = n // 8
        for start in np.linspace(0, n - length, bursts + 2)[1:-1].astype(int):
            wave[start : start + length] = rng.uniform(-1, 1, length) * _envelope(
                length, sample_rate
            )
        caption = f"{['One', 'Two', 'Three'][bursts - 1]} {volume} burst{'s' if bursts > 1 else ''} of noise."
    else:
        fast = bool(rng.integers(2))
        beats = int(rng.integers(6, 9)) if fast else int(rng.integers(2, 4))
        pitch = list(PITCHES)[int(rng.integers(len(PITCHES)))]
        wave = np.zeros(n)
        length = n // 16
        for start in np.linspace(0, n - length, beats).astype(int):
            wave[start : start + length] = _tone(PITCHES[pitch], length, sample_rate)
        pace = "fast" if fast else "slow"
        caption = f"A {volume} {pace} rhythm of {pitch} beeps."
    return (gain * wave).astype(np.float32), caption


def wav_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM mono WAV bytes of a float waveform in [-1, 1]."""
    import io
    import wave as wave_module

    buffer = io.BytesIO()
    with wave_module.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes((np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float32 (N,) and sample rate from 16-bit PCM WAV bytes (channels averaged)."""
    import io
    import wave as wave_module

    try:
        with wave_module.open(io.BytesIO(data), "rb") as src:
            if src.getsampwidth() != 2:
                raise ValueError(
                    f"only 16-bit PCM WAV is supported, got {8 * src.getsampwidth()}-bit"
                )
            frames = np.frombuffer(src.readframes(src.getnframes()), dtype="<i2")
            channels, rate = src.getnchannels(), src.getframerate()
    except wave_module.Error as exc:
        raise ValueError(f"not a WAV file: {exc}") from None
    return (frames.reshape(-1, channels).mean(axis=1) / 32768).astype(np.float32), rate
