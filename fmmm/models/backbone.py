"""Decoder-only Transformer backbone: pre-norm, RMSNorm, multi-axis rotary, GQA, SwiGLU or MoE.

The backbone maps token embeddings `(B, L, D)` to hidden states `(B, L, D)`; embedding tables and
heads live in `fmmm.models.multimodal`. Positions are `(B, L, 3)` rotary axes (see
`docs/architecture.md`); the model converts them to multi-axis rotary angles so that 1-D tokens
`(t, 0, 0)` get exactly the standard 1-D RoPE of Llama. Model code is single-device.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

LIMITS = {  # largest accepted value of each size field of `TransformerConfig`
    "dim": 2**16,
    "n_layers": 1024,
    "n_heads": 2**12,
    "ffn_hidden": 2**20,
    "ffn_multiple_of": 2**16,
    "max_seq_len": 2**22,
}


@dataclass
class TransformerConfig:
    """Shape and options of the backbone; validated on construction."""

    dim: int = 256
    n_layers: int = 4
    n_heads: int = 8
    n_kv_heads: int | None = None  # None: same as n_heads (multi-head); fewer: grouped-query
    ffn_hidden: int | None = None  # None: Llama rule, 8/3 * dim rounded up to ffn_multiple_of
    ffn_multiple_of: int = 256
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 2048
    qk_norm: bool = False  # RMSNorm on queries and keys per head (Chameleon's stability fix)
    n_experts: int = 0  # 0: dense SwiGLU MLP; > 1: mixture of experts in every layer
    experts_top_k: int = 2
    capacity_factor: float = 0.0  # 0: no token dropping; > 0: per-expert capacity factor
    moe_aux_weight: float = 0.01  # weight of the load-balancing loss added to aux_loss
    checkpoint_activations: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        # Bounds far past any model trained today: larger values are typos (n_layers=100000000),
        # refused here before a parameter count or an allocation tries to honour them.
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if value is not None and not 0 < value <= limit:
                raise ValueError(f"{name} must be in [1, {limit}], got {value}")
        for name in ("norm_eps", "rope_theta", "init_std", "capacity_factor", "moe_aux_weight"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.moe_aux_weight < 0:
            raise ValueError(f"moe_aux_weight must be >= 0, got {self.moe_aux_weight}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head dim dim/n_heads ({self.head_dim}) must be even for rotary")
        kv = self.kv_heads
        if kv <= 0 or self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({kv})")
        if self.n_experts < 0 or self.n_experts == 1 or self.n_experts > 2**12:
            raise ValueError(f"n_experts must be 0 (dense) or in [2, 4096], got {self.n_experts}")
        if self.n_experts and not 1 <= self.experts_top_k <= self.n_experts:
            raise ValueError(
                f"experts_top_k must be in [1, n_experts={self.n_experts}], got {self.experts_top_k}"
            )
        if self.capacity_factor < 0:
            raise ValueError(f"capacity_factor must be >= 0, got {self.capacity_factor}")
        if self.norm_eps <= 0 or self.rope_theta <= 0 or self.init_std <= 0:
            raise ValueError("norm_eps, rope_theta and init_std must be positive")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def hidden_dim(self) -> int:
        """Width of the SwiGLU MLP (per expert for MoE)."""
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        hidden = int(2 * 4 * self.dim / 3)
        return self.ffn_multiple_of * math.ceil(hidden / self.ffn_multiple_of)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict] = {
    "debug": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=256),
    "small": dict(dim=256, n_layers=4, n_heads=8, max_seq_len=1024),
    "base": dict(dim=768, n_layers=12, n_heads=12, max_seq_len=2048),
}


def preset(name: str, **overrides) -> TransformerConfig:
    """A named backbone shape ("debug" is the tiny size the tests use)."""
    if name not in PRESETS:
        raise ValueError(f"unknown backbone preset {name!r}; known: {', '.join(PRESETS)}")
    return TransformerConfig(**{**PRESETS[name], **overrides})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """Multi-axis rotary angles: frequency pair i rotates with position axis `axis_of_pair[i]`.

    Axes are interleaved (pairs 0,2,4.. on axis 0, 1,5,9.. on axis 1, 3,7,11.. on axis 2) so each axis
    spans the full frequency range. Positions are mapped to (p0, p0 + p1, p0 + p2): a 1-D token
    (t, 0, 0) becomes (t, t, t), i.e. plain 1-D RoPE, and a patch (s, row, col) keeps its segment
    offset s in every axis so text-to-patch distances stay relative.
    """

    def __init__(self, head_dim: int, theta: float, max_seq_len: int):
        super().__init__()
        pairs = head_dim // 2
        inv_freq = 1.0 / theta ** (torch.arange(pairs, dtype=torch.float32) * 2 / head_dim)
        axis = torch.tensor([0 if i % 2 == 0 else (1 if i % 4 == 1 else 2) for i in range(pairs)])
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("axis_of_pair", axis, persistent=False)
        self.max_seq_len = max_seq_len
        self._cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def _causal_1d(self, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cache = self._cache
        if cache is None or cache[0].shape[-2] < length or cache[0].device != device:
            t = torch.arange(max(length, self.max_seq_len), device=device, dtype=torch.float32)
            angles = torch.outer(t, self.inv_freq.to(device))  # (L, P)
            angles = torch.cat([angles, angles], dim=-1)  # (L, hd)
            self._cache = cache = (angles.cos(), angles.sin())
        return cache[0][:length], cache[1][:length]

    def forward(
        self, positions: torch.Tensor | None, length: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (B or 1, 1, L, hd) for `positions` (B, L, 3), or 0..L-1 if None."""
        if positions is None:
            cos, sin = self._causal_1d(length, device)
            return cos[None, None], sin[None, None]
        pos = positions.to(torch.float32)  # (B, L, 3)
        pos = torch.stack([pos[..., 0], pos[..., 0] + pos[..., 1], pos[..., 0] + pos[..., 2]], -1)
        per_pair = pos[..., self.axis_of_pair]  # (B, L, P)
        angles = per_pair * self.inv_freq
        angles = torch.cat([angles, angles], dim=-1)[:, None]  # (B, 1, L, hd)
        return angles.cos(), angles.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, L, hd) queries or keys by angles whose cos/sin are (B|1, 1, L, hd)."""
    return x * cos.to(x.dtype) + _rotate_half(x) * sin.to(x.dtype)


class KVCache:
    """Preallocated per-layer keys and values for incremental decoding.

    `length` is the number of cached positions; the backbone appends to it on every call.
    """

    def __init__(
        self,
        config: TransformerConfig,
        batch_size: int,
        max_len: int,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        shape = (batch_size, config.kv_heads, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)]
        self.values = [
            torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)
        ]
        self.max_len = max_len
        self.length = 0

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, KV, T, hd) keys/values after the cached ones; return all keys/values so far."""
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} positions > max_len {self.max_len}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, config: TransformerConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.kv_heads, self.head_dim = (
            config.n_heads,
            config.kv_heads,
            config.head_dim,
        )
        self.qkv = nn.Linear(
            config.dim, (self.n_heads + 2 * self.kv_heads) * self.head_dim, bias=False
        )
        self.out = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,  # (B, 1, T, S) bool, or None for plain causal
        cache: KVCache | None,
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        q, k, v = self._project(x, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)  # (B, KV, S, hd)
        gqa = self.kv_heads != self.n_heads
        if mask is None:
            # Plain causal self-attention, or one query over the whole cache.
            causal = length > 1
            if causal and cache is not None and k.shape[2] != length:
                mask = _causal_with_offset(length, k.shape[2], x.device)[None, None]
                causal = False
            y = _attend(q, k, v, mask, causal, gqa)
        else:
            y = _attend(q, k, v, mask, False, gqa)
        y = y.transpose(1, 2).reshape(batch, length, self.n_heads * self.head_dim)
        return self.out(y)

    def _project(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotated queries (B, H, T, hd), rotated keys and values (B, KV, T, hd) of x (B, T, D)."""
        batch, length, _ = x.shape
        qkv = self.qkv(x).view(batch, length, self.n_heads + 2 * self.kv_heads, self.head_dim)
        q, k, v = qkv.split([self.n_heads, self.kv_heads, self.kv_heads], dim=2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def store(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache) -> None:
        """Only the cache update of `forward`: keys and values of x (B, T, D) after the cached ones."""
        _, k, v = self._project(x, cos, sin)
        cache.update(self.layer, k, v)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    gqa: bool,
) -> torch.Tensor:
    """Scaled dot-product attention; on CPU under bf16 autocast it runs in fp32.

    The CPU flash-attention backward is about 4x slower in bf16 than in fp32 (measured on this
    project's AVX-512 BF16 machine), while the projections around it are 4x faster in bf16: bf16
    training on CPU only pays off with attention kept in fp32.
    """
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=mask, is_causal=causal, enable_gqa=gqa
            )
        return y.to(dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)


def _causal_with_offset(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """(T, S) bool: the last `queries` of `keys` positions attend causally."""
    q_idx = torch.arange(keys - queries, keys, device=device)[:, None]
    return torch.arange(keys, device=device)[None, :] <= q_idx


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class MoE(nn.Module):
    """Top-k routed SwiGLU experts with the Switch load-balancing loss and optional capacity.

    With `capacity_factor` > 0 each expert takes at most ceil(cf * N * k / E) token slots (first come,
    first served); overflowing assignments are dropped and the token keeps its residual path.
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        dim, hidden, experts = config.dim, config.hidden_dim, config.n_experts
        self.n_experts, self.top_k = experts, config.experts_top_k
        self.capacity_factor = config.capacity_factor
        self.router = nn.Linear(dim, experts, bias=False)
        self.gate_up = nn.Parameter(torch.empty(experts, dim, 2 * hidden))
        self.down = nn.Parameter(torch.empty(experts, hidden, dim))
        self.last_stats: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])  # (N, D)
        n = tokens.shape[0]
        probs = self.router(tokens).float().softmax(dim=-1)  # (N, E)
        weights, experts = probs.topk(self.top_k, dim=-1)  # (N, k)
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)
        flat_expert = experts.reshape(-1)  # (N*k,) token-major assignment order
        keep = torch.ones_like(flat_expert, dtype=torch.bool)
        if self.capacity_factor > 0:
            capacity = math.ceil(self.capacity_factor * n * self.top_k / self.n_experts)
            one_hot = F.one_hot(flat_expert, self.n_experts)  # (N*k, E)
            rank = (one_hot.cumsum(0) * one_hot).sum(
                -1
            ) - 1  # slot of each assignment in its expert
            keep = rank < capacity
        out = torch.zeros_like(tokens)
        flat_token = torch.arange(n, device=x.device).repeat_interleave(self.top_k)
        flat_weight = weights.reshape(-1)
        for e in range(self.n_experts):
            idx = ((flat_expert == e) & keep).nonzero(as_tuple=True)[0]
            if idx.numel() == 0:
                continue
            rows = flat_token[idx]
            gate, up = (tokens[rows] @ self.gate_up[e]).chunk(2, dim=-1)
            y = (F.silu(gate) * up) @ self.down[e]  # (n_e, D)
            out.index_add_(0, rows, y * flat_weight[idx, None])
        # Switch Transformer balance loss: E * sum_e (fraction routed to e) * (mean prob of e).
        fraction = F.one_hot(flat_expert, self.n_experts).float().mean(0)
        aux = self.n_experts * (fraction * probs.mean(0)).sum()
        self.last_stats = {
            "tokens_per_expert": torch.bincount(flat_expert[keep], minlength=self.n_experts),
            "dropped": (~keep).sum(),
        }
        return out.view(shape), aux


