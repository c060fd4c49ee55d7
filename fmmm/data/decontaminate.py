"""`decontaminate`: find evaluation data inside training data, and remove or only report it.

Evaluation sets: JSONL text (`{"text": ..., "id": ...}` per line), folders of images, robot
dataset folders, and `sim:TASK:EPISODES[:SEED]` (the simulation suite's own evaluation episodes).
Rules: text shares a word n-gram with an eval item (13 by default: the GPT-3 / lm-eval rule), or
with `rule=fraction` covers at least `fraction` of an eval item's n-grams (PaLM: 8-grams, 70%);
an eval item shorter than n words matches when its whole word sequence occurs. Images match
within a pHash Hamming distance; episodes match on instruction and initial state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fmmm.data.config import DecontaminateConfig, computed_settings
from fmmm.data.episodes import is_robot_dataset, iter_episodes, sim_eval_episodes
from fmmm.data.minhash import batch_word_hashes, content_hash, ngram_hashes, normalize_text
from fmmm.data.pipeline import (
    Unit,
    iter_items,
    list_units,
    run_units,
    work_folder,
    write_items,
    write_report,
)
from fmmm.data.shards import IMAGE_EXTS, ShardError, decode_image, iter_samples
from fmmm.data.similarity import perceptual_hash, popcount64
from fmmm.utils.io import atomic_write_json


def _text_items(path: Path) -> list[tuple[str, str]]:
    return [(s["key"], s["text"]) for s in iter_samples(path)]


# names.json's "format": an index an earlier fmmm left in a resumed run's work folder is rebuilt
# (2: states of several widths, and the 16-wide simulation state)
INDEX_FORMAT = 2


def build_index(config: DecontaminateConfig, folder: Path) -> None:
    """Hash every evaluation set once into `folder` (numpy arrays + names.json)."""
    sets, grams, gram_items, lengths = [], [], [], []
    images, image_items, instructions, states, episode_items = [], [], [], [], []
    item_ids: list[str] = []
    item_sets: list[int] = []
    for set_index, spec in enumerate(config.eval_sets):
        path = Path(spec)
        if spec.startswith("sim:"):
            kind, name = "episodes", spec
            for item in sim_eval_episodes(spec):
                episode_items.append(len(item_ids))
                instructions.append(content_hash(normalize_text(item["instruction"])))
                states.append(item["initial_state"])
                item_ids.append(item["id"])
                item_sets.append(set_index)
        elif is_robot_dataset(path):
            kind, name = "episodes", path.name
            for episode in iter_episodes(path):
                episode_items.append(len(item_ids))
                instructions.append(content_hash(normalize_text(episode["text"])))
                states.append(np.asarray(episode["state"][0], dtype=np.float64))
                item_ids.append(episode["key"])
                item_sets.append(set_index)
        elif path.is_dir():
            kind, name = "images", path.name
            files = sorted(p for p in path.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTS)
            if not files:
                raise ValueError(f"eval set {spec}: no images found")
            for file in files:
                sample = {"image": file.read_bytes(), "key": str(file), "source": str(file)}
                images.append(perceptual_hash(decode_image(sample | {"position": 0})))
                image_items.append(len(item_ids))
                item_ids.append(str(file.relative_to(path)))
                item_sets.append(set_index)
        elif path.suffix == ".jsonl" and path.is_file():
            kind, name = "text", path.stem
            for key, text in _text_items(path):
                words, _ = batch_word_hashes([text])
                n = min(config.ngram, len(words))
                if n == 0:
                    continue
                unique = np.unique(ngram_hashes(words, n))
                grams.append(unique)
                gram_items.append(np.full(len(unique), len(item_ids), dtype=np.int64))
                lengths.append((len(item_ids), n, len(unique)))
                item_ids.append(key)
                item_sets.append(set_index)
        else:
            raise ValueError(
                f"eval set {spec}: expected a .jsonl file, an image folder, "
                "a robot dataset or sim:TASK:EPISODES"
            )
        sets.append({"spec": spec, "name": name, "kind": kind})
    gram_array = np.concatenate(grams) if grams else np.zeros(0, np.uint64)
    gram_item_array = np.concatenate(gram_items) if gram_items else np.zeros(0, np.int64)
    order = np.argsort(gram_array, kind="stable")
    item_gram_count = np.zeros(len(item_ids), dtype=np.int64)
    item_gram_length = np.zeros(len(item_ids), dtype=np.int64)
    for item, n, count in lengths:
        item_gram_count[item], item_gram_length[item] = count, n
    arrays = {
        "grams": gram_array[order],
        "gram_items": gram_item_array[order],
        "item_gram_count": item_gram_count,
        "item_gram_length": item_gram_length,
        "item_sets": np.array(item_sets, dtype=np.int64),
        "images": np.array(images, dtype=np.uint64),
        "image_items": np.array(image_items, dtype=np.int64),
        "instructions": np.array(instructions, dtype=np.uint64),
        "episode_items": np.array(episode_items, dtype=np.int64),
        **_state_arrays([np.ravel(s) for s in states]),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array, allow_pickle=False)
    atomic_write_json(
        folder / "names.json", {"format": INDEX_FORMAT, "sets": sets, "item_ids": item_ids}
    )


def _state_arrays(states: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Initial states of eval episodes as one array, NaN-padded to the widest, and each width:
    eval sets may mix state layouts (a 14-wide quaternion state of older datasets, the 16-wide
    rotation-column state of today's simulation)."""
    widths = np.array([len(s) for s in states], dtype=np.int64)
    padded = np.full((len(states), int(widths.max(initial=0))), np.nan)
    for row, state in enumerate(states):
        padded[row, : len(state)] = state
    return {"states": padded, "state_widths": widths}


