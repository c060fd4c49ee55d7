"""Contract shared by every tokenizer: deterministic, save/load reproduces, no pickle on disk."""

import pytest
import torch

from fmmm.tokenizers import (
    ActionTokenizer,
    AudioTokenizer,
    ImageTokenizer,
    StateNormalizer,
    TextTokenizer,
    VideoTokenizer,
    default_text_tokenizer,
)


def _generator():
    return torch.Generator().manual_seed(0)


CASES = {
    "text": (
        default_text_tokenizer,
        lambda t: t.encode(["Pick up the cube, ünïcode 🤖", "x"], add_bos=True),
        TextTokenizer,
    ),
    "image": (
        lambda: ImageTokenizer(32, 8),
        lambda t: t.encode(torch.rand(2, 3, 40, 36, generator=_generator())),
        ImageTokenizer,
    ),
    "video": (
        lambda: VideoTokenizer(16, 8, 2),
        lambda t: t.encode(torch.rand(1, 4, 3, 16, 16, generator=_generator())),
        VideoTokenizer,
    ),
    "audio": (
        lambda: AudioTokenizer(n_mels=16),
        lambda t: t.encode(torch.randn(2, 3000, generator=_generator()), 8000),
        AudioTokenizer,
    ),
    "action": (
        lambda: ActionTokenizer(mu=20.0).fit(torch.randn(300, 5, generator=_generator())),
        lambda t: t.encode(torch.randn(4, 5, generator=_generator())),
        ActionTokenizer,
    ),
    "state": (
        lambda: StateNormalizer().fit(torch.randn(300, 6, generator=_generator())),
        lambda t: t.normalize(torch.randn(4, 6, generator=_generator())),
        StateNormalizer,
    ),
}


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_input_same_output(name):
    make, run, _ = CASES[name]
    assert _equal(run(make()), run(make()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_save_then_load_gives_identical_output_without_pickle(name, tmp_path):
    make, run, cls = CASES[name]
    tokenizer = make()
    tokenizer.save(tmp_path)
    assert _equal(run(cls.load(tmp_path)), run(tokenizer))
    suffixes = {path.suffix for path in tmp_path.iterdir()}
    assert suffixes <= {".json", ".safetensors"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_load_from_an_empty_folder_raises_value_error(name, tmp_path):
    _, _, cls = CASES[name]
    with pytest.raises(ValueError, match="no "):
        cls.load(tmp_path)


def test_all_tokenizers_save_side_by_side_in_one_folder(tmp_path):
    tokenizers = {name: make() for name, (make, _, _) in CASES.items()}
    for tokenizer in tokenizers.values():
        tokenizer.save(tmp_path)
    for name, (_, run, cls) in CASES.items():
        assert _equal(run(cls.load(tmp_path)), run(tokenizers[name])), name
