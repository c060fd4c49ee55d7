import numpy as np
import pytest

from fmmm.data.minhash import (
    MinHasher,
    batch_shingles,
    batch_word_hashes,
    detection_probability,
    jaccard,
    normalize_text,
    optimal_bands_rows,
    shingles,
)
from fmmm.data.similarity import hamming_pairs, keep_first, perceptual_hash, popcount64

from .conftest import smooth_image


def test_normalisation_ignores_case_punctuation_and_spacing():
    assert normalize_text("Hello,   WORLD!\n It's  here…") == "hello world it s here"
    assert normalize_text("Ünïcode — “quotes”") == "ünïcode quotes"
    a, _ = batch_word_hashes(["The cat, sat."])
    b, _ = batch_word_hashes(["the CAT sat"])
    assert np.array_equal(a, b)


def test_batched_signatures_equal_one_document_at_a_time():
    rng = np.random.default_rng(0)
    texts = [" ".join(f"w{x}" for x in rng.integers(0, 500, n)) for n in (300, 3, 0, 7000, 40)]
    hasher = MinHasher(64, seed=3)
    batched = hasher.signatures(texts)
    for text, row in zip(texts, batched):
        assert np.array_equal(hasher.signatures([text])[0], row)
    assert (batched[2] == np.iinfo(np.uint32).max).all()  # empty text


def test_signature_agreement_estimates_exact_jaccard_without_bias():
    rng = np.random.default_rng(1)
    hasher = MinHasher(256)
    errors = []
    for _ in range(60):
        words = [f"t{x}" for x in rng.integers(0, 10**6, 400)]
        other = list(words)
        for position in rng.choice(400, int(rng.integers(5, 120)), replace=False):
            other[position] = f"n{rng.integers(10**6)}"
        a, b = " ".join(words), " ".join(other)
        signatures = hasher.signatures([a, b])
        estimate = (signatures[0] == signatures[1]).mean()
        errors.append(estimate - jaccard(shingles(a), shingles(b)))
    assert abs(np.mean(errors)) < 0.01 and np.std(errors) < 0.05


def test_short_text_is_one_shingle_and_batch_offsets_cover_each_text():
    hashes, offsets = batch_shingles(["a b", "one two three four five six", ""], 5)
    assert list(np.diff(offsets)) == [1, 2, 0]
    assert len(hashes) == 3


def test_s_curve_and_parameter_choice():
    assert detection_probability(0.8, 20, 5) == pytest.approx(1 - (1 - 0.8**5) ** 20)
    bands, rows = optimal_bands_rows(0.8, 128, 0.1, 0.9)
    assert bands * rows <= 128 and detection_probability(0.8, bands, rows) > 0.8
    with pytest.raises(ValueError, match="threshold"):
        optimal_bands_rows(1.5, 128)


def test_same_seed_same_permutations():
    assert np.array_equal(MinHasher(32, seed=5).a, MinHasher(32, seed=5).a)
    assert not np.array_equal(MinHasher(32, seed=5).a, MinHasher(32, seed=6).a)


def test_perceptual_hash_survives_reencoding_and_resizing_but_not_other_images():
    from PIL import Image

    image = smooth_image(0, size=64)
    resized = np.asarray(Image.fromarray(image).resize((40, 40)))
    hashes = np.array(
        [perceptual_hash(image), perceptual_hash(resized), perceptual_hash(smooth_image(1, 64))],
        dtype=np.uint64,
    )
    distances = popcount64(hashes[0] ^ hashes)
    assert distances[1] <= 4 and distances[2] > 12


def test_hamming_pairs_finds_every_pair_within_the_distance():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 200, dtype=np.uint64)
    flips = np.array(
        [sum(1 << int(b) for b in rng.choice(64, k, replace=False)) for k in [1, 3, 4, 5, 9]],
        dtype=np.uint64,
    )
    hashes = np.concatenate([base, base[:5] ^ flips])
    later, earlier, distance = hamming_pairs(hashes, np.arange(205), 4)
    found = sorted(zip(later.tolist(), earlier.tolist(), distance.tolist()))
    assert found == [(200, 0, 1), (201, 1, 3), (202, 2, 4)]  # 5 and 9 flipped bits are too far


def test_keep_first_removes_only_items_similar_to_a_kept_item():
    # chain 0~1~2 with 0 !~ 2: 1 goes (duplicate of 0), 2 stays (its only match was removed)
    removed, kept, _ = keep_first(np.array([1, 2, 4]), np.array([0, 1, 3]), np.ones(3))
    assert dict(zip(removed.tolist(), kept.tolist())) == {1: 0, 4: 3}
