"""Dedup at three corpus sizes, `executor=local` against `executor=ray`, on this machine.

    python -m benchmarks.curation_scale [--sizes 4000 16000 64000] [--shards 16] [--out FILE.md]

The corpus is `benchmarks.dedup.make_corpus` (random-word documents, a third edited copies of
earlier ones) in `--shards` JSONL shards. Each size runs dedup with 2 local worker processes, then
as Ray tasks on a local 2-CPU cluster started once beforehand (its start-up time is reported on
its own), checks that both write byte-identical shards and removed.jsonl, and reports wall
seconds, Ray's overhead, the 1-minute load average and the work folder's bytes per stage, the
figures behind the memory model in docs/data.md. On 2 CPUs the point is overhead and
correctness, not speed-up.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from benchmarks.dedup import make_corpus
from fmmm.config import load_config
from fmmm.data.config import DedupConfig
from fmmm.data.dedup import dedup
from fmmm.data.shards import list_shards, make_sample, write_shard
from fmmm.utils.ray_cluster import OBJECT_STORE_BYTES, worker_runtime_env

STAGES = ("features", "pairs/exact", "pairs/buckets", "pairs/clusters", "pairs/keep", "decisions")


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def run(inputs: Path, output: Path, *settings: str) -> float:
    config = load_config(DedupConfig, None, ["progress=false", *settings])
    start = time.perf_counter()
    dedup([str(inputs)], str(output), config)
    return time.perf_counter() - start


def outputs(output: Path) -> tuple[list[bytes], str]:
    shards = [p.read_bytes() for p in list_shards(output / "shards")]
    return shards, (output / "removed.jsonl").read_text().replace(str(output), "OUT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 16000, 64000])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import ray

    start = time.perf_counter()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=OBJECT_STORE_BYTES,
        log_to_driver=False,
        runtime_env=worker_runtime_env(),
    )
    ray_start = time.perf_counter() - start
    rows = []
    with tempfile.TemporaryDirectory(prefix="curation-scale-") as scratch:
        root = Path(scratch)
        for size in args.sizes:
            texts = make_corpus(size, args.words, seed=size)
            per_shard = -(-size // args.shards)
            inputs = root / f"in-{size}"
            for shard in range(args.shards):
                chunk = texts[shard * per_shard : (shard + 1) * per_shard]
                samples = [make_sample(f"d{shard}-{i}", text) for i, text in enumerate(chunk)]
                write_shard(inputs / f"web-{shard:06d}.jsonl", samples)
            load_before = os.getloadavg()[0]
            local = run(inputs, root / f"local-{size}", "workers=2")
            on_ray = run(inputs, root / f"ray-{size}", "executor=ray")
            same = outputs(root / f"local-{size}") == outputs(root / f"ray-{size}")
            work = next((root / f"local-{size}" / ".work").glob("dedup-*"))
            stage_bytes = {s: folder_bytes(work / s) for s in STAGES}
            rows.append((size, local, on_ray, same, load_before, os.getloadavg()[0], stage_bytes))
            print(rows[-1], flush=True)
    ray.shutdown()
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"{time.strftime('%Y-%m-%d')}; "
        f"{args.shards} shards of {args.words}-word documents; Ray local cluster start-up "
        f"{ray_start:.1f} s (not in the times below).",
        "",
        "| documents | local, 2 workers (s) | ray, 2 CPUs (s) | ray overhead (s) | same output "
        "| load before / after |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for size, local, on_ray, same, before, after, _ in rows:
        lines.append(
            f"| {size} | {local:.1f} | {on_ray:.1f} | {on_ray - local:+.1f} | {same} "
            f"| {before:.2f} / {after:.2f} |"
        )
    lines += ["", "Work folder bytes per document, by stage:", ""]
    lines.append("| documents | " + " | ".join(STAGES) + " |")
    lines.append("| --- |" + " --- |" * len(STAGES))
    for size, *_, stage_bytes in rows:
        lines.append(
            f"| {size} | " + " | ".join(f"{stage_bytes[s] / size:.1f}" for s in STAGES) + " |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out is not None:
        args.out.write_text(report)


if __name__ == "__main__":
    main()
