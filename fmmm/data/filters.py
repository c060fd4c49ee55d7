"""`filter`: Gopher and C4 text quality rules, a blocklist, image-text rules, CLIP-score filtering.

Every rule is a threshold in `FilterConfig`; every removal is counted under the rule's name.
C4 line rules edit a document (drop lines) before its document-level rules run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from fmmm.data.config import FilterConfig, computed_settings
from fmmm.data.minhash import batch_word_hashes, ngram_hashes, normalize_text
from fmmm.data.pipeline import Unit, iter_items, list_units, run_units, work_folder, write_report
from fmmm.data.shards import Sample, ShardError, decode_image, write_shard

STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])
BULLETS = ("•", "*", "-", "–", "‣", "●", "○", "▪", "◦")
TERMINAL = (".", "!", "?", '"', "'", "”", "’")
_SENTENCE_END = re.compile(r"[.!?]+(?:\s|$)")
_ALPHA = re.compile(r"[^\W\d_]")


def c4_clean(text: str, config: FilterConfig) -> tuple[str | None, str | None, int]:
    """Apply C4 rules: (cleaned text or None, the reason it was dropped, lines removed)."""
    lowered = text.lower()
    for substring in config.c4_bad_substrings:
        if substring in lowered:
            return None, f"c4:contains {substring!r}", 0
    kept, removed = [], 0
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        lower_line = stripped.lower()
        if (
            len(stripped.split()) < config.c4_min_line_words
            or (config.c4_terminal_punctuation and not stripped.endswith(TERMINAL))
            or any(s in lower_line for s in config.c4_bad_line_substrings)
        ):
            removed += 1
            continue
        kept.append(stripped)
    cleaned = "\n".join(kept)
    if len(_SENTENCE_END.findall(cleaned)) < config.c4_min_sentences:
        return None, "c4:too_few_sentences", removed
    return cleaned, None, removed


def _char_fraction_duplicated(items: list[str]) -> tuple[float, float]:
    """(fraction of items repeating an earlier one, fraction of characters in them)."""
    seen: set[str] = set()
    duplicates = duplicate_chars = total_chars = 0
    for item in items:
        total_chars += len(item)
        if item in seen:
            duplicates += 1
            duplicate_chars += len(item)
        seen.add(item)
    return duplicates / max(len(items), 1), duplicate_chars / max(total_chars, 1)


def gopher_reason(text: str, config: FilterConfig) -> str | None:
    """The first Gopher rule `text` fails (quality and repetition), or None."""
    words = text.split()
    if not config.min_words <= len(words) <= config.max_words:
        return "gopher:word_count"
    lengths = np.array([len(w) for w in words], dtype=np.float64)
    if not config.min_mean_word_length <= lengths.mean() <= config.max_mean_word_length:
        return "gopher:mean_word_length"
    symbols = text.count("#") + text.count("...") + text.count("…")
    if symbols / len(words) > config.max_symbol_ratio:
        return "gopher:symbol_ratio"
    lines = [line for line in text.splitlines() if line.strip()]
    if lines:
        bullets = sum(line.lstrip().startswith(BULLETS) for line in lines)
        if bullets / len(lines) > config.max_bullet_lines:
            return "gopher:bullet_lines"
        ellipsis = sum(line.rstrip().endswith(("...", "…")) for line in lines)
        if ellipsis / len(lines) > config.max_ellipsis_lines:
            return "gopher:ellipsis_lines"
    if sum(bool(_ALPHA.search(w)) for w in words) / len(words) < config.min_alpha_words:
        return "gopher:alphabetic_words"
    lowered = normalize_text(text).split()
    if sum(w in STOP_WORDS for w in lowered) < config.min_stop_words:
        return "gopher:stop_words"
    line_dup, line_chars = _char_fraction_duplicated(lines)
    if line_dup > config.max_duplicate_lines or line_chars > config.max_duplicate_line_chars:
        return "gopher:duplicate_lines"
    paragraphs = [p.strip() for p in re.split(r"\n{2,}", text) if p.strip()]
    para_dup, para_chars = _char_fraction_duplicated(paragraphs)
    if (
        para_dup > config.max_duplicate_paragraphs
        or para_chars > config.max_duplicate_paragraph_chars
    ):
        return "gopher:duplicate_paragraphs"
    return _ngram_repetition_reason(lowered, config)


def _ngram_repetition_reason(words: list[str], config: FilterConfig) -> str | None:
    hashes, _ = batch_word_hashes([" ".join(words)])
    lengths = np.array([len(w) for w in words], dtype=np.int64)
    total = max(int(lengths.sum()), 1)
    for n, limit in zip((2, 3, 4), config.max_top_ngram_chars):
        grams = ngram_hashes(hashes, n)
        if len(grams) == 0:
            break
        values, first, counts = np.unique(grams, return_index=True, return_counts=True)
        top = int(np.argmax(counts))
        if counts[top] > 1:
            start = first[top]
            if lengths[start : start + n].sum() * counts[top] / total > limit:
                return f"gopher:top_{n}gram"
    for n, limit in zip(range(5, 11), config.max_duplicate_ngram_chars):
        grams = ngram_hashes(hashes, n)
        if len(grams) == 0:
            break
        _, first = np.unique(grams, return_index=True)
        repeated = np.ones(len(grams), dtype=bool)
        repeated[first] = False
        covered = np.zeros(len(words) + 1, dtype=np.int64)
        starts = np.flatnonzero(repeated)
        np.add.at(covered, starts, 1)
        np.add.at(covered, starts + n, -1)
        in_duplicate = np.cumsum(covered)[: len(words)] > 0
        if lengths[in_duplicate].sum() / total > limit:
            return f"gopher:duplicate_{n}gram"
    return None


def load_blocklist(path: str) -> tuple[frozenset[str], tuple[str, ...]]:
    """Words and multi-word phrases (normalised) from a file with one entry per line."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"blocklist file not found: {path}")
    entries = {normalize_text(line) for line in file.read_text(encoding="utf-8").splitlines()}
    entries.discard("")
    words = frozenset(e for e in entries if " " not in e)
    return words, tuple(sorted(e for e in entries if " " in e))


