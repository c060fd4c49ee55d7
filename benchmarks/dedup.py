"""MinHash-LSH near-duplicate detection: fmmm against datasketch on one corpus, in one run.

    python -m benchmarks.dedup [--docs 20000] [--words 250] [--repeats 5] [--out FILE.md]

Both use the same word 5-gram shingles of the same normalised text, the same number of
permutations and the same bands x rows. Throughput is documents per second from raw text to
candidate pairs (shingling, signatures, LSH); recall is the share of the pairs whose exact
Jaccard similarity is >= the threshold that come out as candidates. Each repeat runs both back to
back, in alternating order, in one process; the speed ratio is taken within each repeat and
reported as min / median / max over the repeats, beside the 1-minute load average
(`os.getloadavg`) before the run and during the repeats. datasketch is a benchmark-only
dependency (pip install datasketch).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np

from fmmm.data.minhash import (
    MinHasher,
    band_hashes,
    detection_probability,
    normalize_text,
    optimal_bands_rows,
)
from fmmm.data.similarity import bucket_pairs


def make_corpus(docs: int, words: int, seed: int) -> list[str]:
    """Random-word documents; a third are edited copies of earlier ones (Jaccard 0.3 to 1)."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(50_000)])
    texts: list[list[str]] = []
    for index in range(docs):
        if index > 10 and rng.random() < 0.33:
            copy = list(texts[int(rng.integers(0, index))])
            edits = int(rng.integers(0, 25))
            positions = rng.integers(0, len(copy), edits)
            for position in positions:
                copy[position] = str(vocab[rng.integers(0, len(vocab))])
            texts.append(copy)
        else:
            texts.append(vocab[rng.integers(0, len(vocab), words)].tolist())
    return [" ".join(t) + "." for t in texts]


def shingle_sets(texts: list[str], n: int = 5) -> list[set[str]]:
    sets = []
    for text in texts:
        words = normalize_text(text).split()
        sets.append({" ".join(words[i : i + n]) for i in range(max(len(words) - n + 1, 1))})
    return sets


def true_pairs(sets: list[set[str]], threshold: float) -> set[tuple[int, int]]:
    """(later, earlier) pairs with exact Jaccard >= threshold, via an inverted index."""
    postings: dict[str, list[int]] = {}
    for index, shingles in enumerate(sets):
        for shingle in shingles:
            postings.setdefault(shingle, []).append(index)
    shared: Counter = Counter()
    for docs in postings.values():
        for a in range(1, len(docs)):
            for b in range(a):
                shared[(docs[a], docs[b])] += 1
    return {
        pair
        for pair, inter in shared.items()
        if inter / (len(sets[pair[0]]) + len(sets[pair[1]]) - inter) >= threshold
    }


def run_fmmm(texts: list[str], num_perm: int, bands: int, rows: int) -> tuple[float, set]:
    start = time.perf_counter()
    hasher = MinHasher(num_perm, seed=1)
    signatures = np.concatenate(
        [hasher.signatures(texts[i : i + 512], 5) for i in range(0, len(texts), 512)]
    )
    keys = band_hashes(signatures, bands, rows)
    later, earlier = bucket_pairs((keys[:, b] for b in range(bands)), np.arange(len(texts)))
    elapsed = time.perf_counter() - start
    return elapsed, set(zip(later.tolist(), earlier.tolist()))


def run_datasketch(texts: list[str], num_perm: int, bands: int, rows: int) -> tuple[float, set]:
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    lsh = MinHashLSH(num_perm=num_perm, params=(bands, rows))
    pairs = set()
    for index, text in enumerate(texts):
        words = normalize_text(text).split()
        shingles = {" ".join(words[i : i + 5]) for i in range(max(len(words) - 4, 1))}
        signature = MinHash(num_perm=num_perm, seed=1)
        signature.update_batch([s.encode("utf-8") for s in shingles])
        for other in lsh.query(signature):
            pairs.add((index, other))
        lsh.insert(index, signature)
    elapsed = time.perf_counter() - start
    return elapsed, pairs