_index: dict[str, Any] = {}


def _load_index(folder: str) -> None:
    _index.clear()
    for file in Path(folder).glob("*.npy"):
        _index[file.stem] = np.load(file, allow_pickle=False)
    _index["gram_lengths"] = sorted(set(_index["item_gram_length"][_index["item_gram_count"] > 0]))


def text_matches(text: str, config: DecontaminateConfig) -> list[int]:
    """Eval items (index ids) the text is contaminated with."""
    grams, gram_items = _index["grams"], _index["gram_items"]
    if len(grams) == 0 or not text:
        return []
    words, _ = batch_word_hashes([text])
    found: list[np.ndarray] = []
    for n in _index["gram_lengths"]:
        mine = np.unique(ngram_hashes(words, int(n)))
        left = np.searchsorted(grams, mine, side="left")
        right = np.searchsorted(grams, mine, side="right")
        hit = right > left
        if not hit.any():
            continue
        # every (gram, item) row whose gram the text contains, for items of this n-gram length
        rows = np.concatenate([np.arange(a, b) for a, b in zip(left[hit], right[hit])])
        items = gram_items[rows]
        items = items[_index["item_gram_length"][items] == n]
        if config.rule == "any":
            found.append(np.unique(items))
        else:
            counts = np.bincount(items, minlength=len(_index["item_gram_count"]))
            share = counts / np.maximum(_index["item_gram_count"], 1)
            found.append(np.flatnonzero((share >= config.fraction) & (counts > 0)))
    return sorted(set(np.concatenate(found).tolist())) if found else []


def image_matches(pixels: np.ndarray, config: DecontaminateConfig) -> list[int]:
    if len(_index["images"]) == 0:
        return []
    distance = popcount64(_index["images"] ^ np.uint64(perceptual_hash(pixels)))
    return _index["image_items"][distance <= config.hamming].tolist()


def episode_matches(sample: dict[str, Any], config: DecontaminateConfig) -> list[int]:
    if len(_index["episode_items"]) == 0:
        return []
    same_instruction = _index["instructions"] == np.uint64(
        content_hash(normalize_text(sample["text"] or ""))
    )
    state = np.ravel(np.asarray(sample["state"][0], dtype=np.float64))
    # only states of the same layout compare; the NaN padding of narrower ones is never close
    same_width = _index["state_widths"] == len(state)
    if not same_width.any():
        return []
    close = np.zeros(len(same_width), dtype=bool)
    distance = np.abs(_index["states"][same_width, : len(state)] - state).max(axis=1)
    close[same_width] = distance <= config.state_tolerance
    return _index["episode_items"][same_instruction & close].tolist()


