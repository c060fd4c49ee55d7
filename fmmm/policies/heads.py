"""Continuous action heads on the shared backbone: parallel L1 regression and flow matching.

Both read the same sequence as the `tokens` head (BOS, instruction, images, state,
`<|action|>`) followed by `chunk` action positions that attend to the whole prefix and to each
other (bidirectionally), and predict the whole chunk in one forward pass:

- `l1` (OpenVLA-OFT): each action position holds a learned query embedding; a linear read-out of
  its final hidden state is the normalized action, trained with an L1 loss.
- `flow` (pi0): each action position holds the embedding of a noisy action x_t = t * noise +
  (1 - t) * action plus the embedding of t; the read-out is the velocity noise - action, trained
  with a mean-squared error (conditional flow matching). Inference integrates from pure noise at
  t = 1 to t = 0 in `steps` Euler steps, one forward pass each.

Actions are normalized per dimension to [-1, 1] by the 1st/99th percentiles of the
demonstrations (the statistics the action tokenizer keeps).
"""

from __future__ import annotations

import math

import torch
from torch import nn

HEADS = ("tokens", "l1", "flow")


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 100.0) -> torch.Tensor:
    """Sinusoidal features (..., dim) of flow times t in [0, 1] (as pi0's time embedding)."""
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    angles = t.float()[..., None] * frequencies * 2 * math.pi
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ContinuousActionHead(nn.Module):
    """Inputs added at the `chunk` action positions, and the read-out of their hidden states."""

    def __init__(self, kind: str, dim: int, action_dim: int, chunk: int):
        super().__init__()
        if kind not in ("l1", "flow"):
            raise ValueError(f"a continuous action head is 'l1' or 'flow', got {kind!r}")
        self.kind, self.dim, self.action_dim, self.chunk = kind, dim, action_dim, chunk
        self.queries = nn.Parameter(torch.randn(chunk, dim) * 0.02)
        if kind == "flow":
            self.action_in = nn.Linear(action_dim, dim)
            self.time_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, action_dim))

    def inputs(
        self, batch_size: int, noisy: torch.Tensor | None = None, t: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, chunk, dim) to add to the action positions' embeddings."""
        x = self.queries[None].expand(batch_size, -1, -1)
        if self.kind == "flow":
            if noisy is None or t is None:
                raise ValueError("the flow head needs the noisy actions and their time")
            time = self.time_mlp(timestep_features(t, self.dim).to(x.dtype))  # (B, dim)
            x = x + self.action_in(noisy.to(x.dtype)) + time[:, None]
        return x

    def flow_inputs(self, times: torch.Tensor) -> torch.Tensor:
        """(S, chunk, dim): the part of `inputs` that the noisy actions do not change, at each of
        S flow times shared by every row (the Euler steps of inference); add
        `action_in(noisy)` at each step."""
        time = self.time_mlp(timestep_features(times, self.dim).to(self.queries.dtype))  # (S, dim)
        return self.queries + time[:, None]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, chunk, dim) -> (B, chunk, action_dim): actions (l1) or velocities."""
        return self.out(hidden).float()


def sample_flow_time(batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training times t in (0.001, 1], Beta(1.5, 1)-distributed: more weight near the noise end,
    where the coarse placement of the chunk is decided (pi0)."""
    u = torch.rand(batch_size, generator=generator)
    return u.pow(1 / 1.5) * 0.999 + 0.001  # inverse CDF of Beta(1.5, 1) is u^(1/1.5)
