"""`dedup`: exact and near-duplicate removal over shards and robot datasets.

Three stages, each resumable: (1) per unit, in workers: hashes and signatures of every item, saved
as .npy files (no documents are kept); (2) globally: similar pairs from exact hashes, MinHash LSH
bands (text), pHash chunks and optional CLIP embeddings (images, video frames), decided in the
global order (unit order, then position): an item is removed when it duplicates an earlier item
that is kept, so the first of every group of duplicates stays; (3) per unit, in
workers: the kept items are written to the output, the removed ones logged with the reason.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from fmmm.data.config import DedupConfig
from fmmm.data.episodes import episode_hash, write_episode_subset
from fmmm.data.minhash import (
    MinHasher,
    band_hashes,
    content_hash,
    detection_probability,
    jaccard,
    normalize_text,
    optimal_bands_rows,
    shingles,
)
from fmmm.data.pipeline import Unit, iter_items, list_units, run_units, work_folder, write_report
from fmmm.data.shards import Sample, ShardError, decode_image, decode_video, write_shard
from fmmm.data.similarity import (
    bucket_pairs,
    cosine_pairs,
    hamming_pairs,
    keep_first,
    perceptual_hash,
)

MODALITIES = ("text", "image", "audio", "video", "episode")
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
    bands, rows = lsh_parameters(config)
    hasher = MinHasher(config.num_perm, config.seed)
    encoder = _clip_encoder(config) if config.images and config.clip_model else None
    errors: list[ShardError] = []
    exact, modality, positions, bad = [], [], [], []
    text_ordinals, texts, signatures = [], [], []
    image_ordinals, image_hashes, image_pixels, embeddings = [], [], [], []
    video_ordinals, video_hashes = [], []

    def flush_texts() -> None:
        if texts:
            signatures.append(hasher.signatures(texts, config.ngram))
            texts.clear()

    def flush_images() -> None:
        if image_pixels:
            embeddings.append(encoder(image_pixels))
            image_pixels.clear()

    ordinal = -1
    for ordinal, sample in enumerate(iter_items(unit.path, errors.append)):
        positions.append(sample["position"])
        modality.append(MODALITIES.index(sample["modality"]))
        try:
            pixels = None
            if sample["modality"] == "image":
                pixels = decode_image(sample)
            elif sample["modality"] == "video":
                pixels = decode_video(sample)
        except ShardError as error:
            errors.append(error)
            bad.append(ordinal)
            exact.append(0)
            continue
        exact.append(_exact_key(sample, config, pixels))
        if sample["modality"] == "text" and config.text and normalize_text(sample["text"]):
            text_ordinals.append(ordinal)
            texts.append(sample["text"])
            if len(texts) >= _TEXT_BATCH:
                flush_texts()
        elif sample["modality"] == "image" and config.images:
            image_ordinals.append(ordinal)
            image_hashes.append(perceptual_hash(pixels))
            if encoder is not None:
                image_pixels.append(pixels)
                if len(image_pixels) >= 64:
                    flush_images()
        elif sample["modality"] == "video" and config.images:
            frames = np.linspace(0, len(pixels) - 1, config.video_frames).round().astype(int)
            video_ordinals.append(ordinal)
            video_hashes.append([perceptual_hash(pixels[f]) for f in frames])
    flush_texts()
    if encoder is not None:
        flush_images()
    signature_array = (
        np.concatenate(signatures)
        if signatures
        else np.zeros((0, config.num_perm), dtype=np.uint32)
    )
    _save(
        work / "features" / f"{unit.index:06d}",
        {
            "exact": np.array(exact, dtype=np.uint64),
            "modality": np.array(modality, dtype=np.int8),
            "position": np.array(positions, dtype=np.int64),
            "bad": np.array(bad, dtype=np.int64),
            "text_ordinals": np.array(text_ordinals, dtype=np.int64),
            "text_signatures": signature_array,
            "text_bands": band_hashes(signature_array, bands, rows),
            "image_ordinals": np.array(image_ordinals, dtype=np.int64),
            "image_hashes": np.array(image_hashes, dtype=np.uint64).reshape(-1, 1),
            "image_embeddings": (
                np.concatenate(embeddings).astype(np.float32)
                if embeddings
                else np.zeros((0, 0), np.float32)
            ),
            "video_ordinals": np.array(video_ordinals, dtype=np.int64),
            "video_hashes": np.array(video_hashes, dtype=np.uint64).reshape(
                -1, config.video_frames
            ),
        },
    )
    return {"items": ordinal + 1, "errors": [e.to_dict() for e in errors]}


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

    def items(self, name: str) -> np.ndarray:
        """An item-level array (exact, modality, position) over all units."""
        return np.concatenate([self.load(u, name) for u in range(len(self.folders))])

    def ids(self, kind: str) -> np.ndarray:
        """Global ids of the items that have `kind` rows (text, image, video)."""
        return np.concatenate(
            [self.load(u, f"{kind}_ordinals") + self.offsets[u] for u in range(len(self.folders))]
        )

    def rows(self, kind: str, name: str, ids: np.ndarray) -> np.ndarray:
        """Rows of `kind_name` for the given ids (each must have a `kind` row)."""
        all_ids = self.ids(kind)
        where = np.searchsorted(all_ids, ids)
        unit_of = np.searchsorted(self.offsets, ids, side="right") - 1
        parts = []
        starts = np.concatenate(
            [
                [0],
                np.cumsum(
                    [len(self.load(u, f"{kind}_ordinals")) for u in range(len(self.folders))]
                ),
            ]
        )
        for unit in np.unique(unit_of):
            mine = unit_of == unit
            parts.append(
                (mine, np.asarray(self.load(unit, f"{kind}_{name}")[where[mine] - starts[unit]]))
            )
        if not parts:
            return np.zeros((0,), dtype=np.float32)
        out = np.empty((len(ids), *parts[0][1].shape[1:]), dtype=parts[0][1].dtype)
        for mine, values in parts:
            out[mine] = values
        return out

    def column(self, kind: str, name: str, column: int) -> np.ndarray:
        return np.concatenate(
            [
                np.asarray(self.load(u, f"{kind}_{name}")[:, column])
                for u in range(len(self.folders))
            ]
        )


def _exact_text_sets(units: list[Unit], store: FeatureStore, ids: np.ndarray, ngram: int):
    """Shingle sets of the given text items, re-read from their shards (exact verification)."""
    sets = {}
    unit_of = np.searchsorted(store.offsets, ids, side="right") - 1
    for unit in np.unique(unit_of):
        wanted = set((ids[unit_of == unit] - store.offsets[unit]).tolist())
        for ordinal, sample in enumerate(iter_items(units[unit].path, lambda error: None)):
            if ordinal in wanted:
                sets[int(store.offsets[unit] + ordinal)] = shingles(sample["text"], ngram)
    return sets


def find_duplicates(
    units: list[Unit], counts: list[int], work: Path, config: DedupConfig
) -> dict[str, np.ndarray]:
    """Stage 2: per global item, the removal reason code, the kept item it duplicates, a score."""
    store = FeatureStore(work, units, counts)
    total = int(store.offsets[-1])
    reason = np.zeros(total, dtype=np.int8)
    kept_as = np.full(total, -1, dtype=np.int64)
    score = np.full(total, np.nan, dtype=np.float64)
    for unit in range(len(units)):
        reason[store.load(unit, "bad") + store.offsets[unit]] = REASONS.index("bad_data")
    if config.exact:
        alive = np.flatnonzero(reason == 0)
        hashes = store.items("exact")[alive]
        _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        first_id = alive[first[inverse]]
        duplicate = first_id != alive
        reason[alive[duplicate]] = REASONS.index("exact_duplicate")
        kept_as[alive[duplicate]] = first_id[duplicate]
        score[alive[duplicate]] = 1.0

    def clusters(name: str, later: np.ndarray, earlier: np.ndarray, scores: np.ndarray) -> None:
        removed, kept, best = keep_first(later, earlier, scores)
        reason[removed] = REASONS.index(name)
        kept_as[removed] = kept
        score[removed] = best

    if config.text:
        bands, _ = lsh_parameters(config)
        ids = store.ids("text")
        alive = reason[ids] == 0
        columns = (store.column("text", "bands", b)[alive] for b in range(bands))
        later, earlier = bucket_pairs(columns, ids[alive], config.max_bucket_neighbours)
        similarity = _estimated_jaccard(store, later, earlier)
        if config.verify == "jaccard":
            sets = _exact_text_sets(
                units, store, np.unique(np.concatenate([later, earlier])), config.ngram
            )
            similarity = np.array(
                [jaccard(sets[int(a)], sets[int(b)]) for a, b in zip(later, earlier)]
            )
        keep = similarity >= config.threshold if config.verify != "none" else slice(None)
        clusters("near_duplicate_text", later[keep], earlier[keep], similarity[keep])
    if config.images:
        ids = store.ids("image")
        alive = ids[reason[ids] == 0]
        hashes = store.rows("image", "hashes", alive) if len(alive) else np.zeros((0, 1), np.uint64)
        later, earlier, distance = hamming_pairs(hashes, alive, config.hamming)
        scores = 1.0 - distance / 64.0
        if config.clip_model and len(alive):
            vectors = store.rows("image", "embeddings", alive)
            cos_later, cos_earlier, cosine = cosine_pairs(vectors, alive, config.cosine)
            later = np.concatenate([later, cos_later])
            earlier = np.concatenate([earlier, cos_earlier])
            scores = np.concatenate([scores, cosine])
        clusters("near_duplicate_image", later, earlier, scores)
        ids = store.ids("video")
        alive = ids[reason[ids] == 0]
        if len(alive):
            hashes = store.rows("video", "hashes", alive)
            later, earlier, distance = hamming_pairs(hashes, alive, config.hamming)
            clusters("near_duplicate_video", later, earlier, 1.0 - distance / 64.0)
    return {"reason": reason, "kept_as": kept_as, "score": score, "offsets": store.offsets}


def _estimated_jaccard(store: FeatureStore, later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    if len(later) == 0:
        return np.zeros(0)
    nodes, inverse = np.unique(np.concatenate([later, earlier]), return_inverse=True)
    signatures = store.rows("text", "signatures", nodes)
    a, b = signatures[inverse[: len(later)]], signatures[inverse[len(later) :]]
    return (a == b).mean(axis=1)


def write_unit(unit: Unit, work: Path) -> dict[str, Any]:
    """Stage 3 for one unit: write the kept items, log the removed ones."""
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

    if unit.kind == "episodes":
        for _ in kept_samples():
            pass
        if kept:  # a dataset with no episode left is not written
            write_episode_subset(unit.path, unit.output, kept)
    else:
        write_shard(unit.output, kept_samples())
    return {"items_in": items, "items_out": len(kept), "removed": removed}


def _save_decisions(units: list[Unit], work: Path, found: dict[str, np.ndarray]) -> None:
    from fmmm.utils.io import atomic_write_json

    offsets, reason, kept_as, score = (
        found["offsets"],
        found["reason"],
        found["kept_as"],
        found["score"],
    )
    positions = None
    for position, unit in enumerate(units):
        start, stop = offsets[position], offsets[position + 1]
        removed = np.flatnonzero(reason[start:stop] != 0)
        decisions = {}
        for ordinal in removed.tolist():
            item = start + ordinal
            entry: dict[str, Any] = {"reason": REASONS[reason[item]]}
            if kept_as[item] >= 0:
                if positions is None:
                    positions = FeatureStore(work, units, list(np.diff(offsets))).items("position")
                rep_unit = int(np.searchsorted(offsets, kept_as[item], side="right") - 1)
                entry["duplicate_of"] = f"{units[rep_unit].path}:{int(positions[kept_as[item]])}"
                entry["detail"] = f"similarity {score[item]:.3f}"
            decisions[str(ordinal)] = entry
        atomic_write_json(work / "decisions" / f"{unit.index:06d}.json", decisions)


def dedup(inputs: list[str], output: str, config: DedupConfig) -> dict[str, Any]:
    """Run the three stages; write shards, report.json, removed.jsonl and summary.txt to `output`."""
    from fmmm.config import config_to_dict

    units = list_units(inputs, output)
    settings = config_to_dict(config)
    for key in ("workers", "progress"):
        settings.pop(key)
    work = work_folder(output, "dedup", settings, units)
    notes = []
    if config.text:
        bands, rows = lsh_parameters(config)
        probability = float(detection_probability(config.threshold, bands, rows))
        notes.append(
            f"MinHash LSH: {config.num_perm} permutations, {bands} bands x {rows} rows; "
            f"a pair at Jaccard {config.threshold} is a candidate with probability {probability:.3f} "
            "(S-curve 1-(1-s^r)^b: "
            + ", ".join(
                f"{s:.2f}->{float(detection_probability(s, bands, rows)):.3f}"
                for s in (0.5, 0.7, 0.9, 0.95)
            )
            + ")"
        )
        print(notes[-1], file=sys.stderr)
        if probability < 0.5:
            notes.append(
                f"warning: detection probability {probability:.3f} < 0.5 at the threshold: most "
                "near duplicates at the threshold will be missed; use more bands or fewer rows"
            )
            print(notes[-1], file=sys.stderr)
    features, reused_features = run_units(
        extract_features, units, work, "features", config.workers, config.progress, (config,)
    )
    counts = [result["items"] for result in features]
    found = find_duplicates(units, counts, work, config)
    _save_decisions(units, work, found)
    written, reused = run_units(write_unit, units, work, "write", config.workers, config.progress)
    report = {
        "units": len(units),
        "units_reused": reused,
        "items_in": int(sum(counts)),
        "items_out": int(sum(r["items_out"] for r in written)),
        "config": config_to_dict(config),
        "notes": notes,
        "errors": [error for result in features for error in result["errors"]],
        "outputs": [unit.output for unit in units],
    }
    removed = (item for result in written for item in result["removed"])
    summary = write_report(Path(output), "dedup", report, removed)
    report = json.loads((Path(output) / "report.json").read_text())
    report["summary"] = summary
    return report
