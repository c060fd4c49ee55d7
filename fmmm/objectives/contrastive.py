"""Contrastive objectives between pooled embeddings of two modalities: CLIP InfoNCE and SigLIP.

Negatives come from the global batch: embeddings are gathered across processes *with* gradients
(`torch.distributed.nn.functional.all_gather`), and every process computes the loss over the
whole global batch. Autograd's reduce-scatter then sums each process's gradient contributions, and
DDP's averaging of parameter gradients turns that into exactly the single-process gradient, so
N processes with batch B/N match one process with batch B.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("infonce", "siglip")


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` (B_r, ...) from every process in rank order, keeping gradients to each part.

    Processes may hold different numbers of rows (a mixture batch splits unevenly), even none.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    world = dist.get_world_size()
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    counts = [int(size.item()) for size in sizes]
    longest = max(counts)
    padded = (
        torch.cat([x, x.new_zeros(longest - x.shape[0], *x.shape[1:])])
        if longest > x.shape[0]
        else x
    )
    with warnings.catch_warnings():
        # deprecated in torch 2.10+ in favour of a private module; still correct with gradients
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(padded.contiguous())
    return torch.cat([part[:count] for part, count in zip(parts, counts)], dim=0)


class ContrastiveLoss(nn.Module):
    """Loss between matched rows of two L2-normalised embedding batches (B, E).

    `infonce`: symmetric cross-entropy over cosine logits scaled by a learnable temperature,
    initialised to 1/0.07 and clamped to at most 100 as in CLIP. `siglip`: independent sigmoid
    losses on every pair with a learnable scale (init 10) and bias (init -10) as in SigLIP.
    """

    def __init__(
        self,
        kind: str = "infonce",
        init_temperature: float | None = None,
        max_logit_scale: float = 100.0,
        init_bias: float = -10.0,
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"contrastive kind must be one of {KINDS}, got {kind!r}")
        if init_temperature is None:
            init_temperature = 0.07 if kind == "infonce" else 0.1
        if init_temperature <= 0 or 1 / init_temperature > max_logit_scale:
            raise ValueError(
                f"init_temperature must be > 0 and 1/init_temperature <= max_logit_scale, "
                f"got {init_temperature}"
            )
        self.kind = kind
        self.max_log_scale = math.log(max_logit_scale)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / init_temperature)))
        self.logit_bias = nn.Parameter(torch.tensor(init_bias)) if kind == "siglip" else None

    def no_weight_decay(self) -> set[str]:
        return {"logit_scale", "logit_bias"}

    def forward(self, emb_a: torch.Tensor, emb_b: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """`emb_a`, `emb_b`: (B, E) this process's rows (B may be 0); returns loss, scale and
        retrieval accuracy, or None when the global batch has fewer than two pairs.

        In training mode rows are gathered from every process; in eval mode the batch is local.
        """
        if emb_a.ndim != 2 or emb_a.shape != emb_b.shape:
            raise ValueError(
                f"embeddings must both be (B, E), got {tuple(emb_a.shape)} and {tuple(emb_b.shape)}"
            )
        if not (torch.isfinite(emb_a).all() and torch.isfinite(emb_b).all()):
            raise ValueError("contrastive embeddings contain NaN or inf")
        all_a, all_b = emb_a.float(), emb_b.float()
        if self.training:
            all_a, all_b = gather_with_grad(all_a), gather_with_grad(all_b)  # (N, E), global batch
        if all_a.shape[0] < 2:
            return None
        scale = self.logit_scale.clamp(0, self.max_log_scale).exp()
        logits = scale * all_a @ all_b.T  # (N, N)
        n = logits.shape[0]
        labels = torch.arange(n, device=logits.device)
        if self.kind == "infonce":
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        else:
            logits = logits + self.logit_bias
            signs = 2 * torch.eye(n, device=logits.device) - 1  # +1 matched, -1 other pairs
            loss = -F.logsigmoid(signs * logits).sum() / n
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return {"loss": loss, "logit_scale": scale.detach(), "accuracy": accuracy.detach()}
