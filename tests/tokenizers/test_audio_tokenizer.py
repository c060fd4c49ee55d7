import math

import pytest
import torch

from fmmm.tokenizers.audio import AudioTokenizer


def _tone(seconds: float, rate: int, hz: float = 440.0) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return torch.sin(2 * math.pi * hz * t)


def test_audio_patches_shapes_dtypes_positions_and_mask():
    tokenizer = AudioTokenizer(sample_rate=16000, n_mels=32, frames_per_patch=4, hop_length=160)
    patches, positions, mask = tokenizer.encode([_tone(1.0, 16000), _tone(0.5, 16000)], 16000)
    frames_long, frames_short = 16000 // 160 + 1, 8000 // 160 + 1
    assert patches.shape == (2, -(-frames_long // 4), 32 * 4) and patches.dtype == torch.float32
    assert positions.shape == (2, patches.shape[1], 1) and positions.dtype == torch.long
    assert positions[1, :, 0].tolist() == list(range(patches.shape[1]))
    assert mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [-(-frames_long // 4), -(-frames_short // 4)]


def test_any_input_rate_is_resampled_to_the_same_frames():
    tokenizer = AudioTokenizer(n_mels=32)
    at_16k, _, _ = tokenizer.encode([_tone(0.5, 16000)], 16000)
    at_44k, _, _ = tokenizer.encode([_tone(0.5, 44100)], 44100)
    assert at_44k.shape == at_16k.shape
    # the 440 Hz tone lands in the same mel band at either input rate
    peak_16k = tokenizer.decode(at_16k)[0].mean(-1).argmax()
    peak_44k = tokenizer.decode(at_44k)[0].mean(-1).argmax()
    assert peak_16k == peak_44k


def test_decode_reassembles_the_log_mel_frames():
    tokenizer = AudioTokenizer(n_mels=16, frames_per_patch=3)
    wave = _tone(0.3, 16000)
    (spectrum,), (frames,) = tokenizer.log_mel([wave], 16000)
    patches, _, _ = tokenizer.encode([wave], 16000)
    assert torch.equal(tokenizer.decode(patches)[0, :, :frames], spectrum.T)


def test_same_audio_same_patches_and_save_load(tmp_path):
    tokenizer = AudioTokenizer(sample_rate=8000, n_mels=24, frames_per_patch=2, hop_length=80)
    wave = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
    tokenizer.save(tmp_path)
    loaded = AudioTokenizer.load(tmp_path)
    assert torch.equal(tokenizer.encode(wave, 16000)[0], tokenizer.encode(wave, 16000)[0])
    assert torch.equal(loaded.encode(wave, 16000)[0], tokenizer.encode(wave, 16000)[0])


@pytest.mark.parametrize(
    "bad, message",
    [
        ([torch.zeros(0)], "zero length"),
        (torch.zeros(2, 0), "zero length"),
        (torch.zeros(1, 2, 100), "shape"),
        ([torch.zeros(100, dtype=torch.int16)], "dtype"),
        ([torch.tensor([0.0, float("nan")] * 100)], "NaN"),
        ([], "non-empty"),
    ],
)
def test_bad_audio_input_raises_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        AudioTokenizer().encode(bad, 16000)


def test_very_short_audio_still_gives_one_patch():
    patches, _, mask = AudioTokenizer().encode([torch.zeros(10)], 16000)
    assert patches.shape[1] == 1 and mask.all()
