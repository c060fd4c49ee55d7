"""AdamW with a weight-decay split, and the warm-up then cosine-decay learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class OptimConfig:
    """AdamW hyper-parameters, schedule and gradient clipping."""

    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping

    def __post_init__(self) -> None:
        for name in ("lr", "min_lr_ratio", "weight_decay", "eps", "grad_clip", *("betas",)):
            values = getattr(self, name)
            for value in values if isinstance(values, list) else [values]:
                if not math.isfinite(value):
                    raise ValueError(f"optim.{name} must be a finite number, got {values}")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.eps <= 0:
            raise ValueError(f"optim.eps must be > 0, got {self.eps}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0:
            raise ValueError(f"optim.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.grad_clip < 0:
            raise ValueError(f"optim.grad_clip must be >= 0, got {self.grad_clip}")


def parameter_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters: matrices decay; biases, norms, scalars and opted-out names don't.

    A module may list parameter names to exempt in `no_weight_decay()` (timm's convention).
    """
    exempt: set[str] = set()
    for prefix, sub in module.named_modules():
        hook = getattr(sub, "no_weight_decay", None)
        if callable(hook):
            exempt |= {f"{prefix}.{name}" if prefix else name for name in hook()}
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 and name not in exempt else no_decay).append(param)
    if not decay and not no_decay:
        raise ValueError("the module has no trainable parameters")
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `parameter_groups(module)`."""
    return torch.optim.AdamW(
        parameter_groups(module, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.betas[0], cfg.betas[1]),
        eps=cfg.eps,
    )


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate at `step`: linear warm-up, then cosine to min_lr_ratio."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up then cosine decay, stepped once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio),
    )
