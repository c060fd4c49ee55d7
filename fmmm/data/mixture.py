"""`stats` (items and tokens per source and modality) and `mix` (a corpus with target proportions).

A source is the first folder under the input root (or a shard's name without its `-NNNNNN` index);
see `fmmm.data.pipeline.source_name`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fmmm.data.config import MixConfig, StatsConfig, computed_settings
from fmmm.data.pipeline import Unit, iter_items, list_units, run_units, work_folder
from fmmm.data.shards import PAYLOADS, Sample, ShardError, ShardWriter
from fmmm.utils.io import atomic_write_json, atomic_write_text

_worker: dict[str, Any] = {}


def _init_worker(tokenizer: str) -> None:
    _worker["tokenizer"] = None
    if tokenizer:
        from fmmm.tokenizers.text import TextTokenizer

        _worker["tokenizer"] = TextTokenizer.load(tokenizer)


def _tokens(texts: list[str]) -> int:
    if _worker.get("tokenizer") is None:
        return sum(len(t.split()) for t in texts)
    return sum(len(ids) for ids in _worker["tokenizer"].encode(texts))


def stats_unit(unit: Unit, work: Path) -> dict[str, Any]:
    """Items, tokens, payload bytes and frames per modality of one unit."""
    errors: list[ShardError] = []
    table: dict[str, dict[str, int]] = {}
    texts: list[str] = []
    last_modality = None

    def flush() -> None:
        if texts:
            table[last_modality]["tokens"] += _tokens(texts)
            texts.clear()

    for sample in iter_items(unit.path, errors.append):
        modality = sample["modality"]
        if modality != last_modality:
            flush()
            last_modality = modality
        row = table.setdefault(modality, {"items": 0, "tokens": 0, "bytes": 0, "frames": 0})
        row["items"] += 1
        row["bytes"] += sum(len(sample.get(p) or b"") for p in PAYLOADS)
        if modality == "episode":
            row["frames"] += len(sample["action"])
        if sample.get("text"):
            texts.append(sample["text"])
            if len(texts) >= 256:
                flush()
    flush()
    return {"source": unit.source, "table": table, "errors": [e.to_dict() for e in errors]}


def _collect_stats(units: list[Unit], work: Path, config) -> tuple[list[dict], int]:
    tokenizer = getattr(config, "tokenizer", "")
    return run_units(
        stats_unit,
        units,
        work,
        "stats",
        config,
        initializer=_init_worker,
        initargs=(tokenizer,),
    )


def _summarize(results: list[dict]) -> dict[str, dict[str, dict[str, int]]]:
    sources: dict[str, dict[str, dict[str, int]]] = {}
    for result in results:
        for modality, row in result["table"].items():
            target = sources.setdefault(result["source"], {}).setdefault(
                modality, {"items": 0, "tokens": 0, "bytes": 0, "frames": 0}
            )
            for key, value in row.items():
                target[key] += value
    return sources


def _format_table(sources: dict[str, dict[str, dict[str, int]]]) -> str:
    lines = [f"{'source':<20} {'modality':<9} {'items':>10} {'tokens':>14} {'share':>7}"]
    total = sum(row["items"] for table in sources.values() for row in table.values()) or 1
    for source in sorted(sources):
        for modality, row in sorted(sources[source].items()):
            lines.append(
                f"{source:<20} {modality:<9} {row['items']:>10} {row['tokens']:>14} "
                f"{row['items'] / total:>7.1%}"
            )
    return "\n".join(lines) + "\n"


def stats(inputs: list[str], output: str | None, config: StatsConfig) -> dict[str, Any]:
    """Items and tokens per source and modality; written to OUTPUT/stats.json when given."""
    import tempfile

    scratch = None
    if output is None:
        scratch = tempfile.TemporaryDirectory(prefix="fmmm-stats-")
        output = scratch.name
    try:
        units = list_units(inputs, output)
        work = work_folder(output, "stats", {"tokenizer": config.tokenizer}, units)
        results, reused = _collect_stats(units, work, config)
        sources = _summarize(results)
        errors = [e for r in results for e in r["errors"]]
        summary = _format_table(sources)
        if errors:
            summary += f"bad data skipped: {len(errors)}\n" + "".join(
                f"  {e['source']}:{e['position']}: {e['error']}\n" for e in errors[:5]
            )
        report = {
            "command": "stats",
            "units": len(units),
            "units_reused": reused,
            "sources": sources,
            "tokens": "tokenizer" if config.tokenizer else "whitespace words",
            "errors": errors,
        }
        if scratch is None:
            atomic_write_json(Path(output) / "stats.json", report)
            atomic_write_text(Path(output) / "summary.txt", summary)
        return report | {"summary": summary}
    finally:
        if scratch is not None:
            scratch.cleanup()


def plan_mixture(available: dict[str, int], config: MixConfig) -> dict[str, int]:
    """Items to take from each source so that the output follows `config.weights`."""
    weights = {s: w for s, w in config.weights.items() if w > 0}
    unknown = sorted(set(config.weights) - set(available))
    if unknown:
        raise ValueError(
            f"mix weights name unknown sources {unknown}; the corpus has {sorted(available)}"
        )
    norm = sum(weights.values())
    if config.total:
        total = config.total
    else:
        # the largest corpus that follows the weights without repeating an item
        total = int(min(available[s] / (w / norm) for s, w in weights.items()))
    targets = {s: int(np.floor(total * w / norm)) for s, w in weights.items()}
    # hand out the rounding remainder by largest fractional part, ties by name
    remainder = total - sum(targets.values())
    fractions = sorted(weights, key=lambda s: (-(total * weights[s] / norm) % 1, s))
    for source in fractions[:remainder]:
        targets[source] += 1
    for source, count in targets.items():
        if count > available[source] and not config.allow_repeat:
            raise ValueError(
                f"source {source!r} has {available[source]} items but the mix needs {count}; "
                "lower total or set allow_repeat=true"
            )
        if count > 0 and available[source] == 0:
            raise ValueError(f"source {source!r} has no items")
    return targets


def _repeats(available: int, wanted: int, rng: np.random.Generator) -> np.ndarray:
    """How many times each of `available` items is written so that `wanted` are written."""
    full, rest = divmod(wanted, available)
    counts = np.full(available, full, dtype=np.int64)
    counts[rng.permutation(available)[:rest]] += 1
    return counts


def _source_stream(units: list[Unit], counts: np.ndarray, epochs: int) -> Iterator[Sample]:
    for epoch in range(epochs):
        ordinal = 0
        for unit in units:
            for sample in iter_items(unit.path, lambda error: None):
                if counts[ordinal] > epoch:
                    yield sample if epoch == 0 else dict(sample, key=f"{sample['key']}-r{epoch}")
                ordinal += 1


def mix(inputs: list[str], output: str, config: MixConfig) -> dict[str, Any]:
    """Write a corpus following the target proportions, interleaving sources smoothly."""
    units = list_units(inputs, output)
    work = work_folder(output, "mix", {}, units)
    results, reused = _collect_stats(units, work, config)
    sources = _summarize(results)
    available = {s: sum(row["items"] for row in table.values()) for s, table in sources.items()}
    targets = plan_mixture(available, config)
    modalities = {m for s in targets if targets[s] for m in sources[s]}
    if "episode" in modalities:
        raise ValueError("mix writes shards; robot datasets cannot be mixed into them")
    fmt = config.format
    if fmt == "auto":
        fmt = "jsonl" if modalities <= {"text"} else "tar"
    rng = np.random.default_rng(config.seed)
    streams = {}
    for source in sorted(targets):
        if targets[source] == 0:
            continue
        counts = _repeats(available[source], targets[source], rng)
        mine = [u for u in units if u.source == source]
        streams[source] = _source_stream(mine, counts, int(counts.max()))
    from fmmm.utils.progress import progress

    out = Path(output) / "shards"
    written = {s: 0 for s in streams}
    credit = {s: 0.0 for s in streams}
    total = sum(targets.values())
    with (
        ShardWriter(out, fmt, config.samples_per_shard, prefix="mix") as writer,
        progress(total=total, desc="mix", unit="item", disable=not config.progress) as bar,
    ):
        # smooth weighted round robin: deterministic, every prefix close to the proportions,
        # and exactly targets[source] items of each source at the end
        for _ in range(total):
            for source in streams:
                credit[source] += targets[source]
            source = max(streams, key=lambda s: (credit[s], s))
            credit[source] -= total
            writer.write(next(streams[source]))
            written[source] += 1
            bar.update(1)
    shares = {s: written[s] / max(total, 1) for s in written}
    lines = [f"fmmm.data mix: {total} items into {out} ({len(writer.paths)} shards)"]
    for source in sorted(written):
        lines.append(
            f"  {source:<20} {written[source]:>10} items  {shares[source]:>7.1%}  "
            f"(target {config.weights[source] / sum(config.weights.values()):.1%}, "
            f"available {available[source]})"
        )
    summary = "\n".join(lines) + "\n"
    report = {
        "command": "mix",
        "units": len(units),
        "units_reused": reused,
        "available": available,
        "written": written,
        "shares": shares,
        "shards": [str(p) for p in writer.paths],
        "config": computed_settings(config),
        "errors": [e for r in results for e in r["errors"]],
    }
    atomic_write_json(Path(output) / "report.json", report)
    atomic_write_text(Path(output) / "summary.txt", summary)
    return report | {"summary": summary}
