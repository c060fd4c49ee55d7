"""A tiny Transformer LM with a contrastive term through the real Trainer, for FSDP/compile tests.

python tests/train/_train_lm.py RUN_DIR [key=value ...]
torchrun --nproc_per_node 2 tests/train/_train_lm.py RUN_DIR train.distributed=fsdp ...

At the end the main process saves `unwrap_model(trainer.module).model` (the consolidated module
under FSDP) to RUN_DIR/model with `save_pretrained`, as the pretraining recipe does.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fmmm.config import load_config
from fmmm.models.backbone import TransformerConfig
from fmmm.models.multimodal import MultimodalConfig, MultimodalModel
from fmmm.objectives.contrastive import ContrastiveLoss
from fmmm.train.parallel import bucket_length, length_buckets
from fmmm.train.trainer import Trainer, TrainerConfig

VOCAB, MAX_LEN = 64, 48


@dataclass
class LMConfig:
    train: TrainerConfig = field(default_factory=TrainerConfig)
    sleep: float = 0.0  # seconds per batch, so a test can kill the run mid-way
    variable_length: bool = False  # sequence lengths vary per step (bucketed)


def tiny_config() -> MultimodalConfig:
    backbone = TransformerConfig(dim=32, n_layers=2, n_heads=4, ffn_hidden=64, max_seq_len=64)
    return MultimodalConfig(
        backbone=backbone, text_vocab_size=VOCAB, action_bins=8, state_dim=4, embed_dim=16
    )


class TinyLM(nn.Module):
    """Next-token loss on text ids plus a contrastive loss between mean-pooled halves."""

    def __init__(self):
        super().__init__()
        self.model = MultimodalModel(tiny_config())
        self.contrastive = ContrastiveLoss("infonce")

    def forward(self, batch: dict) -> dict:
        ids = batch["ids"]  # (B, T)
        hidden, _ = self.model.backbone(self.model.embed(ids))  # (B, T, D)
        logits = self.model.lm_head(hidden)  # (B, T, V)
        lm = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
        half = ids.shape[1] // 2
        first = F.normalize(hidden[:, :half].mean(1).float(), dim=-1)  # (B, D)
        second = F.normalize(hidden[:, half:].mean(1).float(), dim=-1)
        contrastive = self.contrastive(first, second)["loss"]  # negatives from every process
        return {"loss": lm + contrastive, "lm": lm.detach(), "contrastive": contrastive.detach()}


class TokenStream:
    def __init__(
        self, batch_size: int, variable_length: bool, buckets: tuple[int, ...], sleep: float
    ):
        self.batch_size, self.variable, self.buckets, self.sleep = (
            batch_size,
            variable_length,
            buckets,
            sleep,
        )

    def batch(self, start: int, count: int) -> dict:
        time.sleep(self.sleep)
        length = MAX_LEN
        if self.variable:
            step = start // self.batch_size
            length = bucket_length(8 + (step * 13) % (MAX_LEN - 8), self.buckets)
        rows = [
            np.random.default_rng([2, i]).integers(0, VOCAB, length)
            for i in range(start, start + count)
        ]
        return {"ids": torch.tensor(np.stack(rows))}


def run(run_dir: str, overrides: list[str]):
    cfg = load_config(LMConfig, None, overrides)
    torch.manual_seed(cfg.train.seed)
    module = TinyLM()
    buckets = length_buckets(MAX_LEN, cfg.train.compile_buckets)  # compiled or not: same data
    stream = TokenStream(cfg.train.batch_size, cfg.variable_length, buckets, cfg.sleep)
    trainer = Trainer(cfg.train, module, stream, run_dir)
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        trainer.accelerator.unwrap_model(trainer.module).model.save_pretrained(f"{run_dir}/model")
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = run(sys.argv[1], sys.argv[2:])
    print(f"status={result.status} step={result.step}")
