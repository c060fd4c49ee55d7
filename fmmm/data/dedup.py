"""`dedup`: exact and near-duplicate removal over shards and robot datasets.

Seven resumable stages, each a map over shards or hash partitions that runs in local worker
processes or as Ray tasks (`executor=local|ray`), so no step needs the whole corpus in memory:

1. features (per shard): content hashes, MinHash signatures and LSH bands (text), pHashes and
   optional CLIP embeddings (images, video frames), as .npy files; every band, pHash chunk and
   content hash is also filed under its hash partition (`partitions`).
2. exact (per partition): every item after the first with its content hash.
3. buckets (per partition): pairs sharing an LSH band or pHash chunk, verified (estimated or
   exact Jaccard, Hamming distance); partition 0 also searches image embeddings (faiss).
4. clusters (one task): connected components of the pairs, grouped into partitions.
5. keep (per partition): keep-first in the global order (unit order, then position): an item is
   removed when it duplicates an earlier item that is kept, so the first of every group stays.
6. decisions, 7. write (per shard): the kept items are written, the removed ones logged.

The output does not depend on the executor, the number of workers or of partitions.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmmm.data.config import DedupConfig, computed_settings
from fmmm.data.episodes import episode_hash
from fmmm.data.minhash import (
    MinHasher,
    band_hashes,
    content_hash,
    detection_probability,
    jaccard,
    normalize_text,
    optimal_bands_rows,
    partition_of,
    shingles,
)
from fmmm.data.pipeline import (
    Unit,
    iter_items,
    list_units,
    run_units,
    work_folder,
    write_items,
    write_report,
)
from fmmm.data.shards import Sample, ShardError, decode_image, decode_video
from fmmm.data.similarity import (
    RECALL_SAMPLE,
    bucket_pairs,
    component_roots,
    cosine_pairs,
    hash_chunks,
    keep_first,
    perceptual_hash,
    popcount64,
)

MODALITIES = ("text", "image", "audio", "video", "episode")
KINDS = ("text", "image", "video")  # items with near-duplicate features
REASONS = (
    "kept",
    "bad_data",
    "exact_duplicate",
    "near_duplicate_text",
    "near_duplicate_image",
    "near_duplicate_video",
)
_TEXT_BATCH = 512


def lsh_parameters(config: DedupConfig) -> tuple[int, int]:
    """(bands, rows): as configured, or minimising weighted false positives and negatives."""
    if config.bands:
        return config.bands, config.rows
    return optimal_bands_rows(config.threshold, config.num_perm, config.fp_weight, config.fn_weight)


def _pixels_key(pixels: np.ndarray) -> bytes:
    return str(pixels.shape).encode() + pixels.tobytes()


def _exact_key(sample: Sample, config: DedupConfig, pixels: np.ndarray | None) -> int:
    """Hash of the sample's normalised content: text, decoded pixels, audio bytes, trajectories."""
    modality = sample["modality"]
    if modality == "episode":
        return episode_hash(sample, config.episode_points, config.episode_decimals)
    caption = normalize_text(sample.get("text") or "").encode("utf-8")
    payload = {
        "text": b"",
        "image": _pixels_key(pixels) if pixels is not None else b"",
        "video": _pixels_key(pixels) if pixels is not None else b"",
        "audio": sample.get("audio") or b"",
    }[modality]
    return content_hash(modality.encode() + b"\0" + caption + b"\0" + payload)


