"""Pretraining benchmark: run `configs/pretrain/tiny.yaml` and report what it reached.

    python benchmarks/pretrain.py --output docs/benchmarks/pretrain.md
    python benchmarks/pretrain.py --run-dir runs/pretrain_tiny --wall-seconds 512  # report a finished run

Reports wall time, held-out next-token loss before and after, retrieval recall@1 against chance,
tokens/s and estimated MFU, and (with --peer-steps) fp32 against bf16 throughput on the same model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/pretrain/tiny.yaml"


def train(run_dir: Path, *overrides: str) -> float:
    """Run `python -m fmmm.train` on the tiny config; return its wall time in seconds."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "fmmm.train", CONFIG, f"out_dir={run_dir}", *overrides]
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - started


def read_run(run_dir: Path) -> dict:
    """Summary, first and last evaluation of a finished run."""
    summary = json.loads((run_dir / "summary.json").read_text())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    skips = [e for e in events if e["event"] in ("skip", "rollback")]
    return {"summary": summary, "first": evals[0], "last": evals[-1], "spike_events": len(skips)}


def peer_throughput(steps: int, out_dir: Path) -> dict[str, float]:
    """tokens/s of short fp32 and bf16 runs of the same model and data."""
    figures = {}
    for precision in ("fp32", "bf16"):
        run_dir = out_dir / f"peer_{precision}"
        train(
            run_dir,
            f"train.steps={steps}",
            f"train.precision={precision}",
            "train.eval_at_start=false",
            "train.eval_every=0",
            "train.checkpoint.every=0",
            "train.checkpoint.resume=auto",
        )
        figures[precision] = json.loads((run_dir / "summary.json").read_text())["tokens_per_second"]
    return figures


def markdown(run: dict, wall: float, peers: dict[str, float], command: str) -> str:
    summary, first, last = run["summary"], run["first"], run["last"]
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Pretraining benchmark (`configs/pretrain/tiny.yaml`)",
        "",
        f"- Command: `{command}`",
        f"- Machine: 2-core CPU, no GPU ({platform.processor() or platform.machine()}), "
        f"torch threads = {os.environ.get('OMP_NUM_THREADS', 'default')}; "
        "other jobs shared the machine, so times are upper bounds",
        f"- Date: {date}",
        f"- Model: {summary['parameters'] / 1e6:.2f} M parameters; "
        f"{summary['step']} steps, status {summary['status']}",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| wall time (fresh corpus generation + training + 5 evaluations) | {wall / 60:.1f} min |",
        f"| Trainer.train() time (steps, checkpoints, evaluations) | {summary['wall_seconds'] / 60:.1f} min |",
        f"| held-out next-token loss, before -> after | {first['eval/heldout_ar_loss']:.3f} -> "
        f"{last['eval/heldout_ar_loss']:.3f} |",
    ]
    for modality in ("image", "video", "audio"):
        key = f"eval/{modality}_to_text_recall@1"
        if key in last:
            chance = last[f"eval/{modality}_to_text_chance"]
            lines.append(
                f"| held-out {modality} -> text recall@1 (chance) | {first[key]:.3f} -> "
                f"**{last[key]:.3f}** ({chance:.3f}, {last[key] / chance:.0f}x chance) |"
            )
    lines += [
        f"| training throughput | {summary['tokens_per_second']:.0f} tokens/s |",
        f"| estimated MFU (peak 190 GFLOP/s fp32) | {100 * summary['mfu']:.2f} % |",
        f"| skipped steps / rollbacks (spike guard) | {summary['skipped_steps']} / "
        f"{summary['rollbacks']} |",
    ]
    lines += [
        "",
        "MFU = tokens/s x training FLOPs per token (`fmmm.scaling`, 6N + attention at the context "
        "length) / peak FLOP/s (`train.peak_flops`). Tokens count every non-padding position the "
        "backbone processes (next-token sequences and the contrastive media and caption passes).",
    ]
    if peers:
        ratio = peers["bf16"] / peers["fp32"]
        lines += [
            "",
            "Peer comparison, same model and data, short runs in this benchmark:",
            "",
            "| precision | tokens/s | vs fp32 |",
            "| --- | --- | --- |",
            f"| fp32 | {peers['fp32']:.0f} | 1.00x |",
            f"| bf16 (Accelerate autocast) | {peers['bf16']:.0f} | {ratio:.2f}x |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="report this finished run")
    parser.add_argument("--wall-seconds", type=float, default=None, help="its measured wall time")
    parser.add_argument("--peer-steps", type=int, default=0, help="fp32 vs bf16 steps (0: skip)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs/benchmarks/pretrain.md")
    args = parser.parse_args()
    out_dir = ROOT / "runs" / "bench_pretrain"
    if args.run_dir is None:
        shutil.rmtree(out_dir, ignore_errors=True)
        os.environ["FMMM_CACHE"] = str(out_dir / "cache")  # time corpus generation too
        run_dir = out_dir / "tiny"
        wall = train(run_dir)
    else:
        run_dir, wall = args.run_dir, args.wall_seconds
        if wall is None:
            parser.error("--run-dir needs --wall-seconds")
    peers = peer_throughput(args.peer_steps, out_dir) if args.peer_steps else {}
    report = markdown(read_run(run_dir), wall, peers, f"python -m fmmm.train {CONFIG}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
