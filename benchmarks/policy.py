"""VLA policy speed on CPU: actions per second of each action head, with and without the KV
cache, at several chunk sizes.

    python -m benchmarks.policy                       # quickstart-sized model, random weights
    python -m benchmarks.policy --heads tokens,l1,flow --chunks 4,8
    python -m benchmarks.policy --policy runs/quickstart --seconds 5

Each setting serves actions through `VLAPolicy.act` (the evaluation path) on fixed observations
at batch 1 after warm-up (docs/eval.md, "Control frequency"); every chunk is executed whole. A
chunk of k actions costs one prefill plus k*7 decoded tokens with the `tokens` head, one forward
pass with `l1`, and `flow_steps` forward passes with `flow`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

STATE_DIM = 16


def quickstart_vla(
    chunk: int, head: str = "tokens", flow_steps: int = 10, flow_compile: bool = False
):
    """The quickstart's VLA (configs/quickstart.yaml: conv stem, FiLM, both cameras), random weights."""
    from dataclasses import replace

    from fmmm.config import load_config
    from fmmm.models.factory import create_model_and_builder
    from fmmm.policies.vla import VLA
    from fmmm.resources import data_dir
    from fmmm.tokenizers.action import ActionTokenizer, StateNormalizer
    from fmmm.tokenizers.text import default_text_tokenizer
    from fmmm.train.vla import VLARunConfig

    cfg = load_config(VLARunConfig, data_dir("configs") / "quickstart.yaml")
    config = replace(cfg.model, state_dim=STATE_DIM)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    actions = torch.rand(256, 7, generator=generator) * 2 - 1
    tokenizers = {
        "text": default_text_tokenizer(config.text_vocab_size),
        "action": ActionTokenizer(config.action_bins).fit(actions),
        "state": StateNormalizer().fit(torch.randn(256, STATE_DIM, generator=generator)),
    }
    model, builder = create_model_and_builder(config, tokenizers)
    policy = replace(
        cfg.policy, chunk=chunk, execute=chunk, normalize_patches=False, head=head,
        flow_steps=flow_steps, flow_compile=flow_compile,
    )  # fmt: skip
    return VLA(model, builder, policy).eval()


def observation() -> dict:
    rng = np.random.default_rng(0)
    return {
        "agentview": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "wrist": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "state": rng.normal(size=STATE_DIM).astype(np.float32),
        "instruction": "reach the red cube",
    }


def actions_per_second(vla, use_cache: bool, seconds: float) -> float:
    """Actions served per second by `VLAPolicy.act` with the cache on or off."""
    from fmmm.policies.vla import VLAPolicy

    vla.config.use_cache = use_cache
    policy = VLAPolicy(vla)
    obs = observation()
    for _ in range(3 * vla.config.chunk):  # warm-up
        policy.act(obs)
    served, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or served < vla.config.chunk:
        policy.act(obs)
        served += 1
    return served / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--policy",
        default=None,
        help="run directory of a trained VLA (default: random quickstart-sized model)",
    )
    parser.add_argument("--chunks", default="1,4", help="comma-separated chunk sizes")
    parser.add_argument("--heads", default="tokens", help="comma-separated heads: tokens,l1,flow")
    parser.add_argument("--flow-steps", type=int, default=10, help="Euler steps of the flow head")
    parser.add_argument(
        "--flow-compile", action="store_true", help="torch.compile the flow head's Euler steps"
    )
    parser.add_argument("--seconds", type=float, default=4.0, help="timing window per setting")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per setting")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from fmmm.policies.vla import VLA

    chunks = [int(c) for c in args.chunks.split(",")]
    heads = [h.strip() for h in args.heads.split(",")]
    settings = [
        (c, "tokens", cache) for c in chunks for cache in (True, False) if "tokens" in heads
    ]
    settings += [(c, h, True) for c in chunks for h in heads if h != "tokens"]  # flow: prefix cache
    vlas = {}
    for chunk, head, _ in settings:
        if (chunk, head) not in vlas:
            vlas[chunk, head] = (
                VLA.load(args.policy, chunk=chunk, execute=chunk, flow_compile=args.flow_compile)
                if args.policy
                else quickstart_vla(chunk, head, args.flow_steps, args.flow_compile)
            )
    rates: dict[tuple[int, str, bool], list[float]] = {s: [] for s in settings}
    for _ in range(args.repeats):  # interleaved, so machine load hits every setting alike
        for chunk, head, use_cache in settings:
            rate = actions_per_second(vlas[chunk, head], use_cache, args.seconds)
            rates[chunk, head, use_cache].append(rate)
    base = settings[0]
    rows = []
    for chunk, head, use_cache in settings:
        # against the first setting, and against the tokens head with the cache at this chunk
        peer = (chunk, "tokens", True) if (chunk, "tokens", True) in rates else base
        ratios = [a / b for a, b in zip(rates[chunk, head, use_cache], rates[base])]
        versus = [a / b for a, b in zip(rates[chunk, head, use_cache], rates[peer])]
        rows.append({"chunk": chunk, "head": head, "kv_cache": use_cache,
                     "forward_passes_per_chunk": vlas[chunk, head].forward_passes_per_chunk,
                     "actions_per_second": float(np.median(rates[chunk, head, use_cache])),
                     "ratio_min_median_max": [min(ratios), float(np.median(ratios)), max(ratios)],
                     "vs_tokens_cached_median": float(np.median(versus))})  # fmt: skip
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\n{args.repeats} interleaved rounds of {args.seconds:g} s, {args.threads} thread(s), load {load}"
    )
    first = f"chunk {base[0]} {base[1]}" + (" with cache" if base[2] else "")
    print(
        f"| chunk | head | KV cache | forward passes per chunk | actions/s (median) | vs {first} "
        "(min / median / max) | vs tokens with cache, same chunk (median) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        low, mid, high = r["ratio_min_median_max"]
        cache = {"l1": "-"}.get(r["head"], "yes" if r["kv_cache"] else "no")
        print(
            f"| {r['chunk']} | {r['head']} | {cache} | {r['forward_passes_per_chunk']} | "
            f"{r['actions_per_second']:.1f} | {low:.2f} / {mid:.2f} / {high:.2f}x | "
            f"{r['vs_tokens_cached_median']:.2f}x |"
        )
    if args.json:
        from fmmm.utils.io import atomic_write_json

        atomic_write_json(
            args.json, {"machine": platform.processor(), "threads": args.threads, "rows": rows}
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
