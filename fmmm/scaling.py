"""Scale accounting: parameters, training FLOPs per token, training memory, compute-optimal plans.

    python -m fmmm.scaling                          # every preset beside its published count
    python -m fmmm.scaling --preset llama2-7b --flops 1e23
    python -m fmmm.scaling configs/model/small.yaml --seq-len 256 --batch-size 8 --precision bf16-mixed
    python -m fmmm.scaling configs/model/7b.yaml --seq-len 2048 --batch-size 1 --gpus 8 --gpu-memory 80

Parameter counts of fmmm configs are exact (the model is instantiated on the meta device, no
memory); published shapes are counted by `ModelShape.parameters()`, which equals the instantiated
count for every fmmm backbone. FLOPs per token follow torchtitan / PaLM: 6 * N + 12 * L * H * Q * T,
with N the (active) parameters less the input embedding tables. The planner uses Hoffmann et al.
2022 (Chinchilla): 20 tokens per parameter, and the Approach 3 fit L(N, D) = E + A/N^a + B/D^b.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

from fmmm.utils.cli import run_main

BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
PRECISIONS = ("fp32", "bf16-mixed", "bf16")

# Hoffmann et al. 2022, Approach 3 fit.
CHINCHILLA_E, CHINCHILLA_A, CHINCHILLA_B = 1.69, 406.4, 410.7
CHINCHILLA_ALPHA, CHINCHILLA_BETA = 0.34, 0.28
TOKENS_PER_PARAMETER = 20.0


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only Transformer's shape, enough to count parameters and FLOPs."""

    dim: int
    n_layers: int
    n_heads: int
    ffn_hidden: int
    vocab_size: int
    n_kv_heads: int | None = None
    mlp: str = "swiglu"  # "swiglu" (3 matrices) or "gelu" (2 matrices)
    norm: str = "rmsnorm"  # "rmsnorm" (weight) or "layernorm" (weight and bias)
    bias: bool = False  # biases on the attention and MLP projections
    tied_embeddings: bool = False
    learned_positions: int = 0  # rows of a learned absolute position table (GPT-3: 2048)
    relative_positions: bool = False  # Transformer-XL relative attention (Gopher, Chinchilla)
    qk_norm: bool = False
    n_experts: int = 0
    experts_top_k: int = 0
    seq_len: int = 2048
    published: float = 0.0  # published parameter count, for the preset table
    source: str = ""

    def __post_init__(self) -> None:
        if min(self.dim, self.n_layers, self.n_heads, self.ffn_hidden) <= 0 or self.vocab_size < 0:
            raise ValueError("dim, n_layers, n_heads and ffn_hidden must be positive")
        if self.dim % self.n_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.mlp not in ("swiglu", "gelu") or self.norm not in ("rmsnorm", "layernorm"):
            raise ValueError(
                f"mlp must be swiglu|gelu and norm rmsnorm|layernorm, got {self.mlp}, {self.norm}"
            )

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    def _norm(self, width: int) -> int:
        return width * (2 if self.norm == "layernorm" else 1)

    def _mlp(self) -> int:
        d, f = self.dim, self.ffn_hidden
        if self.mlp == "swiglu":
            return 3 * d * f + (2 * f + d if self.bias else 0)
        return 2 * d * f + (f + d if self.bias else 0)

    def layer_parameters(self, active: bool = False) -> int:
        """Parameters of one block (with `active`, only the top-k experts an MoE token uses)."""
        d, hd = self.dim, self.head_dim
        qkv = (self.n_heads + 2 * self.kv_heads) * hd
        attn = d * qkv + self.n_heads * hd * d + (qkv + d if self.bias else 0)
        if self.relative_positions:
            attn += d * d + 2 * self.n_heads * hd  # position-key projection, u and v biases
        if self.qk_norm:
            attn += 2 * hd
        if self.n_experts:
            experts = self.experts_top_k if active else self.n_experts
            mlp = experts * self._mlp() + d * self.n_experts
        else:
            mlp = self._mlp()
        return attn + mlp + 2 * self._norm(d)

    def embedding_parameters(self) -> int:
        """Input token and learned position tables (excluded from N in the FLOP count)."""
        return (self.vocab_size + self.learned_positions) * self.dim

    def parameters(self, active: bool = False) -> int:
        """Total parameter count (or active per token for MoE)."""
        head = 0 if self.tied_embeddings else self.vocab_size * self.dim
        return (
            self.embedding_parameters()
            + head
            + self.n_layers * self.layer_parameters(active)
            + self._norm(self.dim)
        )

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token: 6 * N_active_non_embedding + 12 * L * H * Q * T."""
        seq_len = self.seq_len if seq_len is None else seq_len
        dense = self.parameters(active=True) - self.embedding_parameters()
        if self.tied_embeddings:
            dense += self.vocab_size * self.dim  # the tied table still does the output matmul
        return 6.0 * dense + 12.0 * self.n_layers * self.n_heads * self.head_dim * seq_len


def shape_of(
    config, vocab_size: int = 0, tied_embeddings: bool = False, seq_len: int | None = None
) -> ModelShape:
    """ModelShape of a `TransformerConfig` plus a vocabulary (0: backbone only)."""
    return ModelShape(
        dim=config.dim,
        n_layers=config.n_layers,
        n_heads=config.n_heads,
        n_kv_heads=config.kv_heads,
        ffn_hidden=config.hidden_dim,
        vocab_size=vocab_size,
        tied_embeddings=tied_embeddings,
        qk_norm=config.qk_norm,
        n_experts=config.n_experts,
        experts_top_k=config.experts_top_k if config.n_experts else 0,
        seq_len=seq_len or config.max_seq_len,
    )


def meta_parameter_count(module_factory) -> int:
    """Exact parameter count of `module_factory()` built on the meta device (no memory used)."""
    import torch

    with torch.device("meta"):
        module = module_factory()
    return sum(p.numel() for p in module.parameters())


def training_memory(
    shape: ModelShape, batch_size: int, seq_len: int, precision: str = "bf16-mixed"
) -> dict[str, float]:
    """Estimated training memory in bytes for AdamW, per term, with and without checkpointing.

    Precision: "fp32" (everything fp32), "bf16-mixed" (fp32 weights, grads and Adam moments,
    bf16 activations under autocast), "bf16" (bf16 weights, grads and moments). Activations count
    what the fmmm block saves for backward with fused (flash) attention: norms' inputs and
    outputs, q/k/v and rotated q/k, attention output, SwiGLU gate/up/product (Korthikanti et al.
    2022's accounting applied to this block); checkpointing keeps only each block's input plus one
    block's activations during its recomputation. Logits are counted in fp32 for the loss.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError("batch_size and seq_len must be positive")
    params = shape.parameters()
    weight_bytes = 2 if precision == "bf16" else 4
    act_bytes = 4 if precision == "fp32" else 2
    d, hd, f = shape.dim, shape.head_dim, shape.ffn_hidden
    h, kv = shape.n_heads, shape.kv_heads
    experts = max(shape.experts_top_k, 1)
    per_token_layer = 4 * d + (2 * h + 3 * kv) * hd + h * hd + h + experts * 4 * f  # elements
    tokens = batch_size * seq_len
    logits = tokens * shape.vocab_size * (act_bytes + 4)
    full = tokens * per_token_layer * act_bytes * shape.n_layers
    checkpointed = tokens * (d * shape.n_layers + per_token_layer) * act_bytes
    out = {
        "weights": params * weight_bytes,
        "gradients": params * weight_bytes,
        "optimizer": params * 2 * weight_bytes,
        "activations": full + logits,
        "activations_checkpointed": checkpointed + logits,
    }
    states = out["weights"] + out["gradients"] + out["optimizer"]
    out["total"] = states + out["activations"]
    out["total_checkpointed"] = states + out["activations_checkpointed"]
    return out


# Published dense bf16 tensor-core peaks (no sparsity), FLOP/s, matched against the device name.
GPU_PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM; NVL and PCIe parts are slower
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("V100", 125e12),  # fp16
    ("T4", 65e12),  # fp16
)
_PROBED: dict[tuple[str, int], float] = {}


