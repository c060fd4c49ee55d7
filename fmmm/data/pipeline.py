"""The machinery every curation command shares: input units, parallel resumable shard maps, reports.

A unit is one input shard (.tar / .jsonl) or one robot dataset folder. Units are processed in
worker processes or Ray tasks (`executor=local|ray`, fmmm/data/executor.py), each result is written atomically to the run's work folder
(`OUTPUT/.work/<command>-<fingerprint>/`), and a unit with a result there is not redone: a run that
crashed resumes where it stopped. The fingerprint covers the config and the inputs' sizes and
modification times, so a changed config or input starts afresh.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fmmm.data.config import RunConfig
from fmmm.data.episodes import is_robot_dataset, iter_episodes, write_episode_subset
from fmmm.data.executor import make_executor
from fmmm.data.minhash import content_hash
from fmmm.data.shards import SHARD_SUFFIXES, Sample, ShardError, iter_samples, write_shard
from fmmm.utils.io import atomic_write_json, atomic_write_text

MAX_EXAMPLES = 20  # removed items listed per reason in report.json (all are in removed.jsonl)


@dataclass(frozen=True)
class Unit:
    """One input shard or robot dataset: `index` in the global order, its output path."""

    index: int
    path: str
    output: str
    source: str  # the corpus source it belongs to (see `source_name`)

    @property
    def kind(self) -> str:
        return "episodes" if is_robot_dataset(self.path) else Path(self.path).suffix.lstrip(".")


def iter_items(path: str, on_error: Callable[[ShardError], None] | None = None) -> Iterator[Sample]:
    """Samples of a shard, or episodes of a robot dataset folder."""
    if is_robot_dataset(path):
        return iter_episodes(path, on_error)
    return iter_samples(path, on_error)


def write_items(unit: Unit, samples: Iterable[Sample]) -> None:
    """Write the items a stage keeps: a shard, or the subset of a robot dataset's episodes (a
    dataset with no episode left is not written)."""
    if unit.kind == "episodes":
        positions = [sample["position"] for sample in samples]
        if positions:
            write_episode_subset(unit.path, unit.output, positions)
    else:
        write_shard(unit.output, samples)


def _walk_inputs(item: str) -> list[Path]:
    path = Path(item)
    if is_robot_dataset(path):
        return [path]
    if path.is_file():
        return [path]
    if not path.is_dir():
        import glob

        matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
        if not matches:
            raise ValueError(f"no such file, folder or glob match: {item}")
        return [m for match in matches for m in _walk_inputs(str(match))]
    found = []
    for folder, subfolders, files in os.walk(path):
        subfolders.sort()
        for name in list(subfolders):
            if name.startswith(".") or is_robot_dataset(Path(folder) / name):
                subfolders.remove(name)
                if not name.startswith("."):
                    found.append(Path(folder) / name)
        found += [
            Path(folder) / f
            for f in files
            if Path(f).suffix in SHARD_SUFFIXES and not f.startswith(".")
        ]
    return found


def source_name(path: Path, root: Path) -> str:
    """A unit's source: its first folder under the input root, else its name without shard index."""
    relative = path.relative_to(root)
    if len(relative.parts) > 1:
        return relative.parts[0]
    stem = relative.name.split(".")[0]
    head, _, tail = stem.rpartition("-")
    return head if head and tail.isdigit() else stem


def list_units(inputs: Sequence[str], output: str | os.PathLike) -> list[Unit]:
    """Resolve inputs to units in the global order; outputs mirror the input tree in OUT/shards/."""
    if not inputs:
        raise ValueError("no input given")
    paths = sorted({p.resolve() for item in inputs for p in _walk_inputs(str(item))})
    for path in paths:
        if path.is_file() and path.suffix not in SHARD_SUFFIXES:
            raise ValueError(f"{path}: not a shard (expected .tar, .jsonl or a robot dataset)")
    if not paths:
        raise ValueError(f"no shards or robot datasets found in {', '.join(map(str, inputs))}")
    root = Path(os.path.commonpath([str(p.parent) for p in paths]))
    output = Path(output).resolve()
    for item in inputs:
        folder = Path(item).resolve()
        if folder.is_dir() and (output == folder or folder in output.parents):
            raise ValueError(f"output folder {output} must lie outside the input folder {folder}")
    if any(output == p or output in p.parents for p in paths):
        raise ValueError(f"output folder {output} holds input shards; choose another folder")
    return [
        Unit(i, str(p), str(output / "shards" / p.relative_to(root)), source_name(p, root))
        for i, p in enumerate(paths)
    ]


