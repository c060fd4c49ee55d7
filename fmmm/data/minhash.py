"""Text hashing for curation: normalisation, word n-gram hashes, vectorised MinHash and LSH bands.

Everything after per-document normalisation runs on whole batches in numpy: word hashes come
from prefix sums over the batch's bytes, n-gram hashes combine word hashes, and the permutations are
multiplicative hashes `a * x mod 2^32` of the shingles' top 32 bits (odd `a`: a bijection of
the 32-bit space; the shingle hashes are already uniform) applied to a whole batch of documents as one
(shingles, num_perm) array, reduced with `np.minimum.reduceat` per document.
"""

from __future__ import annotations

import functools
import string
import sys
import unicodedata
from collections.abc import Sequence

import numpy as np
import xxhash

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_NGRAM_BASE = np.uint64(0x9E3779B97F4A7C15)
_BYTE_BASE = 0x100000001B3  # odd: invertible modulo 2^64
_BLOCK_ROWS = 4096  # shingles per (num_perm, rows) block: small enough to stay in cache
_SPACE = ord(" ")
# ASCII punctuation, whitespace and control characters all become a space.
_ASCII_TABLE = bytes(
    _SPACE if (chr(c) in string.punctuation or c < 33 or c == 127) else c for c in range(256)
)


@functools.cache
def _unicode_table() -> dict[int, str]:
    return {
        code: " "
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code))[0] in "PSZ" or unicodedata.category(chr(code)) == "Cc"
    }


def normalized_bytes(text: str) -> bytes:
    """Lowercased UTF-8 with punctuation, symbols, whitespace and controls turned into spaces."""
    lowered = text.lower()
    if lowered.isascii():
        return lowered.encode("ascii").translate(_ASCII_TABLE)
    return lowered.translate(_unicode_table()).encode("utf-8").translate(_ASCII_TABLE)


def normalize_text(text: str) -> str:
    """The normalised form every text hash sees: its words joined by single spaces."""
    return b" ".join(normalized_bytes(text).split()).decode("utf-8")


def content_hash(data: bytes | str) -> int:
    """64-bit xxh3 of bytes (or of a string's UTF-8)."""
    return xxhash.xxh3_64_intdigest(data.encode("utf-8") if isinstance(data, str) else data)


def _mix64(x: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser: spreads the bits of polynomial hashes.
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * _MIX1
        x = x ^ (x >> np.uint64(27))
        x = x * _MIX2
        return x ^ (x >> np.uint64(31))


@functools.cache
def _powers(size: int) -> tuple[np.ndarray, np.ndarray]:
    # base^i and base^-i modulo 2^64 for i < size (size is a power of two: few cache entries).
    forward = np.full(size, _BYTE_BASE, dtype=np.uint64)
    backward = np.full(size, pow(_BYTE_BASE, -1, 2**64), dtype=np.uint64)
    forward[0] = backward[0] = 1
    with np.errstate(over="ignore"):
        return np.cumprod(forward), np.cumprod(backward)


def batch_word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """uint64 hash of every normalised word of every text, and (N + 1,) offsets per text.

    Words of the whole batch are hashed at once: a polynomial hash modulo 2^64 from prefix sums
    over the batch's bytes, finished with the splitmix64 mixer.
    """
    if len(texts) == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(1, dtype=np.int64)
    parts = [normalized_bytes(text) for text in texts]
    data = np.frombuffer(b" ".join(parts) + b" ", dtype=np.uint8)
    doc_starts = np.cumsum([0] + [len(p) + 1 for p in parts[:-1]])
    letters = np.concatenate([[False], data != _SPACE, [False]])
    starts = np.flatnonzero(letters[1:] & ~letters[:-1])
    ends = np.flatnonzero(letters[:-1] & ~letters[1:])
    forward, backward = _powers(1 << max(int(len(data)).bit_length(), 10))
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(data) + 1, dtype=np.uint64)
        np.cumsum(data * forward[: len(data)], out=prefix[1:])
        poly = (prefix[ends] - prefix[starts]) * backward[starts]
        hashes = _mix64(poly + (ends - starts).astype(np.uint64) * _NGRAM_BASE)
    offsets = np.searchsorted(starts, np.append(doc_starts, len(data)))
    return hashes, offsets


def ngram_hashes(words: np.ndarray, n: int) -> np.ndarray:
    """uint64 hash of every contiguous n-gram of word hashes (empty when fewer than n words)."""
    count = len(words) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    combined = words[:count].copy()
    with np.errstate(over="ignore"):
        for offset in range(1, n):
            combined = combined * _NGRAM_BASE + words[offset : offset + count]
    return _mix64(combined)


