"""Property-based tests: the tokenizers round-trip whatever they are given, and the shard readers
answer arbitrary bytes with data or `ShardError`, never another exception."""

from __future__ import annotations

import functools
import io
import json
import tarfile

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmmm.data.shards import ShardDataset, ShardError, iter_samples, unsafe_member_name
from fmmm.tokenizers.action import ActionTokenizer
from fmmm.tokenizers.image import ImageTokenizer
from fmmm.tokenizers.sequence import Modality, Segment, pack_samples
from fmmm.tokenizers.text import TextTokenizer

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@functools.cache
def text_tokenizer() -> TextTokenizer:
    corpus = ["the robot picks the red block", "a photo of a cat", "Ünïcödé ✓ 机器人 🤖"] * 20
    return TextTokenizer.train(corpus, vocab_size=320)


@SETTINGS
@given(st.text(min_size=1, max_size=200))
def test_text_tokenizer_round_trips_any_string(text):
    tokenizer = text_tokenizer()
    ids = tokenizer.encode([text])[0]
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode([ids])[0] == text


@SETTINGS
@given(st.text(min_size=1, max_size=50), st.booleans(), st.booleans())
def test_text_tokenizer_special_tokens_wrap_and_vanish(text, bos, eos):
    tokenizer = text_tokenizer()
    ids = tokenizer.encode([text], add_bos=bos, add_eos=eos)[0]
    if bos:
        assert ids[0] == tokenizer.bos_id
    if eos:
        assert ids[-1] == tokenizer.eos_id
    assert tokenizer.decode([ids])[0] == text


finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(
    data=st.data(),
    dims=st.integers(1, 6),
    num_bins=st.integers(2, 512),
)
def test_action_tokenizer_round_trips_within_half_a_bin(data, dims, num_bins):
    fit_rows = data.draw(st.lists(st.lists(finite, min_size=dims, max_size=dims), min_size=2))
    fit = torch.tensor(fit_rows, dtype=torch.float64)
    tokenizer = ActionTokenizer(num_bins=num_bins, low_quantile=0.0, high_quantile=1.0).fit(fit)
    rows = data.draw(st.lists(st.lists(finite, min_size=dims, max_size=dims), min_size=1))
    actions = torch.tensor(rows, dtype=torch.float64)

    bins = tokenizer.encode(actions)
    assert bins.dtype == torch.long and bins.shape == actions.shape
    assert int(bins.min()) >= 0 and int(bins.max()) < num_bins
    decoded = tokenizer.decode(bins).double()

    # inside the fitted range a value comes back within half a bin (plus float32 rounding);
    # outside it is clamped to the range
    low, high = tokenizer.low, tokenizer.high
    clamped = torch.maximum(torch.minimum(actions, high), low)
    half_bin = (high - low) / num_bins
    tolerance = half_bin + 1e-5 * (1 + clamped.abs())
    assert ((decoded - clamped).abs() <= tolerance).all()


@SETTINGS
@given(
    grid=st.integers(1, 6),
    patch=st.integers(1, 6),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_image_patchify_unpatchify_is_exact(grid, patch, batch, seed):
    tokenizer = ImageTokenizer(image_size=grid * patch, patch_size=patch)
    pixels = torch.randn(
        batch, 3, grid * patch, grid * patch, generator=torch.Generator().manual_seed(seed)
    )
    patches = tokenizer.patchify(pixels)
    assert patches.shape == (batch, grid * grid, 3 * patch * patch)
    assert torch.equal(tokenizer.unpatchify(patches), pixels)


@SETTINGS
@given(length=st.integers(1, 300), context=st.integers(1, 200))
def test_sequence_longer_than_context_is_refused_with_both_numbers(length, context):
    sample = [Segment(Modality.TEXT, ids=torch.ones(length, dtype=torch.long), loss=True)]
    if length <= context:
        assert pack_samples([sample], context).input_ids.shape == (1, context)
        return
    with pytest.raises(ValueError) as caught:
        pack_samples([sample], context)
    assert str(length) in str(caught.value) and str(context) in str(caught.value)
    truncated = pack_samples([sample], context, truncate=True)
    assert int((truncated.sample_ids > 0).sum()) == context


def _read_all(path):
    """Every sample of a shard read strictly (the first bad datum raises) and leniently."""
    errors = []
    lenient = list(iter_samples(path, on_error=errors.append))
    assert all(isinstance(error, ShardError) for error in errors)
    try:
        strict = list(iter_samples(path))
    except ShardError:
        strict = None
    return lenient, errors, strict


@SETTINGS
@given(st.binary(max_size=4096), st.sampled_from([".tar", ".jsonl"]))
def test_shard_reader_answers_arbitrary_bytes_with_samples_or_shard_error(tmp_path, data, suffix):
    path = tmp_path / f"shard{suffix}"
    path.write_bytes(data)
    lenient, errors, strict = _read_all(path)
    if strict is not None:
        assert len(strict) == len(lenient) and not errors
    try:
        dataset = ShardDataset(path)
    except ValueError:  # ShardError, or "no samples"
        return
    for index in range(len(dataset)):
        assert dataset[index]["key"] == lenient[index]["key"]


jsonl_lines = st.one_of(
    st.binary(max_size=64),
    st.builds(
        lambda t: b'{"text": ' + t.encode("utf-8", "surrogatepass") + b"}", st.text(max_size=20)
    ),
    st.dictionaries(st.text(max_size=5), st.one_of(st.text(max_size=10), st.integers())).map(
        lambda d: json.dumps(d).encode()
    ),
)


@SETTINGS
@given(st.lists(jsonl_lines, max_size=20))
def test_jsonl_reader_positions_name_the_bad_line(tmp_path, lines):
    path = tmp_path / "lines.jsonl"
    path.write_bytes(b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n")
    samples, errors, _ = _read_all(path)
    line_count = len(lines)
    for error in errors:
        assert error.source == str(path) and 1 <= error.position <= line_count
    for sample in samples:
        assert isinstance(sample["text"], str) and 1 <= sample["position"] <= line_count


member_names = st.one_of(
    st.text(alphabet=st.sampled_from("ab./\\:\x00 -_"), min_size=0, max_size=16),
    st.sampled_from(["../../evil.txt", "/etc/x.txt", "a/../b.txt", "./ok.txt", "c:x.txt", "k.txt"]),
)


@SETTINGS
@given(st.lists(st.tuples(member_names, st.binary(max_size=32)), max_size=8))
def test_tar_reader_never_yields_a_sample_with_an_unsafe_name(tmp_path, members):
    path = tmp_path / "names.tar"
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name or "x")
            info.name = name  # TarInfo normalizes; keep the name as an attacker writes it
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    samples, errors, _ = _read_all(path)
    for sample in samples:
        assert unsafe_member_name(sample["key"] + ".txt") is None
        assert not sample["key"].startswith("/") and ".." not in sample["key"].split("/")
    for error in errors:
        assert error.source == str(path)
