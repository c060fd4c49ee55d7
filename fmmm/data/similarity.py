"""Near-duplicate search on compact hashes: LSH bucket pairs, Hamming-ball pairs, keep-first.

Everything works on numpy arrays of hashes and global item indices (the deterministic order:
shard order, then position), never on the items themselves.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def perceptual_hash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash (pHash) of a uint8 (H, W, 3) or (H, W) image."""
    from PIL import Image

    gray = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("L")
    pixels = np.asarray(gray.resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    dct = _DCT @ pixels @ _DCT.T
    low = dct[:8, :8].reshape(-1)
    bits = low > np.median(low[1:])  # the DC term is excluded from the median, as in pHash
    return int(np.packbits(bits).view(">u8")[0])


def _dct_matrix(size: int) -> np.ndarray:
    k = np.arange(size)[:, None]
    n = np.arange(size)[None, :]
    matrix = np.cos(np.pi * (2 * n + 1) * k / (2 * size)) * np.sqrt(2.0 / size)
    matrix[0] /= np.sqrt(2.0)
    return matrix


_DCT = _dct_matrix(32)


def popcount64(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64."""
    return (
        np.unpackbits(np.ascontiguousarray(x, dtype=np.uint64).view(np.uint8))
        .reshape(*np.shape(x), 64)
        .sum(-1)
    )


def bucket_pairs(
    columns: Iterable[np.ndarray], ids: np.ndarray, max_neighbours: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (later, earlier) of ids sharing a value in any column (an LSH band or hash chunk).

    Within a bucket every item is paired with up to `max_neighbours` earlier members, so a large
    bucket costs O(size * max_neighbours), not O(size^2). Pairs are unique, later > earlier.
    """
    later, earlier = [], []
    ids = np.asarray(ids, dtype=np.int64)
    for column in columns:
        order = np.lexsort((ids, column))
        values, sorted_ids = column[order], ids[order]
        for shift in range(1, min(max_neighbours, len(ids) - 1) + 1):
            same = values[shift:] == values[:-shift]
            if not same.any():
                break
            later.append(sorted_ids[shift:][same])
            earlier.append(sorted_ids[:-shift][same])
    if not later:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    codes = np.unique(
        (np.concatenate(later).astype(np.uint64) << np.uint64(32))
        | np.concatenate(earlier).astype(np.uint64)
    )
    return (codes >> np.uint64(32)).astype(np.int64), (codes & np.uint64(0xFFFFFFFF)).astype(
        np.int64
    )


def hamming_pairs(
    hashes: np.ndarray, ids: np.ndarray, max_distance: int, max_neighbours: int = 64
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (later, earlier, distance) of ids whose 64-bit hashes differ in <= `max_distance` bits.

    `hashes` is (N,) or (N, K) (K frames of a video: every frame must be within the distance).
    Pigeonhole multi-index search: split 64 bits into `max_distance + 1` chunks; two hashes within
    the distance agree exactly on at least one chunk, so chunk buckets give every candidate.
    """
    if len(ids) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(len(ids), -1)
    chunks = max_distance + 1
    bounds = np.linspace(0, 64, chunks + 1).astype(np.uint64)
    columns = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        mask = np.uint64((1 << int(stop - start)) - 1)
        columns.append((hashes[:, 0] >> start) & mask)
    later, earlier = bucket_pairs(columns, ids, max_neighbours)
    if len(later) == 0:
        return later, earlier, np.zeros(0, dtype=np.int64)
    sorter = np.argsort(ids)
    rows_later = sorter[np.searchsorted(ids, later, sorter=sorter)]
    rows_earlier = sorter[np.searchsorted(ids, earlier, sorter=sorter)]
    distance = popcount64(hashes[rows_later] ^ hashes[rows_earlier]).max(axis=1)
    keep = distance <= max_distance
    return later[keep], earlier[keep], distance[keep]


def cosine_pairs(
    embeddings: np.ndarray, ids: np.ndarray, threshold: float, block: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (later, earlier, cosine) of ids with embedding cosine similarity >= `threshold`.

    Exhaustive blockwise search, O(N^2 D) time and O(block * N) memory.
    """
    vectors = np.asarray(embeddings, dtype=np.float32)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    order = np.argsort(ids, kind="stable")
    vectors, sorted_ids = vectors[order], np.asarray(ids, dtype=np.int64)[order]
    later, earlier, scores = [], [], []
    for start in range(0, len(vectors), block):
        similarity = vectors[start : start + block] @ vectors[: start + block].T
        rows, cols = np.nonzero(similarity >= threshold)
        keep = cols < rows + start  # only earlier items
        later.append(sorted_ids[rows[keep] + start])
        earlier.append(sorted_ids[cols[keep]])
        scores.append(similarity[rows[keep], cols[keep]])
    if not later:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(later), np.concatenate(earlier), np.concatenate(scores)


def keep_first(
    later: np.ndarray, earlier: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy keep-first over similar pairs: an item is removed when it is similar to an earlier
    item that is kept. Returns (removed ids, the kept item each duplicates, the pair's score).

    Items are decided in the global order, so a chain a~b~c with a !~ c removes b and keeps c:
    every removed item has a kept duplicate, unlike connected-component clustering.
    """
    order = np.lexsort((earlier, later))
    removed: dict[int, tuple[int, float]] = {}
    for item, other, score in zip(
        later[order].tolist(), earlier[order].tolist(), np.asarray(scores)[order].tolist()
    ):
        if item not in removed and other not in removed:
            removed[item] = (other, score)
    ids = np.fromiter(removed, dtype=np.int64, count=len(removed))
    kept = np.array([v[0] for v in removed.values()], dtype=np.int64)
    best = np.array([v[1] for v in removed.values()], dtype=np.float64)
    return ids, kept, best
