"""GPU training throughput of a model config through the real Trainer: tokens/s, MFU, peak memory.

    torchrun --nproc_per_node 1 benchmarks/gpu.py --config configs/model/1b.yaml \\
        --precision bf16 --distributed fsdp --compile --steps 30 --batch-size 8 --seq-len 2048

Next-token training on random token ids (plain causal attention over full rows: the packed-text
case), so the figure is the model and trainer's, not the data pipeline's. Tokens/s and MFU are the
median over the steps after `--warmup` (compilation happens in the first ones); MFU divides by the
device's published bf16 dense peak (`fmmm.scaling.device_peak_flops`). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmmm.config import load_config
from fmmm.models.multimodal import MultimodalConfig, MultimodalModel
from fmmm.scaling import device_peak_flops, meta_parameter_count, shape_of
from fmmm.train.metrics import read_jsonl
from fmmm.train.trainer import Trainer, TrainerConfig


class NextToken(nn.Module):
    def __init__(self, model: MultimodalModel):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> dict:
        ids = batch["ids"]  # (B, T)
        hidden, _ = self.model.backbone(self.model.embed(ids))  # (B, T, D)
        logits = self.model.lm_head(hidden)  # (B, T, V)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        return {"loss": loss}


class RandomTokens:
    def __init__(self, vocab: int, seq_len: int):
        self.vocab, self.seq_len = vocab, seq_len

    def batch(self, start: int, count: int) -> dict:
        rng = np.random.default_rng(start)
        return {"ids": torch.from_numpy(rng.integers(0, self.vocab, (count, self.seq_len)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/model/1b.yaml")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8, help="global sequences per step")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--distributed", default="fsdp")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--out-dir", default="")
    args = parser.parse_args()

    config = load_config(MultimodalConfig, args.config)
    torch.manual_seed(0)
    module = NextToken(MultimodalModel(config))
    cfg = load_config(
        TrainerConfig,
        None,
        [
            f"steps={args.steps}",
            f"batch_size={args.batch_size}",
            f"precision={args.precision}",
            f"distributed={args.distributed}",
            f"compile={str(args.compile).lower()}",
            f"fsdp.activation_checkpointing={str(args.activation_checkpointing).lower()}",
            "checkpoint.every=0",
            "checkpoint.keep=1",
            "logging.every=5",
            "logging.tensorboard=false",
            "optim.warmup_steps=10",
        ],
    )
    shape = shape_of(config.backbone, config.vocab_size, config.tie_embeddings, args.seq_len)
    out_dir = args.out_dir or tempfile.mkdtemp(prefix="fmmm_gpu_")
    trainer = Trainer(
        cfg,
        module,
        RandomTokens(config.text_vocab_size, args.seq_len),
        out_dir,
        count_tokens=lambda batch: batch["ids"].numel(),
        flops_per_token=shape.flops_per_token(),
    )
    started = time.perf_counter()
    result = trainer.train()
    acc = trainer.accelerator
    if not acc.is_main_process:
        return
    rows = read_jsonl(f"{out_dir}/metrics.jsonl")[args.warmup :]
    tokens_per_second = statistics.median(row["tokens_per_second"] for row in rows)
    peak = device_peak_flops(acc.device, args.precision) * acc.num_processes
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    memory = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "device": device,
        "processes": acc.num_processes,
        "config": args.config,
        "parameters": meta_parameter_count(lambda: MultimodalModel(config)),
        "precision": args.precision,
        "distributed": args.distributed,
        "compile": args.compile,
        "activation_checkpointing": args.activation_checkpointing,
        "batch": f"{args.batch_size} x {args.seq_len}",
        "tokens_per_second": round(tokens_per_second),
        "mfu": round(tokens_per_second * shape.flops_per_token() / peak, 4),
        "peak_flops": peak,
        "peak_memory_gib": round(memory / 2**30, 2),
        "final_loss": round(result.metrics["loss"], 4),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
