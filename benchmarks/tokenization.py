"""Tokenizer throughput: `python benchmarks/tokenization.py [--threads 2] [--repeats 3]`.

Prints a markdown table: text tokens/s (fmmm's byte-level BPE beside the raw `tokenizers`
library running the same model (its `encode_batch_fast`, which fmmm calls, and `encode_batch`), and open_clip's CLIP tokenizer), images/s, video clips/s, audio
seconds/s, actions/s and packed VLA samples/s. Each figure is the best of `--repeats` timed runs.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable


def best_seconds(function: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of `repeats` calls after one warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def best_seconds_interleaved(
    functions: dict[str, Callable[[], object]], repeats: int
) -> dict[str, float]:
    """Fastest wall time of each function over `repeats` rounds that run them in turn."""
    for function in functions.values():
        function()  # warm-up
    best = dict.fromkeys(functions, math.inf)
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2, help="torch and tokenizers threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-clip", action="store_true", help="skip open_clip's tokenizer")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        print("error: --threads and --repeats must be >= 1", file=sys.stderr)
        return 2
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)

    import torch

    from fmmm.tokenizers import (
        ActionTokenizer,
        AudioTokenizer,
        ClipTextTokenizer,
        ImageTokenizer,
        SequenceBuilder,
        StateNormalizer,
        VideoTokenizer,
        default_text_tokenizer,
    )
    from fmmm.tokenizers.text import BUILTIN_CORPUS

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows: list[tuple[str, str, float, str]] = []

    def record(name: str, workload: str, seconds: float, units: float, unit: str) -> float:
        rate = units / seconds
        rows.append((name, workload, rate, unit))
        print(f"{name:<28} {rate:>14,.0f} {unit}", file=sys.stderr)
        return rate

    lines = BUILTIN_CORPUS.splitlines()
    rng = random.Random(0)
    texts = [" ".join(rng.sample(lines, 3)) for _ in range(20000)]
    text_tokenizer = default_text_tokenizer()
    n_tokens = sum(len(ids) for ids in text_tokenizer.encode(texts))
    text_workload = f"{len(texts)} texts, {n_tokens} tokens"
    raw = text_tokenizer.tokenizer
    # alternate the runs so a busy machine slows every contender alike
    text_times = best_seconds_interleaved(
        {
            "text: fmmm TextTokenizer": lambda: text_tokenizer.encode(texts),
            "text: raw tokenizers (fast)": lambda: [
                e.ids for e in raw.encode_batch_fast(texts, add_special_tokens=False)
            ],
            "text: raw tokenizers": lambda: [
                e.ids for e in raw.encode_batch(texts, add_special_tokens=False)
            ],
        },
        args.repeats,
    )
    rates = {
        name: record(name, text_workload, seconds, n_tokens, "tokens/s")
        for name, seconds in text_times.items()
    }
    fmmm_rate, raw_rate = rates["text: fmmm TextTokenizer"], rates["text: raw tokenizers (fast)"]
    if not args.no_clip:
        clip = ClipTextTokenizer()
        clip_texts = texts[:2000]
        clip_tokens = sum(len(ids) for ids in clip.encode(clip_texts))
        record(
            "text: open_clip CLIP BPE",
            f"{len(clip_texts)} texts, {clip_tokens} tokens",
            best_seconds(lambda: clip.encode(clip_texts), args.repeats),
            clip_tokens,
            "tokens/s",
        )

    for size, source, patch in ((64, 64, 8), (224, 256, 16)):
        tokenizer = ImageTokenizer(size, patch)
        images = torch.randint(0, 256, (64, 3, source, source), dtype=torch.uint8)
        record(
            f"image: {source}px -> {size}/{patch}",
            f"64 uint8 images {source}x{source}",
            best_seconds(lambda t=tokenizer, x=images: t.encode(x), args.repeats),
            len(images),
            "images/s",
        )

    video_tokenizer = VideoTokenizer(64, 8, 2)
    videos = torch.randint(0, 256, (8, 16, 3, 64, 64), dtype=torch.uint8)
    record(
        "video: 16x64px, 2x8x8 tubes",
        "8 uint8 clips of 16 frames",
        best_seconds(lambda: video_tokenizer.encode(videos), args.repeats),
        len(videos),
        "clips/s",
    )

    audio_tokenizer = AudioTokenizer()
    for rate in (16000, 44100):
        t = torch.arange(rate * 10) / rate
        clips = torch.sin(2 * math.pi * 440 * t).repeat(8, 1) + 0.01 * torch.randn(8, rate * 10)
        record(
            f"audio: {rate} Hz -> log-mel",
            "8 clips of 10 s",
            best_seconds(lambda c=clips, r=rate: audio_tokenizer.encode(c, r), args.repeats),
            8 * 10,
            "audio s/s",
        )

    actions = torch.randn(100000, 7)
    for mu in (None, 100.0):
        action_tokenizer = ActionTokenizer(mu=mu).fit(actions)
        record(
            f"action: 7-D, {'mu-law' if mu else 'linear'} bins",
            f"{len(actions)} actions, encode + decode",
            best_seconds(lambda a=action_tokenizer: a.decode(a.encode(actions)), args.repeats),
            len(actions),
            "actions/s",
        )

    builder = SequenceBuilder(
        text_tokenizer,
        image_tokenizer=ImageTokenizer(64, 8),
        action_tokenizer=action_tokenizer,
        state_normalizer=StateNormalizer().fit(torch.randn(1000, 9)),
    )
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)

    def build_vla() -> object:
        samples = [
            builder.vla_sample(list(images), torch.randn(9), lines[i % len(lines)], actions[:4])
            for i in range(32)
        ]
        return builder.build(samples, 512)

    record(
        "sequence: VLA samples packed",
        "32 samples (2 images, state, text, 4x7 actions), L=512",
        best_seconds(build_vla, args.repeats),
        32,
        "samples/s",
    )

    print(
        f"\nthreads {args.threads}, {platform.processor() or platform.machine()}, torch {torch.__version__}"
    )
    print("\n| tokenizer | workload | throughput |\n| --- | --- | --- |")
    for name, workload, rate, unit in rows:
        print(f"| {name} | {workload} | {rate:,.0f} {unit} |")
    print(f"\nfmmm TextTokenizer / raw tokenizers encode_batch_fast: {fmmm_rate / raw_rate:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