def _save(folder: Path, arrays: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        tmp = folder / f".{name}.npy.tmp"
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        tmp.replace(folder / f"{name}.npy")


def extract_features(unit: Unit, work: Path, config: DedupConfig) -> dict[str, Any]:
    """Stage 1 for one unit: per-item hashes saved under work/features/<unit>/."""
    errors: list[ShardError] = []
    arrays = _item_features(iter_items(unit.path, errors.append), config, errors.append)
    items = len(arrays["exact"])
    good = np.setdiff1d(np.arange(items), arrays["bad"])
    keys = {
        "exact": arrays["exact"][good][:, None],
        "text": arrays["text_bands"],
        "image": hash_chunks(arrays["image_hashes"][:, 0], config.hamming),
        "video": hash_chunks(arrays["video_hashes"][:, 0], config.hamming),
    }
    ordinals = {"exact": good} | {kind: arrays[f"{kind}_ordinals"] for kind in KINDS}
    for kind in keys:
        arrays |= _bucket_table(kind, keys[kind], ordinals[kind], config.partitions)
    _save(work / "features" / f"{unit.index:06d}", arrays)
    return {"items": items, "errors": [e.to_dict() for e in errors]}


class _Batched:
    """Applies `function` to the added items in batches of `size`, so memory stays bounded."""

    def __init__(self, function: Callable[[list], np.ndarray] | None, size: int):
        self.function, self.size = function, size
        self.pending: list = []
        self.outputs: list[np.ndarray] = []

    def add(self, item: Any) -> None:
        self.pending.append(item)
        if len(self.pending) >= self.size:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.outputs.append(self.function(self.pending))
            self.pending = []

    def result(self, empty: np.ndarray) -> np.ndarray:
        """The outputs of every batch, concatenated; `empty` when nothing was added."""
        self._flush()
        return np.concatenate(self.outputs) if self.outputs else empty


def _pixels(sample: Sample) -> np.ndarray | None:
    """Decoded pixels of an image (H, W, C) or video (T, H, W, C) sample; None for the others."""
    if sample["modality"] == "image":
        return decode_image(sample)
    if sample["modality"] == "video":
        return decode_video(sample)
    return None


def _item_features(
    samples: Iterable[Sample], config: DedupConfig, on_error: Callable[[ShardError], None]
) -> dict[str, np.ndarray]:
    """Per-item arrays of one unit: content hash, modality, position and undecodable ordinals of
    every item; ordinals, MinHash signatures and LSH bands of texts; pHashes (and embeddings) of
    images; per-frame pHashes of videos."""
    bands, rows = lsh_parameters(config)
    hasher = MinHasher(config.num_perm, config.seed)
    encoder = _clip_encoder(config) if config.images and config.clip_model else None
    signatures = _Batched(lambda texts: hasher.signatures(texts, config.ngram), _TEXT_BATCH)
    embeddings = _Batched(encoder, 64)
    exact, modality, positions, bad = [], [], [], []
    text_ordinals, image_ordinals, image_hashes, video_ordinals, video_hashes = [], [], [], [], []
    for ordinal, sample in enumerate(samples):
        positions.append(sample["position"])
        modality.append(MODALITIES.index(sample["modality"]))
        try:
            pixels = _pixels(sample)
        except ShardError as error:
            on_error(error)
            bad.append(ordinal)
            exact.append(0)
            continue
        exact.append(_exact_key(sample, config, pixels))
        if sample["modality"] == "text" and config.text and normalize_text(sample["text"]):
            text_ordinals.append(ordinal)
            signatures.add(sample["text"])
        elif sample["modality"] == "image" and config.images:
            image_ordinals.append(ordinal)
            image_hashes.append(perceptual_hash(pixels))
            if encoder is not None:
                embeddings.add(pixels)
        elif sample["modality"] == "video" and config.images:
            frames = np.linspace(0, len(pixels) - 1, config.video_frames).round().astype(int)
            video_ordinals.append(ordinal)
            video_hashes.append([perceptual_hash(pixels[f]) for f in frames])
    signature_array = signatures.result(np.zeros((0, config.num_perm), dtype=np.uint32))
    return {
        "exact": np.array(exact, dtype=np.uint64),
        "modality": np.array(modality, dtype=np.int8),
        "position": np.array(positions, dtype=np.int64),
        "bad": np.array(bad, dtype=np.int64),
        "text_ordinals": np.array(text_ordinals, dtype=np.int64),
        "text_signatures": signature_array,
        "text_bands": band_hashes(signature_array, bands, rows),
        "image_ordinals": np.array(image_ordinals, dtype=np.int64),
        "image_hashes": np.array(image_hashes, dtype=np.uint64).reshape(-1, 1),
        "image_embeddings": embeddings.result(np.zeros((0, 0), np.float32)).astype(np.float32),
        "video_ordinals": np.array(video_ordinals, dtype=np.int64),
        "video_hashes": np.array(video_hashes, dtype=np.uint64).reshape(-1, config.video_frames),
    }


def _bucket_table(
    kind: str, keys: np.ndarray, ordinals: np.ndarray, partitions: int
) -> dict[str, np.ndarray]:
    """One row (column, key, ordinal) per key of (N, C) `keys`, grouped by hash partition.

    `{kind}_bucket_offsets[p:p + 2]` bound partition p's rows, so a bucket task reads only its
    slice of every unit (datatrove's MinHash signature stage writes its buckets the same way).
    """
    count, width = keys.shape
    columns = np.tile(np.arange(width, dtype=np.int16), count)
    flat = keys.reshape(-1)
    parts = partition_of(flat, columns, partitions)
    order = np.argsort(parts, kind="stable")
    return {
        f"{kind}_bucket_keys": flat[order],
        f"{kind}_bucket_columns": columns[order],
        f"{kind}_bucket_ordinals": np.repeat(np.asarray(ordinals, np.int64), width)[order],
        f"{kind}_bucket_offsets": np.searchsorted(parts[order], np.arange(partitions + 1)),
    }


def _clip_encoder(config: DedupConfig):
    from fmmm.data.filters import ClipScorer

    scorer = ClipScorer(config.clip_model, config.clip_pretrained)
    return scorer.embed_images


class FeatureStore:
    """The stage-1 arrays of every unit, addressed by global item id (memory-mapped)."""

    def __init__(self, work: Path, units: list[Unit], counts: list[int]):
        self.folders = [work / "features" / f"{u.index:06d}" for u in units]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def load(self, unit: int, name: str) -> np.ndarray:
        return np.load(self.folders[unit] / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    def unit_of(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, ids, side="right") - 1

    def rows(self, kind: str, name: str, ids: np.ndarray) -> np.ndarray:
        """Rows of `kind_name` for the given ids (each must have a `kind` row), reading only the
        units they lie in."""
        ids = np.asarray(ids, dtype=np.int64)
        unit_of = self.unit_of(ids)
        out = None
        for unit in np.unique(unit_of):
            mine = unit_of == unit
            ordinals = self.load(unit, f"{kind}_ordinals")
            where = np.searchsorted(ordinals, ids[mine] - self.offsets[unit])
            values = np.asarray(self.load(unit, f"{kind}_{name}")[where])
            if out is None:
                out = np.empty((len(ids), *values.shape[1:]), dtype=values.dtype)
            out[mine] = values
        return out if out is not None else np.zeros((0,), dtype=np.float32)

    def partition(self, kind: str, part: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, columns, keys) of partition `part` of the `kind` bucket table, over all units."""
        ids, columns, keys = [], [], []
        for unit in range(len(self.folders)):
            start, stop = self.load(unit, f"{kind}_bucket_offsets")[part : part + 2]
            ids.append(self.load(unit, f"{kind}_bucket_ordinals")[start:stop] + self.offsets[unit])
            columns.append(np.asarray(self.load(unit, f"{kind}_bucket_columns")[start:stop]))
            keys.append(np.asarray(self.load(unit, f"{kind}_bucket_keys")[start:stop]))
        return np.concatenate(ids), np.concatenate(columns), np.concatenate(keys)


@dataclass(frozen=True)
class Partition:
    """One hash partition of the bucket stages; `index` names its results in the work folder."""

    index: int


NAMES = ("later", "earlier", "score")  # the arrays of a set of pairs in the work folder


def _pairs_folder(work: Path, stage: str, part: int) -> Path:
    return work / "pairs" / stage / f"{part:06d}"


def _load_arrays(folder: Path, names: tuple[str, ...]) -> list[np.ndarray]:
    return [np.load(folder / f"{name}.npy", allow_pickle=False) for name in names]


def _pair_codes(later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """One uint64 per pair that sorts as (later, earlier) (ids below 2^32, as in bucket_pairs)."""
    return (np.asarray(later).astype(np.uint64) << np.uint64(32)) | np.asarray(earlier).astype(
        np.uint64
    )


def _split_codes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (codes >> np.uint64(32)).astype(np.int64), (codes & np.uint64(0xFFFFFFFF)).astype(
        np.int64
    )


def _unique_pairs(later: list[np.ndarray], earlier: list[np.ndarray]):
    """Concatenated pairs without repeats, ordered by (later, earlier)."""
    if not later:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    return _split_codes(np.unique(_pair_codes(np.concatenate(later), np.concatenate(earlier))))


def exact_partition(part: Partition, work: Path, units, counts, config) -> dict[str, Any]:
    """Stage 2 for one partition of content hashes: every item after the first of its hash."""
    store = FeatureStore(work, units, counts)
    ids, _, keys = store.partition("exact", part.index)
    later = earlier = np.zeros(0, np.int64)
    if config.exact and len(ids):
        order = np.argsort(ids, kind="stable")
        ids, keys = ids[order], keys[order]
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        first_id = ids[first[inverse]]
        duplicate = first_id != ids
        later, earlier = ids[duplicate], first_id[duplicate]
    _save(_pairs_folder(work, "exact", part.index), {"later": later, "earlier": earlier})
    return {"pairs": len(later)}


def _exact_duplicates(work: Path, ids: np.ndarray, partitions: int) -> np.ndarray:
    """Mask of `ids` removed as exact duplicates (read partition by partition)."""
    dead = np.zeros(len(ids), dtype=bool)
    for part in range(partitions):
        later = np.load(_pairs_folder(work, "exact", part) / "later.npy", mmap_mode="r")
        dead |= np.isin(ids, later)
    return dead


def _bucket_candidates(store: FeatureStore, work, kind, part, partitions, neighbours):
    """Pairs (later, earlier) sharing a key in one column of this partition, exact duplicates
    left out first."""
    ids, columns, keys = store.partition(kind, part)
    alive = ~_exact_duplicates(work, ids, partitions)
    later, earlier = [], []
    for column in np.unique(columns[alive]):
        mine = alive & (columns == column)
        pair = bucket_pairs([keys[mine]], ids[mine], neighbours)
        later.append(pair[0])
        earlier.append(pair[1])
    return _unique_pairs(later, earlier)


def bucket_partition(part: Partition, work: Path, units, counts, config) -> dict[str, Any]:
    """Stage 3 for one partition: verified near-duplicate pairs of text (LSH bands), images and
    videos (pHash chunks); the first partition also searches image embeddings, globally."""
    store = FeatureStore(work, units, counts)
    p, partitions = part.index, config.partitions
    pairs: dict[str, np.ndarray] = {}
    result: dict[str, Any] = {}
    if config.text:
        later, earlier = _bucket_candidates(
            store, work, "text", p, partitions, config.max_bucket_neighbours
        )
        similarity = _estimated_jaccard(store, later, earlier)
        if config.verify == "jaccard":
            sets = _exact_text_sets(
                units, store, np.unique(np.concatenate([later, earlier])), config.ngram
            )
            similarity = np.array(
                [jaccard(sets[int(a)], sets[int(b)]) for a, b in zip(later, earlier)]
            )
        keep = similarity >= config.threshold if config.verify != "none" else slice(None)
        pairs |= {"text_later": later[keep], "text_earlier": earlier[keep]}
        pairs["text_score"] = np.asarray(similarity, dtype=np.float64)[keep]
    if config.images:
        for kind in ("image", "video"):
            later, earlier = _bucket_candidates(store, work, kind, p, partitions, 64)
            distance = np.zeros(0, dtype=np.int64)
            if len(later):
                hashes_later = store.rows(kind, "hashes", later)
                hashes_earlier = store.rows(kind, "hashes", earlier)
                distance = popcount64(hashes_later ^ hashes_earlier).max(axis=1)
            keep = distance <= config.hamming
            pairs |= {f"{kind}_later": later[keep], f"{kind}_earlier": earlier[keep]}
            pairs[f"{kind}_score"] = 1.0 - distance[keep] / 64.0
        if config.clip_model and p == 0:
            ids = np.concatenate(
                [store.load(u, "image_ordinals") + store.offsets[u] for u in range(len(units))]
            )
            ids = ids[~_exact_duplicates(work, ids, partitions)]
            later = earlier = np.zeros(0, np.int64)
            cosine, recall = np.zeros(0), 1.0
            if len(ids):
                vectors = store.rows("image", "embeddings", ids)
                later, earlier, cosine, recall = cosine_pairs(
                    vectors, ids, config.cosine, config.ann_probes
                )
            pairs |= {"embedding_later": later, "embedding_earlier": earlier}
            pairs["embedding_score"] = np.asarray(cosine, dtype=np.float64)
            result |= {"embedding_recall": recall, "embedding_items": len(ids)}
    _save(_pairs_folder(work, "buckets", p), pairs)
    return result | {"pairs": sum(len(v) for k, v in pairs.items() if k.endswith("_later"))}


def _estimated_jaccard(store: FeatureStore, later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    if len(later) == 0:
        return np.zeros(0)
    nodes, inverse = np.unique(np.concatenate([later, earlier]), return_inverse=True)
    signatures = store.rows("text", "signatures", nodes)
    a, b = signatures[inverse[: len(later)]], signatures[inverse[len(later) :]]
    return (a == b).mean(axis=1)


def _exact_text_sets(units: list[Unit], store: FeatureStore, ids: np.ndarray, ngram: int):
    """Shingle sets of the given text items, re-read from their shards (exact verification)."""
    sets = {}
    unit_of = store.unit_of(ids)
    for unit in np.unique(unit_of):
        wanted = set((ids[unit_of == unit] - store.offsets[unit]).tolist())
        for ordinal, sample in enumerate(iter_items(units[unit].path, lambda error: None)):
            if ordinal in wanted:
                sets[int(store.offsets[unit] + ordinal)] = shingles(sample["text"], ngram)
    return sets


# The pair kinds of stage 3 and the removal reason of each; image pHash and embedding pairs are
# decided together, pHash first (as one keep-first pass over both).
_CLUSTERED = {
    "text": ("near_duplicate_text", ("text",)),
    "image": ("near_duplicate_image", ("image", "embedding")),
    "video": ("near_duplicate_video", ("video",)),
}


def cluster_pairs(part: Partition, work: Path, config) -> dict[str, Any]:
    """Stage 4 (one task): connected components of the duplicate pairs, grouped into hash
    partitions by component, so that keep-first can run on each partition alone."""
    arrays = {}
    for kind, (_, sources) in _CLUSTERED.items():
        later, earlier, score = [], [], []
        for source in sources:
            found = [
                _pairs_folder(work, "buckets", p) / f"{source}_later.npy"
                for p in range(config.partitions)
            ]
            found = [file for file in found if file.is_file()]  # embeddings: partition 0 only
            if not found:
                continue
            parts = [_load_arrays(f.parent, tuple(f"{source}_{n}" for n in NAMES)) for f in found]
            codes = np.concatenate([_pair_codes(x[0], x[1]) for x in parts])
            scores = np.concatenate([x[2] for x in parts]).astype(np.float64)
            # a pair found in several partitions (several bands) has the same score in each
            codes, first = np.unique(codes, return_index=True)
            pair_later, pair_earlier = _split_codes(codes)
            later.append(pair_later)
            earlier.append(pair_earlier)
            score.append(scores[first])
        later_all = np.concatenate(later) if later else np.zeros(0, np.int64)
        earlier_all = np.concatenate(earlier) if earlier else np.zeros(0, np.int64)
        score_all = np.concatenate(score) if score else np.zeros(0)
        nodes, inverse = np.unique(np.concatenate([later_all, earlier_all]), return_inverse=True)
        edges = len(later_all)
        roots = component_roots(inverse[:edges], inverse[edges:], len(nodes))
        # a component goes to the partition of its first item
        part_of = partition_of(nodes[roots[inverse[:edges]]], 0, config.partitions)
        order = np.argsort(part_of, kind="stable")
        arrays |= {
            f"{kind}_later": later_all[order],
            f"{kind}_earlier": earlier_all[order],
            f"{kind}_score": score_all[order],
            f"{kind}_offsets": np.searchsorted(part_of[order], np.arange(config.partitions + 1)),
        }
    _save(work / "pairs" / "clusters", arrays)
    return {"pairs": {kind: len(arrays[f"{kind}_later"]) for kind in _CLUSTERED}}


def keep_partition(part: Partition, work: Path, config) -> dict[str, Any]:
    """Stage 5 for one partition of components: keep-first in the global order."""
    folder = work / "pairs" / "clusters"
    removed, kept, scores, reasons = [], [], [], []
    for kind, (reason, _) in _CLUSTERED.items():
        start, stop = np.load(folder / f"{kind}_offsets.npy")[part.index : part.index + 2]
        later, earlier, score = (
            np.load(folder / f"{kind}_{name}.npy", mmap_mode="r")[start:stop] for name in NAMES
        )
        ids, kept_as, best = keep_first(np.asarray(later), np.asarray(earlier), np.asarray(score))
        removed.append(ids)
        kept.append(kept_as)
        scores.append(best)
        reasons.append(np.full(len(ids), REASONS.index(reason), dtype=np.int8))
    ids = np.concatenate(removed)
    order = np.argsort(ids)
    _save(
        _pairs_folder(work, "keep", part.index),
        {
            "later": ids[order],
            "earlier": np.concatenate(kept)[order],
            "score": np.concatenate(scores)[order],
            "reason": np.concatenate(reasons)[order],
        },
    )
    return {"removed": len(ids)}


def decide_unit(unit: Unit, work: Path, units, counts, config) -> dict[str, Any]:
    """Stage 6 for one unit: its removed items, their reasons and kept duplicates, as JSON."""
    from fmmm.utils.io import atomic_write_json

    store = FeatureStore(work, units, counts)
    position = units.index(unit)
    start, stop = store.offsets[position], store.offsets[position + 1]
    later, earlier, score, reason = [], [], [], []
    bad = store.load(position, "bad") + start
    later.append(bad)
    earlier.append(np.full(len(bad), -1, np.int64))
    score.append(np.full(len(bad), np.nan))
    reason.append(np.full(len(bad), REASONS.index("bad_data"), np.int8))
    for stage in ("exact", "keep"):
        for part in range(config.partitions):
            folder = _pairs_folder(work, stage, part)
            ids = np.load(folder / "later.npy", mmap_mode="r")
            first, last = np.searchsorted(ids, [start, stop])
            later.append(np.asarray(ids[first:last]))
            earlier.append(np.asarray(np.load(folder / "earlier.npy", mmap_mode="r")[first:last]))
            if stage == "exact":
                score.append(np.ones(last - first))
                reason.append(np.full(last - first, REASONS.index("exact_duplicate"), np.int8))
            else:
                score.append(np.asarray(np.load(folder / "score.npy", mmap_mode="r")[first:last]))
                reason.append(np.asarray(np.load(folder / "reason.npy", mmap_mode="r")[first:last]))
    later, earlier = np.concatenate(later), np.concatenate(earlier)
    score, reason = np.concatenate(score), np.concatenate(reason)
    decisions = {}
    for index in np.argsort(later, kind="stable").tolist():
        entry: dict[str, Any] = {"reason": REASONS[reason[index]]}
        if earlier[index] >= 0:
            kept_unit = int(store.unit_of(earlier[index]))
            kept_position = store.load(kept_unit, "position")[
                earlier[index] - store.offsets[kept_unit]
            ]
            entry["duplicate_of"] = f"{units[kept_unit].path}:{int(kept_position)}"
            entry["detail"] = f"similarity {score[index]:.3f}"
        decisions[str(int(later[index] - start))] = entry
    atomic_write_json(work / "decisions" / f"{unit.index:06d}.json", decisions)
    return {"removed": len(decisions)}


def write_unit(unit: Unit, work: Path) -> dict[str, Any]:
    """Stage 7 for one unit: write the kept items, log the removed ones."""
    decisions = json.loads((work / "decisions" / f"{unit.index:06d}.json").read_text())
    removed_at = {int(k): v for k, v in decisions.items()}
    removed, kept = [], []
    items = 0

    def kept_samples():
        nonlocal items
        for ordinal, sample in enumerate(iter_items(unit.path, lambda error: None)):
            items += 1
            decision = removed_at.get(ordinal)
            if decision is None:
                kept.append(sample["position"])
                yield sample
            else:
                removed.append(
                    {"source": unit.path, "position": sample["position"], "key": sample["key"]}
                    | decision
                )

    write_items(unit, kept_samples())
    return {"items_in": items, "items_out": len(kept), "removed": removed}


def _lsh_notes(config: DedupConfig) -> list[str]:
    bands, rows = lsh_parameters(config)
    probability = float(detection_probability(config.threshold, bands, rows))
    notes = [
        f"MinHash LSH: {config.num_perm} permutations, {bands} bands x {rows} rows; "
        f"a pair at Jaccard {config.threshold} is a candidate with probability {probability:.3f} "
        "(S-curve 1-(1-s^r)^b: "
        + ", ".join(
            f"{s:.2f}->{float(detection_probability(s, bands, rows)):.3f}"
            for s in (0.5, 0.7, 0.9, 0.95)
        )
        + ")"
    ]
    if probability < 0.5:
        notes.append(
            f"warning: detection probability {probability:.3f} < 0.5 at the threshold: most "
            "near duplicates at the threshold will be missed; use more bands or fewer rows"
        )
    return notes


def dedup(inputs: list[str], output: str, config: DedupConfig) -> dict[str, Any]:
    """Run the stages; write shards, report.json, removed.jsonl and summary.txt to `output`."""
    units = list_units(inputs, output)
    settings = computed_settings(config)
    work = work_folder(output, "dedup", settings, units)
    notes = _lsh_notes(config) if config.text else []
    for note in notes:
        print(note, file=sys.stderr)
    features, _ = run_units(extract_features, units, work, "features", config, (config,))
    counts = [result["items"] for result in features]
    partitions = [Partition(p) for p in range(config.partitions)]
    shared = (units, counts, config)
    run_units(exact_partition, partitions, work, "exact", config, shared)
    buckets, _ = run_units(bucket_partition, partitions, work, "buckets", config, shared)
    run_units(cluster_pairs, [Partition(0)], work, "clusters", config, (config,))
    run_units(keep_partition, partitions, work, "keep", config, (config,))
    run_units(decide_unit, units, work, "decide", config, shared)
    written, reused = run_units(write_unit, units, work, "write", config)
    if "embedding_recall" in buckets[0]:
        notes.append(
            f"image embedding search: recall {buckets[0]['embedding_recall']:.3f} against "
            f"exhaustive search on a sample of {min(RECALL_SAMPLE, buckets[0]['embedding_items'])}"
            f" of {buckets[0]['embedding_items']} images"
        )
    report = {
        "units": len(units),
        "units_reused": reused,
        "items_in": int(sum(counts)),
        "items_out": int(sum(r["items_out"] for r in written)),
        "config": settings,
        "notes": notes,
        "errors": [error for result in features for error in result["errors"]],
        "outputs": [unit.output for unit in units],
    }
    removed = (item for result in written for item in result["removed"])
    return write_report(Path(output), "dedup", report, removed)