def matmul_probe_flops(dtype: str = "fp32", size: int = 1024, seconds: float = 0.5) -> float:
    """FLOP/s of square CPU matmuls in `dtype` with this process's threads (cached per process).

    The best of repeated 1024-wide products over half a second: 512-wide ones measured as little as
    a seventh of the peak on this 2-core CPU while another process was busy, which inflates MFU.
    """
    import time

    import torch

    key = (dtype, torch.get_num_threads())
    if key not in _PROBED:
        torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=generator).to(torch_dtype)
        b = torch.randn(size, size, generator=generator).to(torch_dtype)
        a @ b  # warm-up
        best, deadline = math.inf, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            for _ in range(4):
                a @ b
            best = min(best, (time.perf_counter() - started) / 4)
        _PROBED[key] = 2 * size**3 / best
    return _PROBED[key]


def device_peak_flops(device, precision: str = "fp32") -> float:
    """Peak FLOP/s of one process's device for MFU: the published bf16 dense peak of a known GPU
    (a fp32 run counts TF32 at half of it), else the CPU matmul probe in the run's precision."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((flops for key, flops in GPU_PEAK_FLOPS if key in name), None)
        if peak is None:
            raise ValueError(f"no published peak for GPU {name!r}: set train.peak_flops")
        return peak / 2 if precision == "fp32" else peak
    return matmul_probe_flops("bf16" if precision == "bf16" else "fp32")


def per_gpu_memory(
    shape: ModelShape,
    batch_size: int,
    seq_len: int,
    precision: str = "bf16-mixed",
    gpus: int = 1,
    parameters: int | None = None,
) -> dict[str, dict[str, float]]:
    """Training memory per GPU in bytes under DDP and FSDP, for a per-GPU batch of `batch_size`.

    DDP replicates weights, gradients and AdamW state on every GPU. FSDP (FSDP2, one Transformer
    block per unit) keeps 1/gpus of them, plus the units it gathers at a time: the root (embedding
    tables, heads) and two blocks (the one running and the one prefetched) in the compute dtype,
    and one block's unsharded gradients before their reduce-scatter. Activations are per GPU and
    the same under both. `parameters` (the exact count, encoders included) replaces the shape's.
    """
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    base = training_memory(shape, batch_size, seq_len, precision)
    total_params = parameters if parameters is not None else shape.parameters()
    weight_bytes = 2 if precision == "bf16" else 4
    compute_bytes = 4 if precision == "fp32" else 2
    states = {
        "weights": total_params * weight_bytes,
        "gradients": total_params * weight_bytes,
        "optimizer": total_params * 2 * weight_bytes,
    }
    root = total_params - shape.n_layers * shape.layer_parameters()
    gathered = (root + 2 * shape.layer_parameters()) * compute_bytes
    gathered += shape.layer_parameters() * 4  # one block's gradients, reduced in fp32
    plans = {}
    for name, divide, extra in (("ddp", 1, 0), ("fsdp", gpus, gathered if gpus > 1 else 0)):
        plan = {key: value / divide for key, value in states.items()}
        plan["gathered"] = extra
        plan["activations"] = base["activations"]
        plan["activations_checkpointed"] = base["activations_checkpointed"]
        fixed = plan["weights"] + plan["gradients"] + plan["optimizer"] + extra
        plan["total"] = fixed + plan["activations"]
        plan["total_checkpointed"] = fixed + plan["activations_checkpointed"]
        plans[name] = plan
    return plans


def memory_plan_table(plans: dict[str, dict[str, float]], gpu_memory_gib: float | None) -> str:
    """The per-GPU memory of `per_gpu_memory` as a table, with whether each plan fits."""
    keys = ("weights", "gradients", "optimizer", "gathered", "activations",
            "activations_checkpointed", "total", "total_checkpointed")  # fmt: skip
    lines = [f"  {'GiB per GPU':<26}" + "".join(f"{name.upper():>10}" for name in plans)]
    for key in keys:
        lines.append(
            f"  {key:<26}" + "".join(f"{plan[key] / 2**30:10.2f}" for plan in plans.values())
        )
    if gpu_memory_gib:
        for key, label in (("total", "fits"), ("total_checkpointed", "fits checkpointed")):
            verdicts = ("yes" if p[key] <= gpu_memory_gib * 2**30 else "no" for p in plans.values())
            lines.append(
                f"  {label + f' in {gpu_memory_gib:g} GiB':<26}"
                + "".join(f"{v:>10}" for v in verdicts)
            )
    return "\n".join(lines)


def chinchilla_loss(parameters: float, tokens: float) -> float:
    """Hoffmann et al. 2022 Approach 3: L(N, D) = E + A / N^alpha + B / D^beta."""
    return (
        CHINCHILLA_E
        + CHINCHILLA_A / parameters**CHINCHILLA_ALPHA
        + CHINCHILLA_B / tokens**CHINCHILLA_BETA
    )


def compute_optimal(flops: float) -> dict[str, dict[str, float]]:
    """Parameters and tokens for a FLOP budget C = 6 N D, by the 20-tokens rule and by Approach 3."""
    if not flops > 0 or not math.isfinite(flops):
        raise ValueError(f"FLOP budget must be a positive number, got {flops}")
    rule_n = math.sqrt(flops / (6 * TOKENS_PER_PARAMETER))
    rule_d = TOKENS_PER_PARAMETER * rule_n
    a, b = CHINCHILLA_ALPHA, CHINCHILLA_BETA
    g = (a * CHINCHILLA_A / (b * CHINCHILLA_B)) ** (1 / (a + b))
    fit_n = g * (flops / 6) ** (b / (a + b))
    fit_d = (flops / 6) / fit_n
    return {
        "tokens_per_parameter": {
            "parameters": rule_n,
            "tokens": rule_d,
            "loss": chinchilla_loss(rule_n, rule_d),
        },
        "approach3": {"parameters": fit_n, "tokens": fit_d, "loss": chinchilla_loss(fit_n, fit_d)},
    }


def _llama(dim, layers, heads, kv, ffn, vocab, published, source, **kw) -> ModelShape:
    return ModelShape(
        dim, layers, heads, ffn, vocab, n_kv_heads=kv, published=published, source=source, **kw
    )


PRESETS: dict[str, ModelShape] = {
    "llama2-7b": _llama(
        4096, 32, 32, 32, 11008, 32000, 6.74e9, "Llama 2 model card (6.74B)", seq_len=4096
    ),
    "llama2-13b": _llama(
        5120, 40, 40, 40, 13824, 32000, 13.0e9, "Llama 2 model card (13.0B)", seq_len=4096
    ),
    "llama2-70b": _llama(
        8192, 80, 64, 8, 28672, 32000, 69.0e9, "Llama 2 model card (69.0B)", seq_len=4096
    ),
    "llama3-8b": _llama(
        4096, 32, 32, 8, 14336, 128256, 8.03e9, "Llama 3 model card (8.03B)", seq_len=8192
    ),
    "llama3-70b": _llama(
        8192, 80, 64, 8, 28672, 128256, 70.6e9, "Llama 3 model card (70.6B)", seq_len=8192
    ),
    "mistral-7b": _llama(
        4096, 32, 32, 8, 14336, 32000, 7.24e9, "Mistral 7B model card (7.24B)", seq_len=8192
    ),
    "mixtral-8x7b": _llama(
        4096,
        32,
        32,
        8,
        14336,
        32000,
        46.7e9,
        "Mixtral paper (46.7B total, 12.9B active)",
        n_experts=8,
        experts_top_k=2,
        seq_len=32768,
    ),
    "gpt3-175b": ModelShape(
        12288,
        96,
        96,
        49152,
        50257,
        mlp="gelu",
        norm="layernorm",
        bias=True,
        tied_embeddings=True,
        learned_positions=2048,
        published=175e9,
        source="Brown et al. 2020 (175B)",
    ),
    "chinchilla-70b": ModelShape(
        8192,
        80,
        64,
        32768,
        32000,
        mlp="gelu",
        relative_positions=True,
        tied_embeddings=True,
        published=70e9,
        source="Hoffmann et al. 2022 (70B)",
    ),
    "gopher-280b": ModelShape(
        16384,
        80,
        128,
        65536,
        32000,
        mlp="gelu",
        relative_positions=True,
        tied_embeddings=True,
        published=280e9,
        source="Rae et al. 2021 (280B)",
    ),
}


def _human(value: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}{unit}"
    return f"{value:.3g}{unit}"


def report(
    shape: ModelShape,
    exact_parameters: int | None = None,
    seq_len: int | None = None,
    batch_size: int = 1,
    precision: str = "bf16-mixed",
    flops: float | None = None,
    gpus: int = 0,
    gpu_memory_gib: float | None = None,
) -> str:
    """Human-readable summary: parameters, FLOPs per token, memory, compute-optimal plan."""
    seq_len = seq_len or shape.seq_len
    params = exact_parameters if exact_parameters is not None else shape.parameters()
    lines = [f"parameters            {params:,} ({_human(params)})"]
    if shape.n_experts:
        lines.append(f"active per token      {shape.parameters(active=True):,}")
    if shape.published:
        lines.append(
            f"published             {_human(shape.published)} ({shape.source}); ratio {params / shape.published:.4f}"
        )
    per_token = shape.flops_per_token(seq_len)
    attention = 12.0 * shape.n_layers * shape.n_heads * shape.head_dim * seq_len
    lines.append(
        f"train FLOPs / token   {per_token:.4g} at seq_len {seq_len} "
        f"(6N {per_token - attention:.4g} + attention {attention:.4g})"
    )
    memory = training_memory(shape, batch_size, seq_len, precision)
    lines.append(f"memory ({precision}, AdamW, batch {batch_size} x {seq_len}):")
    for key in (
        "weights",
        "gradients",
        "optimizer",
        "activations",
        "activations_checkpointed",
        "total",
        "total_checkpointed",
    ):
        lines.append(f"  {key:<26}{memory[key] / 2**30:10.2f} GiB")
    if gpus:
        plans = per_gpu_memory(shape, batch_size, seq_len, precision, gpus, exact_parameters)
        lines.append(f"per GPU on {gpus} GPUs (batch {batch_size} x {seq_len} per GPU):")
        lines.append(memory_plan_table(plans, gpu_memory_gib))
    budget = flops if flops is not None else 6.0 * params * TOKENS_PER_PARAMETER * params
    plan = compute_optimal(budget)
    lines.append(f"compute-optimal plan for C = {budget:.3g} FLOPs (Hoffmann et al. 2022):")
    for name, entry in plan.items():
        lines.append(
            f"  {name:<22}N = {_human(entry['parameters'])}, D = {_human(entry['tokens'])} tokens, "
            f"predicted loss {entry['loss']:.3f}"
        )
    return "\n".join(lines)


def preset_table() -> str:
    """Markdown table of every preset's count beside its published figure."""
    rows = ["| preset | parameters | published | ratio |", "| --- | ---: | ---: | ---: |"]
    for name, shape in PRESETS.items():
        params = shape.parameters()
        rows.append(
            f"| {name} | {params:,} | {_human(shape.published)} | {params / shape.published:.4f} |"
        )
    return "\n".join(rows)


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse numbers that cannot be meant (`--seq-len 0`, `--flops inf`) before any work."""
    from fmmm.models.backbone import LIMITS

    if args.gpu_memory is not None and not 0 < args.gpu_memory < float("inf"):
        raise ValueError(f"--gpu-memory must be a positive number of GiB, got {args.gpu_memory}")
    if args.seq_len is not None and not 1 <= args.seq_len <= LIMITS["max_seq_len"]:
        raise ValueError(f"--seq-len must be in [1, {LIMITS['max_seq_len']}], got {args.seq_len}")
    if not 1 <= args.batch_size <= 2**20:
        raise ValueError(f"--batch-size must be in [1, {2**20}], got {args.batch_size}")
    if args.flops is not None and not 0 < args.flops < float("inf"):
        raise ValueError(f"--flops must be a positive, finite FLOP budget, got {args.flops}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fmmm.scaling", description=__doc__.splitlines()[0]
    )
    parser.add_argument("config", nargs="?", help="a model config YAML (MultimodalConfig)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a published model shape")
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--precision", choices=PRECISIONS, default="bf16-mixed")
    parser.add_argument("--flops", type=float, default=None, help="FLOP budget for the planner")
    parser.add_argument(
        "--gpus", type=int, default=None, help="plan DDP and FSDP over this many GPUs"
    )
    parser.add_argument("--gpu-memory", type=float, default=None, help="GiB per GPU: say what fits")
    args = parser.parse_args(argv)
    return run_main(lambda: _main(args))


def _main(args: argparse.Namespace) -> None:
    if args.preset and args.config:
        raise ValueError("give either a config file or --preset, not both")
    if args.gpus is not None and args.gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {args.gpus}")
    check_arguments(args)

    def show(shape: object, exact: int | None) -> None:
        print(
            report(
                shape,
                exact,
                args.seq_len,
                args.batch_size,
                args.precision,
                args.flops,
                args.gpus,
                args.gpu_memory,
            )  # fmt: skip
        )

    if args.preset:
        print(f"preset {args.preset}")
        show(PRESETS[args.preset], None)
    elif args.config:
        from fmmm.config import load_config
        from fmmm.models.multimodal import MultimodalConfig, MultimodalModel

        config = load_config(MultimodalConfig, args.config, args.overrides)
        exact = meta_parameter_count(lambda: MultimodalModel(config))
        shape = shape_of(config.backbone, config.vocab_size, config.tie_embeddings, args.seq_len)
        print(
            f"config {args.config} (MultimodalModel; backbone + vocabulary: {shape.parameters():,})"
        )
        show(shape, exact)
    else:
        print(preset_table())
        if args.flops is not None:
            for name, entry in compute_optimal(args.flops).items():
                print(f"{name}: N = {_human(entry['parameters'])}, D = {_human(entry['tokens'])}")


if __name__ == "__main__":
    sys.exit(main())