def batch_shingles(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """All word n-gram hashes of a batch, concatenated, and (N + 1,) offsets of each text's run.

    A text shorter than n words contributes one shingle of all its words; an empty text none.
    """
    words, word_offsets = batch_word_hashes(texts)
    lengths = np.diff(word_offsets)
    if len(words) == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(len(texts) + 1, dtype=np.int64)
    ends = word_offsets[1:]
    # n-grams of the concatenation; keep those that lie inside one text.
    grams = ngram_hashes(words, n)
    doc_of_start = np.repeat(np.arange(len(texts)), lengths)[: len(grams)]
    valid = np.arange(len(grams)) + n <= ends[doc_of_start]
    counts = np.bincount(doc_of_start[valid], minlength=len(texts))
    kept = grams[valid]
    if not np.any((lengths > 0) & (lengths < n)):
        return kept, np.concatenate([[0], np.cumsum(counts)])
    # Rare: splice in one whole-text shingle for each short text.
    pieces, kept_offsets = [], np.concatenate([[0], np.cumsum(counts)])
    for doc in range(len(texts)):
        if 0 < lengths[doc] < n:
            pieces.append(ngram_hashes(words[word_offsets[doc] : ends[doc]], int(lengths[doc])))
            counts[doc] = 1
        else:
            pieces.append(kept[kept_offsets[doc] : kept_offsets[doc + 1]])
    return np.concatenate(pieces), np.concatenate([[0], np.cumsum(counts)])


def shingles(text: str, n: int = 5) -> np.ndarray:
    """Sorted unique word n-gram hashes of `text` (the set exact Jaccard is computed on)."""
    return np.unique(batch_shingles([text], n)[0])


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique hash arrays."""
    if len(a) == 0 and len(b) == 0:
        return 1.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


class MinHasher:
    """`num_perm` permutations `a * x mod 2^32` of 32-bit shingle hashes, odd `a` drawn from `seed`."""

    def __init__(self, num_perm: int = 128, seed: int = 1):
        if num_perm < 1:
            raise ValueError(f"num_perm must be >= 1, got {num_perm}")
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = rng.integers(0, 2**31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)

    def signatures(self, texts: Sequence[str], n: int = 5) -> np.ndarray:
        """(N, num_perm) uint32 MinHash signatures of the texts' word n-grams.

        An empty text gets the all-0xFFFFFFFF signature (callers skip it).
        """
        hashes, offsets = batch_shingles(texts, n)
        return self.signatures_from_hashes(hashes, offsets)

    def signatures_from_hashes(self, hashes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Signatures of N hash runs `hashes[offsets[i]:offsets[i + 1]]` (see `batch_shingles`)."""
        count = len(offsets) - 1
        # Blocks are laid out (num_perm, rows) so the per-document reduction runs along
        # contiguous memory.
        hashes = (hashes >> np.uint64(32)).astype(np.uint32)
        best = np.full((self.num_perm, count), np.iinfo(np.uint32).max, dtype=np.uint32)
        buffer = np.empty((self.num_perm, _BLOCK_ROWS), dtype=np.uint32)
        doc_starts = offsets[:-1]
        nonempty = offsets[1:] > doc_starts
        for start in range(0, len(hashes), _BLOCK_ROWS):
            stop = min(start + _BLOCK_ROWS, len(hashes))
            block = buffer[:, : stop - start]
            with np.errstate(over="ignore"):
                np.multiply(self.a[:, None], hashes[None, start:stop], out=block)
            # Documents overlapping [start, stop), with their run starts clipped to the block.
            first = np.searchsorted(offsets[1:], start, side="right")
            last = np.searchsorted(doc_starts, stop, side="left")
            docs = first + np.flatnonzero(nonempty[first:last])
            segment_starts = np.maximum(doc_starts[docs], start) - start
            partial = np.minimum.reduceat(block, segment_starts, axis=1)
            best[:, docs] = np.minimum(best[:, docs], partial)
        return np.ascontiguousarray(best.T)


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(N, bands) uint64 hash of each band of `rows` consecutive signature values."""
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"bands x rows = {bands * rows} exceeds num_perm = {signatures.shape[1]}")
    grouped = signatures[:, : bands * rows].reshape(len(signatures), bands, rows).astype(np.uint64)
    combined = np.zeros(grouped.shape[:2], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for row in range(rows):
            combined = combined * _NGRAM_BASE + grouped[:, :, row]
        return _mix64(combined)


def partition_of(keys: np.ndarray, salt: np.ndarray | int, partitions: int) -> np.ndarray:
    """Hash partition in [0, partitions) of each uint64 key, salted by its column (band, chunk).

    Equal keys of one column always land in one partition: every LSH bucket is whole in one.
    """
    with np.errstate(over="ignore"):
        salted = np.asarray(keys, dtype=np.uint64) ^ (
            np.asarray(salt, dtype=np.uint64) * _NGRAM_BASE
        )
        return (_mix64(salted) % np.uint64(partitions)).astype(np.int64)


def detection_probability(similarity: float | np.ndarray, bands: int, rows: int) -> np.ndarray:
    """LSH S-curve: probability that a pair of Jaccard `similarity` shares at least one band."""
    return 1.0 - (1.0 - np.asarray(similarity, dtype=np.float64) ** rows) ** bands


def optimal_bands_rows(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising weighted false positive/negative area."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    below = np.linspace(0.0, threshold, 201)
    above = np.linspace(threshold, 1.0, 201)
    best, best_error = (1, 1), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = np.trapezoid(detection_probability(below, bands, rows), below)
            fn = np.trapezoid(1.0 - detection_probability(above, bands, rows), above)
            error = fp_weight * fp + fn_weight * fn
            if error < best_error:
                best, best_error = (bands, rows), error
    return best
