"""Next-token prediction over interleaved sequences, averaged over every target token of the
global batch, with the loss also reported per target modality (text, action)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def _global_count(count: torch.Tensor) -> tuple[torch.Tensor, int]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return count, 1
    total = count.clone()
    dist.all_reduce(total)
    return total, dist.get_world_size()


class NextTokenLoss(nn.Module):
    """Cross-entropy of logits (B, L, V) against already-shifted targets (B, L) (-100: no loss).

    Across processes the loss is sum / (global target count) x world size, so DDP's gradient
    averaging yields the mean over all target tokens of the global batch, however they are split.
    (In eval mode the batch is local.) `action_offset` splits the report into text and action
    tokens.
    """

    def __init__(self, action_offset: int | None = None):
        super().__init__()
        self.action_offset = action_offset

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if logits.ndim != 3 or targets.shape != logits.shape[:2]:
            raise ValueError(
                f"logits must be (B, L, V) and targets (B, L), got {tuple(logits.shape)} and "
                f"{tuple(targets.shape)}"
            )
        valid = targets != IGNORE_INDEX
        per_token = F.cross_entropy(logits[valid].float(), targets[valid], reduction="none")
        count, world = valid.sum().to(per_token.dtype), 1
        if self.training:
            count, world = _global_count(count)
        if count.item() == 0:
            raise ValueError("the batch has no target tokens for the next-token loss")
        out = {"loss": per_token.sum() * world / count}
        if self.action_offset is not None:
            is_action = targets[valid] >= self.action_offset
            for name, mask in (("text_loss", ~is_action), ("action_loss", is_action)):
                if mask.any():
                    out[name] = per_token[mask].detach().mean()
        return out