def decontaminate_unit(unit: Unit, work: Path, config: DecontaminateConfig) -> dict[str, Any]:
    """Check every item of one unit; in remove mode write the clean items to the output."""
    errors: list[ShardError] = []
    flagged: list[dict[str, Any]] = []
    counts = {"items_in": 0, "items_out": 0}

    def clean():
        for sample in iter_items(unit.path, errors.append):
            counts["items_in"] += 1
            matches: list[int] = []
            try:
                if sample["modality"] == "episode":
                    matches = episode_matches(sample, config)
                else:
                    matches = text_matches(sample.get("text") or "", config)
                    if sample["modality"] == "image":
                        matches += image_matches(decode_image(sample), config)
            except ShardError as error:
                errors.append(error)
                flagged.append(
                    {"source": unit.path, "position": sample["position"], "key": sample["key"]}
                    | {"reason": "bad_data", "detail": error.message}
                )
                continue
            if matches:
                flagged.append(
                    {"source": unit.path, "position": sample["position"], "key": sample["key"]}
                    | {"reason": "contaminated", "eval_items": sorted(set(matches))}
                )
                if config.mode == "remove":
                    continue
            counts["items_out"] += 1
            yield sample

    if config.mode == "report":
        for _ in clean():
            pass
    else:
        write_items(unit, clean())
    return counts | {"flagged": flagged, "errors": [e.to_dict() for e in errors]}


def decontaminate(inputs: list[str], output: str, config: DecontaminateConfig) -> dict[str, Any]:
    """Check the corpus against every eval set; report per eval set what was found and where."""
    units = list_units(inputs, output)
    settings = computed_settings(config)
    work = work_folder(output, "decontaminate", settings, units)
    index_folder = work / "index"
    names_file = index_folder / "names.json"
    if not names_file.is_file() or json.loads(names_file.read_text()).get("format") != INDEX_FORMAT:
        build_index(config, index_folder)
    names = json.loads(names_file.read_text())
    results, reused = run_units(
        decontaminate_unit,
        units,
        work,
        "decontaminate",
        config,
        (config,),
        _load_index,
        (str(index_folder),),
    )
    item_sets = np.load(index_folder / "item_sets.npy")
    per_set = [
        {
            "eval_set": s["name"],
            "spec": s["spec"],
            "kind": s["kind"],
            "items": int((item_sets == i).sum()),
            "found_in_training": set(),
            "training_items": 0,
        }
        for i, s in enumerate(names["sets"])
    ]
    flagged = [item for r in results for item in r["flagged"]]
    for item in flagged:
        touched = set()
        for eval_item in item.get("eval_items", []):
            entry = per_set[item_sets[eval_item]]
            entry["found_in_training"].add(names["item_ids"][eval_item])
            touched.add(int(item_sets[eval_item]))
        for set_index in touched:
            per_set[set_index]["training_items"] += 1
        if "eval_items" in item:
            item["eval_items"] = [
                f"{names['sets'][item_sets[e]]['name']}:{names['item_ids'][e]}"
                for e in item["eval_items"]
            ]
            item["detail"] = ", ".join(item["eval_items"][:5])
    notes = []
    for entry in per_set:
        entry["found_in_training"] = sorted(entry["found_in_training"])
        entry["found"] = len(entry["found_in_training"])
        notes.append(
            f"eval set {entry['eval_set']} ({entry['kind']}): {entry['found']} of "
            f"{entry['items']} items found in {entry['training_items']} training items"
        )
    report = {
        "units": len(units),
        "units_reused": reused,
        "items_in": sum(r["items_in"] for r in results),
        "mode": config.mode,
        "eval_sets": per_set,
        "notes": notes,
        "config": settings,
        "errors": [e for r in results for e in r["errors"]],
    }
    if config.mode == "remove":
        report["items_out"] = sum(r["items_out"] for r in results)
        report["outputs"] = [unit.output for unit in units]
    return write_report(Path(output), "decontaminate", report, iter(flagged))
