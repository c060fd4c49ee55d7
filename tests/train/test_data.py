import numpy as np
import pytest

from fmmm.train.data import DatasetStream, EpochShuffle, MixtureStream, mixture_sources


def make_stream(weights=(0.5, 0.3, 0.2), sizes=(7, 50, 3), seed=0):
    sources = [
        (f"s{i}", [(i, j) for j in range(n)], w) for i, (n, w) in enumerate(zip(sizes, weights))
    ]
    return MixtureStream(sources, lambda samples, names: list(zip(names, samples)), seed=seed)


def test_mixture_proportions_stay_within_one_percent_over_a_run():
    weights = [0.6, 0.25, 0.15]
    for n in (1000, 5000, 20000):
        shares = np.bincount(mixture_sources(0, n, weights), minlength=3) / n
        assert np.abs(shares - weights).max() < 0.01
    shares = np.bincount(mixture_sources(123457, 1000, weights), minlength=3) / 1000
    assert np.abs(shares - weights).max() < 0.01


def test_batches_depend_only_on_sample_indices_not_on_how_they_are_split():
    stream = make_stream()
    whole = stream.batch(100, 64)
    parts = make_stream().batch(100, 16) + make_stream().batch(116, 48)
    assert whole == parts
    assert make_stream(seed=1).batch(100, 64) != whole


def test_each_source_is_drawn_without_replacement_within_an_epoch():
    stream = make_stream(weights=(1.0,), sizes=(40,))
    batch = stream.batch(0, 80)
    first, second = [s[1][1] for s in batch[:40]], [s[1][1] for s in batch[40:]]
    assert sorted(first) == list(range(40)) and sorted(second) == list(range(40))
    assert first != second  # a fresh permutation each epoch


def test_empty_source_and_bad_weights_are_rejected():
    with pytest.raises(ValueError, match="'empty' is empty"):
        MixtureStream([("empty", [], 1.0)], lambda s, n: s)
    with pytest.raises(ValueError, match="mixture weights"):
        mixture_sources(0, 4, [0.0, 0.0])
    with pytest.raises(ValueError, match="empty data source"):
        EpochShuffle(0, 0)


def test_dataset_stream_collates_plain_samples():
    stream = DatasetStream(list(range(10)), collate=sorted, seed=3)
    assert stream.batch(0, 10) == list(range(10))
