"""Near-duplicate search on compact hashes: LSH bucket pairs, Hamming-ball pairs, keep-first.

Everything works on numpy arrays of hashes and global item indices (the deterministic order:
shard order, then position), never on the items themselves.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

EXACT_BELOW = 4096  # embedding search is exhaustive below this many items: exact and cheap
RECALL_SAMPLE = 512  # queries whose embedding neighbours are checked against exhaustive search


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
    chunks = hash_chunks(hashes[:, 0], max_distance)
    later, earlier = bucket_pairs(chunks.T, ids, max_neighbours)
    if len(later) == 0:
        return later, earlier, np.zeros(0, dtype=np.int64)
    sorter = np.argsort(ids)
    rows_later = sorter[np.searchsorted(ids, later, sorter=sorter)]
    rows_earlier = sorter[np.searchsorted(ids, earlier, sorter=sorter)]
    distance = popcount64(hashes[rows_later] ^ hashes[rows_earlier]).max(axis=1)
    keep = distance <= max_distance
    return later[keep], earlier[keep], distance[keep]


def hash_chunks(hashes: np.ndarray, max_distance: int) -> np.ndarray:
    """(N, max_distance + 1) pigeonhole chunks of 64-bit hashes: hashes within `max_distance`
    bits of each other agree on at least one chunk."""
    hashes = np.asarray(hashes, dtype=np.uint64).reshape(-1)
    bounds = np.linspace(0, 64, max_distance + 2).astype(np.uint64)
    columns = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        mask = np.uint64((1 << int(stop - start)) - 1)
        columns.append((hashes >> start) & mask)
    return np.stack(columns, axis=1)


def cosine_pairs(
    embeddings: np.ndarray, ids: np.ndarray, threshold: float, probes: int = 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Pairs (later, earlier, cosine) of ids with embedding cosine similarity >= `threshold`, and
    the search's recall.

    A faiss inverted-file index (about 4 sqrt(N) k-means cells, `probes` of them searched per
    query) replaces the O(N^2) exhaustive search; up to `EXACT_BELOW` items the search is exact.
    Recall is measured against exhaustive search for a fixed sample of `RECALL_SAMPLE` items.
    """
    import faiss

    vectors = np.asarray(embeddings, dtype=np.float32)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    order = np.argsort(ids, kind="stable")
    vectors = np.ascontiguousarray(vectors[order])
    sorted_ids = np.asarray(ids, dtype=np.int64)[order]
    if len(vectors) < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32), 1.0
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one summation order: the same pairs on every machine
    try:
        dimension = vectors.shape[1]
        if len(vectors) < EXACT_BELOW:
            index = faiss.IndexFlatIP(dimension)
        else:
            cells = int(4 * np.sqrt(len(vectors)))
            index = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(dimension), dimension, cells, faiss.METRIC_INNER_PRODUCT
            )
            index.cp.seed = 1234
            sample = np.random.default_rng(0).permutation(len(vectors))[: 64 * cells]
            index.train(vectors[np.sort(sample)])
            index.nprobe = probes
        index.add(vectors)
        # range search keeps scores above the radius: step just below the threshold
        radius = float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))
        limits, scores, rows = index.range_search(vectors, radius)
    finally:
        faiss.omp_set_num_threads(threads)
    queries = np.repeat(np.arange(len(vectors)), np.diff(limits.astype(np.int64)))
    keep = (rows < queries) & (scores >= threshold)  # earlier items only
    later, earlier, cosine = sorted_ids[queries[keep]], sorted_ids[rows[keep]], scores[keep]
    sample = np.sort(np.random.default_rng(0).permutation(len(vectors))[:RECALL_SAMPLE])
    exact = vectors[sample] @ vectors.T >= threshold
    exact &= np.arange(len(vectors))[None, :] < sample[:, None]
    found = set(zip(queries[keep].tolist(), rows[keep].tolist()))
    sample_rows, columns = np.nonzero(exact)
    truth = set(zip(sample[sample_rows].tolist(), columns.tolist()))
    recall = len(truth & found) / len(truth) if truth else 1.0
    return later, earlier, cosine, recall


def component_roots(first: np.ndarray, second: np.ndarray, count: int) -> np.ndarray:
    """Connected components of the undirected graph on nodes 0..count-1 with edges
    (first[i], second[i]): each node's smallest component member (hooking + pointer jumping)."""
    roots = np.arange(count)
    while True:
        root_first, root_second = roots[first], roots[second]
        low = np.minimum(root_first, root_second)
        hooked = roots.copy()
        np.minimum.at(hooked, root_first, low)
        np.minimum.at(hooked, root_second, low)
        while not np.array_equal(hooked[hooked], hooked):
            hooked = hooked[hooked]
        if np.array_equal(hooked, roots):
            return roots
        roots = hooked


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