def remove_partial_files(output: str | os.PathLike) -> list[Path]:
    """Delete the hidden `.<name>.<random>.tmp` files and folders that a killed run left in
    `output` (its top level, `shards/` and `.work/`); return what was removed. Every file a run
    writes goes through such a temporary, so none of them is a finished result."""
    output = Path(output)
    found = list(output.glob(".*.tmp"))
    for folder in (output / "shards", output / ".work"):
        if folder.is_dir():
            found += folder.rglob(".*.tmp")
    removed = []
    for path in sorted(found, key=lambda p: len(p.parts)):
        if not path.exists():
            continue  # inside a temporary folder removed just before
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path)
    return removed


def work_folder(output: str | os.PathLike, command: str, config: dict, units: list[Unit]) -> Path:
    """The run's work folder, named by a fingerprint of command, config and inputs. A run starts
    here, so the partial files of an earlier, killed run are removed first."""
    remove_partial_files(output)
    inputs = []
    for unit in units:
        stat = os.stat(unit.path)
        inputs.append([unit.path, stat.st_size, stat.st_mtime_ns])
    fingerprint = content_hash(json.dumps([command, config, inputs], sort_keys=True, default=str))
    return Path(output) / ".work" / f"{command}-{fingerprint:016x}"


def run_units(
    function: Callable[..., dict[str, Any]],
    units: list[Unit],
    work: Path,
    stage: str,
    run: RunConfig,
    args: tuple = (),
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> tuple[list[dict[str, Any]], int]:
    """Run `function(unit, work, *args) -> dict` on every unit not already done in this stage.

    `units` are shards, or anything with an `index` (the hash partitions of dedup); they run
    where `run.executor` says. Returns the results in unit order and how many were reused from
    an earlier run.
    """
    from fmmm.utils.progress import progress

    folder = work / stage
    folder.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any] | None] = [None] * len(units)
    todo = []
    for position, unit in enumerate(units):
        done = folder / f"{unit.index:06d}.json"
        if done.is_file():
            results[position] = json.loads(done.read_text())
        else:
            todo.append(position)
    reused = len(units) - len(todo)
    bar = progress(
        total=len(units), initial=reused, desc=stage, unit="shard", disable=not run.progress
    )

    def finish(position: int, result: dict[str, Any]) -> None:
        atomic_write_json(folder / f"{units[position].index:06d}.json", result)
        results[position] = result
        bar.update(1)

    try:
        if todo:
            executor = make_executor(run)
            pending = [units[position] for position in todo]
            for done, result in executor.map_unordered(
                function, pending, (work, *args), initializer, initargs
            ):
                finish(todo[done], result)
    finally:
        bar.close()
    return results, reused


def write_report(
    output: Path, command: str, report: dict[str, Any], removed: Iterator[dict[str, Any]]
) -> dict[str, Any]:
    """Write report.json, removed.jsonl and summary.txt into `output`; return the report as
    written (read back) with its `summary`."""
    by_reason: dict[str, int] = {}
    examples: dict[str, list[dict[str, Any]]] = {}
    lines = []
    for item in removed:
        by_reason[item["reason"]] = by_reason.get(item["reason"], 0) + 1
        if len(examples.setdefault(item["reason"], [])) < MAX_EXAMPLES:
            examples[item["reason"]].append(item)
        lines.append(json.dumps(item, sort_keys=True) + "\n")
    report = dict(report, command=command, removed_by_reason=by_reason, removed_examples=examples)
    atomic_write_text(output / "removed.jsonl", "".join(lines))
    atomic_write_json(output / "report.json", report)
    summary = summarize(report)
    atomic_write_text(output / "summary.txt", summary)
    return json.loads((output / "report.json").read_text()) | {"summary": summary}


def summarize(report: dict[str, Any]) -> str:
    """A readable summary of a report: counts, what was removed and why, bad data."""
    lines = [f"fmmm.data {report['command']}: {report.get('items_in', 0)} items read"]
    if "items_out" in report:
        lines[0] += f", {report['items_out']} written"
    lines[0] += f" ({report.get('units', 0)} shards, {report.get('units_reused', 0)} reused)"
    for reason, count in sorted(report.get("removed_by_reason", {}).items()):
        label = "flagged" if report.get("mode") == "report" else "removed"
        lines.append(f"  {label} {count:>8}  {reason}")
        for example in report["removed_examples"][reason][:3]:
            detail = f" ({example['detail']})" if example.get("detail") else ""
            lines.append(
                f"             e.g. {example['source']}:{example['position']} {example['key']}{detail}"
            )
    for line in report.get("notes", []):
        lines.append(f"  {line}")
    errors = report.get("errors", [])
    if errors:
        lines.append(f"  bad data skipped: {len(errors)}")
        for error in errors[:5]:
            lines.append(f"    {error['source']}:{error['position']}: {error['error']}")
    return "\n".join(lines) + "\n"
