import pytest
import torch

from fmmm.tokenizers.text import (
    BUILTIN_CORPUS,
    ClipTextTokenizer,
    TextTokenizer,
    default_text_tokenizer,
)

UNICODE_TEXTS = [
    "Pick up the red cube.",
    "  leading and trailing spaces, tabs\tand\nnewlines\r\n",
    "Ünïcödé: naïve café, Zürich, 東京, Москва, مرحبا, 🤖🦾 emoji, \u200b zero width",
    "literal marker strings <|image|> <|eos|> stay text",
    "x",
]


def test_byte_level_bpe_round_trips_any_unicode_exactly():
    tokenizer = default_text_tokenizer()
    assert tokenizer.decode(tokenizer.encode(UNICODE_TEXTS)) == UNICODE_TEXTS


def test_marker_strings_in_text_never_become_special_ids():
    tokenizer = default_text_tokenizer()
    (ids,) = tokenizer.encode(["<|image|><|bos|><|pad|>"])
    special = {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, *tokenizer.marker_ids.values()}
    assert not special & set(ids)


def test_special_ids_are_distinct_and_bos_eos_added_on_request():
    tokenizer = default_text_tokenizer()
    ids = {tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, *tokenizer.marker_ids.values()}
    assert len(ids) == 8 and tokenizer.pad_id == 0
    (plain,), (wrapped,) = tokenizer.encode(["hi"]), tokenizer.encode(["hi"], True, True)
    assert wrapped == [tokenizer.bos_id, *plain, tokenizer.eos_id]
    assert tokenizer.decode([wrapped]) == ["hi"]


def test_training_is_deterministic_and_merges_common_words():
    first = TextTokenizer.train(BUILTIN_CORPUS.splitlines(), vocab_size=600)
    second = TextTokenizer.train(BUILTIN_CORPUS.splitlines(), vocab_size=600)
    assert first.tokenizer.to_str() == second.tokenizer.to_str()
    assert first.vocab_size <= 600
    assert len(first.encode([" the"])[0]) == 1


def test_default_tokenizer_trains_fast_and_is_cached():
    import time

    start = time.perf_counter()
    tokenizer = default_text_tokenizer(vocab_size=700)
    assert time.perf_counter() - start < 1.0
    assert default_text_tokenizer(vocab_size=700) is tokenizer


def test_pad_returns_long_ids_and_bool_mask():
    tokenizer = default_text_tokenizer()
    ids = tokenizer.encode(["the red cube", "a"])
    input_ids, mask = tokenizer.pad(ids, 8)
    assert input_ids.shape == (2, 8) and input_ids.dtype == torch.long
    assert mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [len(ids[0]), len(ids[1])]
    assert (input_ids[~mask] == tokenizer.pad_id).all()
    assert tokenizer.decode(input_ids) == ["the red cube", "a"]


def test_save_then_load_gives_identical_ids(tmp_path):
    tokenizer = default_text_tokenizer()
    tokenizer.save(tmp_path)
    loaded = TextTokenizer.load(tmp_path)
    assert loaded.encode(UNICODE_TEXTS) == tokenizer.encode(UNICODE_TEXTS)
    assert loaded.marker_ids == tokenizer.marker_ids


@pytest.mark.parametrize(
    "bad, message",
    [([], "empty"), ([""], "empty"), ("a string", "list"), ([3], "int")],
)
def test_bad_text_input_raises_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        default_text_tokenizer().encode(bad)


def test_decode_rejects_out_of_range_ids():
    tokenizer = default_text_tokenizer()
    with pytest.raises(ValueError, match="lie in"):
        tokenizer.decode([[tokenizer.vocab_size]])


def test_clip_tokenizer_uses_shipped_vocab_and_saves(tmp_path):
    tokenizer = ClipTextTokenizer()
    (ids,) = tokenizer.encode(["A photo of a cat"])
    assert ids[0] == 49406 and ids[-1] == 49407  # CLIP's start/end of text
    assert tokenizer.decode([ids]) == ["a photo of a cat"]
    assert len(set(tokenizer.marker_ids.values())) == 5
    assert min(tokenizer.marker_ids.values()) >= 49408
    tokenizer.save(tmp_path)
    loaded = TextTokenizer.load(tmp_path)
    assert isinstance(loaded, ClipTextTokenizer)
    assert loaded.encode(["A photo of a cat"]) == [ids]