class Block(nn.Module):
    def __init__(self, config: TransformerConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config, layer)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = MoE(config) if config.n_experts else SwiGLU(config.dim, config.hidden_dim)

    def forward(self, x, cos, sin, mask, cache) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache)
        if isinstance(self.mlp, MoE):
            y, aux = self.mlp(self.mlp_norm(x))
        else:
            y, aux = self.mlp(self.mlp_norm(x)), x.new_zeros((), dtype=torch.float32)
        return x + y, aux


class Transformer(nn.Module):
    """Stack of pre-norm blocks plus the final RMSNorm: embeddings (B, L, D) -> hidden (B, L, D)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.max_seq_len)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights; residual output projections scaled by 1/sqrt(2 * layers)."""
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.n_layers)
        for block in self.layers:
            nn.init.normal_(block.attn.qkv.weight, std=std)
            nn.init.normal_(block.attn.out.weight, std=out_std)
            mlp = block.mlp
            if isinstance(mlp, MoE):
                nn.init.normal_(mlp.router.weight, std=std)
                nn.init.normal_(mlp.gate_up, std=std)
                nn.init.normal_(mlp.down, std=out_std)
            else:
                nn.init.normal_(mlp.gate_up.weight, std=std)
                nn.init.normal_(mlp.down.weight, std=out_std)

    def forward(
        self,
        x: torch.Tensor,  # (B, T, D)
        positions: torch.Tensor | None = None,  # (B, T, 3) long; None: 0..T-1 (after the cache)
        attention_mask: torch.Tensor | None = None,  # (B, T, S) bool, True = may attend
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return hidden states (B, T, D) and the weighted MoE auxiliary loss (scalar, 0 if dense).

        `attention_mask=None` means plain causal attention (SDPA `is_causal`), over the cached keys
        too when `cache` is given. S is the number of keys: T, or cache.length + T with a cache.
        Each query row is allowed to attend to itself so fully masked padding rows stay finite.
        """
        if x.dim() != 3 or x.shape[-1] != self.config.dim:
            raise ValueError(f"expected embeddings (B, T, {self.config.dim}), got {tuple(x.shape)}")
        batch, length, _ = x.shape
        past = cache.length if cache is not None else 0
        cos, sin, mask = self._angles_and_mask(
            batch, length, past, positions, attention_mask, x.device
        )
        aux = x.new_zeros((), dtype=torch.float32)
        for block in self.layers:
            if self.config.checkpoint_activations and self.training and cache is None:
                x, layer_aux = checkpoint(block, x, cos, sin, mask, None, use_reentrant=False)
            else:
                x, layer_aux = block(x, cos, sin, mask, cache)
            aux = aux + layer_aux
        if cache is not None:
            cache.length = past + length
        return self.norm(x), aux * self.config.moe_aux_weight

    def fill_cache(
        self,
        x: torch.Tensor,  # (B, T, D)
        positions: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        cache: KVCache,
    ) -> None:
        """The cache update of `forward`, without what only the hidden states need: the last
        block stores its keys and values and stops there (a prefix that later positions attend
        to but whose own outputs nobody reads)."""
        batch, length, _ = x.shape
        past = cache.length
        cos, sin, mask = self._angles_and_mask(
            batch, length, past, positions, attention_mask, x.device
        )
        *blocks, last = self.layers
        for block in blocks:
            x, _ = block(x, cos, sin, mask, cache)
        last.attn.store(last.attn_norm(x), cos, sin, cache)
        cache.length = past + length

    def _angles_and_mask(
        self,
        batch: int,
        length: int,
        past: int,
        positions: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Rotary cos, sin (B|1, 1, T, hd) and the (B, 1, T, S) attention mask of `forward`."""
        if positions is None and past:
            positions = torch.arange(past, past + length, device=device)
            positions = F.pad(positions[:, None], (0, 2)).expand(batch, length, 3)
        if positions is not None and positions.shape != (batch, length, 3):
            raise ValueError(
                f"positions must be (B, T, 3) = {(batch, length, 3)}, got {tuple(positions.shape)}"
            )
        cos, sin = self.rotary(positions, length, device)
        if attention_mask is None:
            return cos, sin, None
        keys = past + length
        if attention_mask.shape != (batch, length, keys) or attention_mask.dtype != torch.bool:
            raise ValueError(
                f"attention_mask must be bool (B, T, S) = {(batch, length, keys)}, "
                f"got {attention_mask.dtype} {tuple(attention_mask.shape)}"
            )
        self_key = torch.arange(past, keys, device=device)
        diagonal = torch.zeros(length, keys, dtype=torch.bool, device=device)
        diagonal[torch.arange(length, device=device), self_key] = True
        return cos, sin, (attention_mask | diagonal)[:, None]  # (B, 1, T, S)


class PrefixPasses:
    """Forward passes of the same T positions over a cached prefix, again and again: the Euler
    steps of a flow-matching head, where the prefix (attending only to itself) never changes.

    What every pass shares is prepared once: the positions' rotary angles, the attention mask
    (None when every position sees every key: no padding) and each block's parameters (an
    `nn.Module` attribute lookup costs microseconds). Each pass writes its keys and values to the
    T cache slots after the prefix and leaves `cache.length` at the prefix, so nothing is copied
    or concatenated per pass. At a few positions a module call costs about as much as its math:
    the blocks run as one function (`_prefix_pass`) on (B * T, D) rows, queries and keys rotated
    together and residuals added by the matmuls (`prefix_pass` is the same pass for callers
    that torch.compile it). Hidden states equal `Transformer.forward` over the cache up to float
    rounding (tests/models/test_backbone.py).
    """

    def __init__(
        self,
        backbone: Transformer,
        positions: torch.Tensor,  # (B, T, 3) long
        attention_mask: torch.Tensor | None,  # (B, T, S) bool, S = cache.length + T; None: all
        cache: KVCache,
    ):
        batch, length, _ = positions.shape
        if cache.length + length > cache.max_len:
            raise ValueError(
                f"KV cache overflow: {cache.length + length} positions > max_len {cache.max_len}"
            )
        cos, sin, mask = backbone._angles_and_mask(
            batch, length, cache.length, positions, attention_mask, positions.device
        )
        half = cos.shape[-1] // 2
        sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)  # the signs of _rotate_half
        self.cos = cos.transpose(1, 2).contiguous()  # (B|1, T, 1, hd): the same for every head
        self.sin = sin.transpose(1, 2).contiguous()
        self.mask = None if mask is None or bool(mask.all()) else mask  # (B, 1, T, S)
        start, end = cache.length, cache.length + length
        self.slots = [
            (keys[:, :, start:end], values[:, :, start:end], keys[:, :, :end], values[:, :, :end])
            for keys, values in zip(cache.keys, cache.values)
        ]  # per layer: where the T keys and values go, and all the keys and values they see
        config = backbone.config
        self.shape = (batch, length, config.n_heads, config.kv_heads, config.head_dim)
        self.eps = config.norm_eps
        self.blocks = [
            (block.attn_norm.weight, block.attn.q_norm, block.attn.k_norm, _weight(block.attn.qkv),
             _weight(block.attn.out), block.mlp_norm.weight,
             (_weight(block.mlp.gate_up), _weight(block.mlp.down))
             if isinstance(block.mlp, SwiGLU) else block.mlp)
            for block in backbone.layers
        ]  # fmt: skip
        self.norm = backbone.norm.weight
        self.cache = cache

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, T, D) of the T positions -> their hidden states (B, T, D)."""
        hidden = _prefix_pass(
            x.reshape(-1, x.shape[-1]), self.cos, self.sin, self.mask, self.slots, self.blocks,
            self.norm, self.shape, self.eps,
        )  # fmt: skip
        return hidden.view(x.shape)

    def arguments(self) -> tuple:
        """What `prefix_pass(x, *arguments)` needs besides x: the cache itself rather than views
        of it (torch.compile would recompile for every new prefix length)."""
        cache = self.cache
        return (self.cos, self.sin, self.mask, cache.keys, cache.values, cache.length,
                self.blocks, self.norm, self.shape, self.eps)  # fmt: skip


def _prefix_pass(x, cos, sin, mask, slots, blocks, norm, shape, eps) -> torch.Tensor:
    """One `PrefixPasses` pass, as a function of tensors: x (B * T, D) -> hidden (B * T, D)."""
    batch, length, heads, kv_heads, head_dim = shape
    for (new_keys, new_values, keys, values), block in zip(slots, blocks):
        attn_norm, q_norm, k_norm, qkv, out, mlp_norm, mlp = block
        h = F.rms_norm(x, (x.shape[-1],), attn_norm, eps)
        qkv = _linear(qkv, h).view(batch, length, heads + 2 * kv_heads, head_dim)
        qk, v = qkv.split([heads + kv_heads, kv_heads], dim=2)
        if q_norm is not None:
            q, k = qk.split([heads, kv_heads], dim=2)
            qk = torch.cat([q_norm(q), k_norm(k)], dim=2)
        first, second = qk.chunk(2, dim=-1)
        qk = torch.addcmul(qk * cos, torch.cat([second, first], dim=-1), sin)  # apply_rotary
        q, k = qk.split([heads, kv_heads], dim=2)  # (B, T, H, hd), (B, T, KV, hd)
        new_keys.copy_(k.transpose(1, 2))
        new_values.copy_(v.transpose(1, 2))
        y = _attend(q.transpose(1, 2), keys, values, mask, False, kv_heads != heads)
        x = _linear(out, y.transpose(1, 2).reshape(batch * length, heads * head_dim), x)
        h = F.rms_norm(x, (x.shape[-1],), mlp_norm, eps)
        if not isinstance(mlp, tuple):  # mixture of experts
            x = x + mlp(h)[0]
            continue
        gate, up = _linear(mlp[0], h).chunk(2, dim=-1)
        x = _linear(mlp[1], F.silu(gate).mul_(up), x)
    return F.rms_norm(x, (x.shape[-1],), norm, eps)


def prefix_pass(x, cos, sin, mask, keys, values, start, blocks, norm, shape, eps) -> torch.Tensor:
    """A `PrefixPasses` pass as a function of tensors (`PrefixPasses.arguments`), for callers
    that torch.compile it: x (B, T, D) -> hidden (B, T, D)."""
    end = start + shape[1]
    slots = [(k[:, :, start:end], v[:, :, start:end], k[:, :, :end], v[:, :, :end])
             for k, v in zip(keys, values)]  # fmt: skip
    rows = x.reshape(-1, x.shape[-1])
    return _prefix_pass(rows, cos, sin, mask, slots, blocks, norm, shape, eps).view(x.shape)


def _weight(layer: nn.Module) -> torch.Tensor | nn.Module:
    """The weight of a plain bias-free `nn.Linear`, called as a function; any other layer (a
    LoRA layer wraps one) stays a module."""
    return layer.weight if type(layer) is nn.Linear and layer.bias is None else layer


def _linear(
    layer: torch.Tensor | nn.Module, x: torch.Tensor, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """`layer(x) + residual` for 2-D x: one matmul when `layer` is a weight (`_weight`)."""
    if isinstance(layer, nn.Module):
        return layer(x) if residual is None else residual + layer(x)
    if residual is None:
        return torch.mm(x, layer.t())
    return torch.addmm(residual, x, layer.t())
