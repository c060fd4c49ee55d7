"""A tiny regression run through the real Trainer, for trainer tests (importable and runnable).

python tests/train/_train_toy.py RUN_DIR [key=value ...]
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fmmm.config import load_config
from fmmm.train.trainer import Trainer, TrainerConfig


@dataclass
class ToyConfig:
    train: TrainerConfig = field(default_factory=TrainerConfig)
    poison: list[int] = field(default_factory=list)  # data steps whose inputs explode
    sleep: float = 0.0  # seconds per batch, so a test can kill the run mid-way
    dropout: float = 0.1


class ToyModule(nn.Module):
    def __init__(self, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Dropout(dropout), nn.Linear(32, 1))

    def forward(self, batch: dict) -> dict:
        loss = (self.net(batch["x"]).squeeze(-1) - batch["y"]).square().mean()
        return {"loss": loss, "mse": loss.detach()}


class ToyStream:
    def __init__(self, batch_size: int, poison: list[int], sleep: float = 0.0):
        self.batch_size, self.poison, self.sleep = batch_size, set(poison), sleep
        self.weight = np.random.default_rng(0).normal(size=8)

    def sample(self, index: int) -> tuple[np.ndarray, float]:
        x = np.random.default_rng([1, index]).normal(size=8)
        if index // self.batch_size in self.poison:
            x = x * 1e4
        return x, float(x @ self.weight)

    def batch(self, start: int, count: int) -> dict:
        time.sleep(self.sleep)
        xs, ys = zip(*(self.sample(i) for i in range(start, start + count)))
        return {
            "x": torch.tensor(np.stack(xs), dtype=torch.float32),
            "y": torch.tensor(ys, dtype=torch.float32),
        }


def run(run_dir: str, overrides: list[str]):
    cfg = load_config(ToyConfig, None, overrides)
    torch.manual_seed(cfg.train.seed)
    module = ToyModule(cfg.dropout)
    stream = ToyStream(cfg.train.batch_size, cfg.poison, cfg.sleep)
    return Trainer(cfg.train, module, stream, run_dir).train()


if __name__ == "__main__":
    torch.set_num_threads(1)
    result = run(sys.argv[1], sys.argv[2:])
    print(f"status={result.status} step={result.step}")