def spread(values: list[float], fmt: str) -> str:
    """'min / median / max' of `values`, each formatted with `fmt`."""
    return " / ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--words", type=int, default=250)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed runs of both")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown report here")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    texts = make_corpus(args.docs, args.words, args.seed)
    truth = true_pairs(shingle_sets(texts), args.threshold)
    bands, rows = optimal_bands_rows(args.threshold, args.num_perm, 0.1, 0.9)
    runners = {"fmmm": run_fmmm, "datasketch": run_datasketch}
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    candidates: dict[str, set] = {}
    loads = []
    for repeat in range(args.repeats):
        order = list(runners) if repeat % 2 == 0 else list(reversed(runners))
        for name in order:
            elapsed, pairs = runners[name](texts, args.num_perm, bands, rows)
            # Both are deterministic (seeded), so every repeat must return the same candidates.
            if candidates.setdefault(name, pairs) != pairs:
                raise RuntimeError(f"{name} returned different candidates across repeats")
            seconds[name].append(elapsed)
        loads.append(os.getloadavg()[0])
        print(
            f"repeat {repeat}: fmmm {seconds['fmmm'][-1]:.2f} s, "
            f"datasketch {seconds['datasketch'][-1]:.2f} s, load {loads[-1]:.1f}"
        )
    results = {}
    for name, times in seconds.items():
        pairs = candidates[name]
        results[name] = {
            "docs_per_s": [len(texts) / t for t in times],
            "seconds": times,
            "recall": len(truth & pairs) / max(len(truth), 1),
            "candidates": len(pairs),
        }
        print(
            f"{name:>10}: {spread(results[name]['docs_per_s'], '.0f')} docs/s "
            f"(min / median / max)  recall {results[name]['recall']:.4f}  "
            f"candidates {len(pairs)}"
        )
    speedups = [d / f for f, d in zip(seconds["fmmm"], seconds["datasketch"])]
    print(f"fmmm / datasketch throughput: {spread(speedups, '.1f')} (min / median / max)")
    if args.out:
        date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
        command = (
            f"python -m benchmarks.dedup --docs {args.docs} --words {args.words} "
            f"--num-perm {args.num_perm} --threshold {args.threshold} --repeats {args.repeats}"
        )
        lines = [
            "# Dedup benchmark: MinHash-LSH, fmmm vs datasketch",
            "",
            f"- Command: `{command} --out {args.out}`",
            f"- Machine: 2-core CPU, no GPU (shared; {platform.processor() or platform.machine()})",
            f"- Date: {date}; 1-minute load average {load_before:.1f} before the run, "
            f"{spread(loads, '.1f')} (min / median / max) during the repeats, its own work "
            "included",
            f"- Corpus: {len(texts)} documents of ~{args.words} words, a third of them edited "
            f"copies; {len(truth)} pairs with exact Jaccard >= {args.threshold} (word 5-grams)",
            f"- Both: {args.num_perm} permutations, {bands} bands x {rows} rows "
            f"(S-curve at {args.threshold}: "
            f"{float(detection_probability(args.threshold, bands, rows)):.3f}), one process, "
            "raw text to candidate pairs",
            "- Permutations: the same number for both, each library with its own hash family "
            "(datasketch: SHA-1 per shingle, then (a x + b) mod 2^61-1; fmmm: vectorised "
            "polynomial word/n-gram hashes, then a x mod 2^32)",
            "- Recall: share of the exact-Jaccard pairs that the LSH returns as candidates "
            "(before any verification)",
            f"- Repeats: {args.repeats}, each running both back to back in alternating order; "
            "docs/s, seconds and the ratio are min / median / max over the repeats, the ratio "
            "taken within each repeat",
            "",
            "| implementation | docs/s | seconds | recall | candidate pairs |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, row in results.items():
            lines.append(
                f"| {name} | {spread(row['docs_per_s'], ',.0f')} | {spread(row['seconds'], '.2f')} "
                f"| {row['recall']:.4f} | {row['candidates']} |"
            )
        lines += [
            "",
            f"fmmm / datasketch throughput: **{spread(speedups, '.1f')}x** (min / median / max).",
            "",
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