def blocklist_hits(text: str, words: frozenset[str], phrases: tuple[str, ...]) -> int:
    """Occurrences of blocklisted words and phrases in the normalised text."""
    normalized = normalize_text(text)
    hits = sum(w in words for w in normalized.split())
    padded = f" {normalized} "
    return hits + sum(padded.count(f" {p} ") for p in phrases)


class ClipScorer:
    """An open_clip model (by name, or a model-config .json) with local weights, for scores."""

    def __init__(self, model: str, pretrained: str):
        import open_clip
        import torch

        torch.set_num_threads(1)
        if model.endswith(".json"):
            open_clip.add_model_config(model)
            model = Path(model).stem
        if pretrained and not Path(pretrained).is_file():
            raise ValueError(f"clip_pretrained file not found: {pretrained}")
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model, pretrained=pretrained or None
            )
        except RuntimeError as exc:
            raise ValueError(f"cannot build open_clip model {model!r}: {exc}") from None
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model)

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, D) unit-norm image embeddings of uint8 (H, W, 3) images."""
        import torch
        from PIL import Image

        batch = torch.stack([self.preprocess(Image.fromarray(image)) for image in images])
        with torch.no_grad():
            features = self.model.encode_image(batch)
        return torch.nn.functional.normalize(features, dim=-1).numpy()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        with torch.no_grad():
            features = self.model.encode_text(self.tokenizer(texts))
        return torch.nn.functional.normalize(features, dim=-1).numpy()

    def scores(self, images: list[np.ndarray], captions: list[str]) -> np.ndarray:
        """Cosine similarity of each image with its caption."""
        return (self.embed_images(images) * self.embed_texts(captions)).sum(-1)


_worker: dict[str, Any] = {}


def _init_worker(config: FilterConfig) -> None:
    _worker["blocklist"] = load_blocklist(config.blocklist) if config.blocklist else None
    _worker["clip"] = (
        ClipScorer(config.clip_model, config.clip_pretrained) if config.clip_model else None
    )


def _item_reason(sample: Sample, config: FilterConfig) -> tuple[str | None, Sample, int]:
    """(reason to remove or None, the possibly cleaned sample, lines removed by C4)."""
    lines_removed = 0
    if sample["modality"] == "text":
        text = sample["text"]
        if config.c4:
            text, reason, lines_removed = c4_clean(text, config)
            if reason:
                return reason, sample, lines_removed
            sample = dict(sample, text=text)
        if config.gopher:
            reason = gopher_reason(text, config)
            if reason:
                return reason, sample, lines_removed
    elif sample["modality"] in ("image", "audio", "video"):
        words = len((sample["text"] or "").split())
        if words < config.min_caption_words:
            return "caption:too_short", sample, 0
        if words > config.max_caption_words:
            return "caption:too_long", sample, 0
        if sample["modality"] == "image":
            height, width = decode_image(sample).shape[:2]
            if min(height, width) < config.min_image_side:
                return "image:too_small", sample, 0
            if max(height, width) / min(height, width) > config.max_aspect_ratio:
                return "image:aspect_ratio", sample, 0
    if _worker.get("blocklist") is not None and sample.get("text"):
        hits = blocklist_hits(sample["text"], *_worker["blocklist"])
        if hits > config.max_blocklist_hits:
            return "blocklist", sample, lines_removed
    return None, sample, lines_removed


def filter_unit(unit: Unit, work: Path, config: FilterConfig) -> dict[str, Any]:
    """Filter one unit into its output; returns counts and the removed items."""
    errors: list[ShardError] = []
    removed: list[dict[str, Any]] = []
    counts = {"items_in": 0, "items_out": 0, "lines_removed": 0}
    pending: list[tuple[Sample, np.ndarray]] = []  # image samples awaiting a CLIP batch

    def record(sample: Sample, reason: str, detail: str = "") -> None:
        entry = {"source": unit.path, "position": sample["position"], "key": sample["key"]}
        removed.append(entry | {"reason": reason} | ({"detail": detail} if detail else {}))

    def score_pending():
        images = [pixels for _, pixels in pending]
        scores = _worker["clip"].scores(images, [s["text"] or "" for s, _ in pending])
        for (sample, _), score in zip(pending, scores):
            if score < config.min_clip_score:
                record(sample, "clip_score", f"score {score:.3f}")
            else:
                counts["items_out"] += 1
                yield sample
        pending.clear()

    def kept():
        for sample in iter_items(unit.path, errors.append):
            counts["items_in"] += 1
            try:
                reason, sample, lines = _item_reason(sample, config)
                counts["lines_removed"] += lines
                if reason is None and _worker.get("clip") and sample["modality"] == "image":
                    pending.append((sample, decode_image(sample)))
                    if len(pending) >= 32:
                        yield from score_pending()
                    continue
            except ShardError as error:
                errors.append(error)
                record(sample, "bad_data", error.message)
                continue
            if reason is None:
                counts["items_out"] += 1
                yield sample
            else:
                record(sample, reason)
        if pending:
            yield from score_pending()

    if unit.kind == "episodes":  # no rule applies to robot episodes: the dataset is copied
        import shutil

        from fmmm.utils.io import atomic_dir

        count = sum(1 for _ in iter_items(unit.path, errors.append))
        with atomic_dir(unit.output) as folder:
            shutil.copytree(unit.path, folder, dirs_exist_ok=True)
        counts.update(items_in=count, items_out=count)
    else:
        write_shard(unit.output, kept())
    return counts | {"removed": removed, "errors": [e.to_dict() for e in errors]}


def filter_corpus(inputs: list[str], output: str, config: FilterConfig) -> dict[str, Any]:
    """Filter every unit; write shards, report.json, removed.jsonl and summary.txt to `output`."""
    units = list_units(inputs, output)
    settings = computed_settings(config)
    work = work_folder(output, "filter", settings, units)
    results, reused = run_units(
        filter_unit,
        units,
        work,
        "filter",
        config,
        (config,),
        _init_worker,
        (config,),
    )
    report = {
        "units": len(units),
        "units_reused": reused,
        "items_in": sum(r["items_in"] for r in results),
        "items_out": sum(r["items_out"] for r in results),
        "lines_removed_by_c4": sum(r["lines_removed"] for r in results),
        "config": settings,
        "errors": [e for r in results for e in r["errors"]],
        "outputs": [unit.output for unit in units],
    }
    removed = (item for r in results for item in r["removed"])
    return write_report(Path(output), "filter", report, removed)
