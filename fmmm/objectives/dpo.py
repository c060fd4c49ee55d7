"""Direct Preference Optimization (Rafailov et al. 2023) and the sequence log-probabilities it needs.

    L = -log sigmoid(beta * [(log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))])

`y_w` is the preferred (chosen) response, `y_l` the rejected one, `ref` the frozen reference model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum over positions of log p(target) for each sequence; positions with target -100 are skipped.

    logits: (B, T, V) float, already aligned with `targets` (B, T) long (logits at i predict targets[i]).
    Returns (B,) float.
    """
    if logits.dim() != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"logits (B, T, V) and targets (B, T) must agree, got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if targets.dtype != torch.long:
        raise ValueError(f"targets must be long, got {targets.dtype}")
    scored = targets != IGNORE_INDEX
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    picked = log_probs.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (picked * scored).sum(dim=-1)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> dict[str, torch.Tensor]:
    """DPO loss from per-sequence log-probabilities (each (B,)); returns loss and reward scalars."""
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    shapes = {
        tuple(t.shape)
        for t in (policy_chosen, policy_rejected, reference_chosen, reference_rejected)
    }
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(
            f"DPO log-probabilities must all have the same shape (B,), got {sorted(shapes)}"
        )
    chosen_reward = beta * (policy_chosen - reference_chosen.detach())  # (B,)
    rejected_reward = beta * (policy_rejected - reference_rejected.detach())
    margin = chosen_reward - rejected_reward
    return {
        "loss": -F.logsigmoid(margin).mean(),
        "chosen_reward": chosen_reward.detach().mean(),
        "rejected_reward": rejected_reward.detach().mean(),
        "reward_margin": margin.detach().mean(),
        "reward_accuracy": (margin.detach() > 0).float().mean(),
    }


class DPOLoss(nn.Module):
    """DPO objective on token logits of the policy and the frozen reference model."""

    def __init__(self, beta: float = 0.1):
        super().__init__()
        if beta <= 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        self.beta = beta

    def forward(
        self,
        policy_logits: torch.Tensor,
        reference_logits: torch.Tensor,
        targets: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Logits (2B, T, V) and targets (2B, T): rows [0, B) are chosen, rows [B, 2B) rejected."""
        if targets.shape[0] % 2:
            raise ValueError(
                f"DPO batch must stack chosen then rejected rows, got {targets.shape[0]} rows"
            )
        half = targets.shape[0] // 2
        policy = sequence_logprobs(policy_logits, targets)
        with torch.no_grad():
            reference = sequence_logprobs(reference_logits, targets)
        return dpo_loss(policy[:half], policy[half:], reference[:half], reference[half:], self.beta)
