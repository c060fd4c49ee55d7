"""Training throughput of the fmmm backbone beside Hugging Face transformers' Llama, same shape.

    python -m benchmarks.backbone [--steps 4] [--repeats 5] [--threads 2] [--output FILE.md]

Both models are causal LMs (token embedding, 4 pre-norm blocks of width 256, SwiGLU, RoPE, LM
head) trained with AdamW on the same random batches. Each repeat times one round of `--steps`
steps of each model back to back, in alternating order, so that machine load affects both alike;
the ratio fmmm / llama is taken within each repeat and reported as min / median / max over the
repeats, beside the 1-minute load average (`os.getloadavg`) before the run and during the
repeats. Before timing, fmmm's weights are copied into the Llama model and the logits compared,
which checks that the shapes (and the math) really are identical. Achieved FLOP/s = tokens/s *
training FLOPs per token from `fmmm.scaling` (6N + attention).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F
from torch import nn

from fmmm.models.backbone import Transformer, TransformerConfig
from fmmm.models.embeddings import TextEmbedding
from fmmm.scaling import shape_of


class FmmmLM(nn.Module):
    """Token embedding + fmmm Transformer + LM head."""

    def __init__(self, config: TransformerConfig, vocab_size: int):
        super().__init__()
        self.embed = TextEmbedding(vocab_size, config.dim)
        self.backbone = Transformer(config)
        self.head = nn.Linear(config.dim, vocab_size, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(self.embed(ids))[0])


def build_llama(config: TransformerConfig, vocab_size: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    llama_config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.dim,
        intermediate_size=config.hidden_dim,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        num_key_value_heads=config.kv_heads,
        max_position_embeddings=config.max_seq_len,
        rms_norm_eps=config.norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(llama_config)


@torch.no_grad()
def copy_weights(fmmm: FmmmLM, llama: nn.Module) -> None:
    """Load fmmm's weights into the Llama model (fused QKV and gate/up split back)."""
    cfg = fmmm.backbone.config
    q_size, kv_size = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    llama.model.embed_tokens.weight.copy_(fmmm.embed.weight)
    llama.lm_head.weight.copy_(fmmm.head.weight)
    llama.model.norm.weight.copy_(fmmm.backbone.norm.weight)
    for block, layer in zip(fmmm.backbone.layers, llama.model.layers):
        q, k, v = block.attn.qkv.weight.split([q_size, kv_size, kv_size])
        layer.self_attn.q_proj.weight.copy_(q)
        layer.self_attn.k_proj.weight.copy_(k)
        layer.self_attn.v_proj.weight.copy_(v)
        layer.self_attn.o_proj.weight.copy_(block.attn.out.weight)
        gate, up = block.mlp.gate_up.weight.chunk(2)
        layer.mlp.gate_proj.weight.copy_(gate)
        layer.mlp.up_proj.weight.copy_(up)
        layer.mlp.down_proj.weight.copy_(block.mlp.down.weight)
        layer.input_layernorm.weight.copy_(block.attn_norm.weight)
        layer.post_attention_layernorm.weight.copy_(block.mlp_norm.weight)


def logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def train_steps(model, optimizer, batches, autocast: bool) -> float:
    """Seconds for one optimizer step per batch."""
    device = batches[0].device
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for ids in batches:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = logits_of(model, ids[:, :-1])
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(
    models: dict, batches, repeats: int, autocast: bool
) -> tuple[dict[str, list[float]], list[float]]:
    """Tokens/s of each model in each interleaved repeat (after one warm-up repeat), and the
    1-minute load average after each repeat."""
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    tokens = sum(ids[:, :-1].numel() for ids in batches)
    speeds: dict[str, list[float]] = {name: [] for name in models}
    loads = []
    for repeat in range(repeats + 1):
        order = list(models) if repeat % 2 == 0 else list(reversed(models))
        for name in order:
            seconds = train_steps(models[name], optimizers[name], batches, autocast)
            if repeat:
                speeds[name].append(tokens / seconds)
        if repeat:
            loads.append(os.getloadavg()[0])
            shown = ", ".join(f"{name} {values[-1]:,.0f}" for name, values in speeds.items())
            print(f"repeat {repeat}: tokens/s {shown}; load {loads[-1]:.1f}", flush=True)
    return speeds, loads


def spread(values: list[float], fmt: str) -> str:
    """'min / median / max' of `values`, each formatted with `fmt`."""
    return " / ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--output", default=None, help="write the markdown report here")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = TransformerConfig(dim=256, n_layers=4, n_heads=8, max_seq_len=args.seq_len)
    fmmm = FmmmLM(config, args.vocab_size)
    llama = build_llama(config, args.vocab_size)
    copy_weights(fmmm, llama)
    probe = torch.randint(0, args.vocab_size, (2, args.seq_len))
    with torch.no_grad():
        max_diff = (logits_of(fmmm, probe) - logits_of(llama, probe)).abs().max().item()
    counts = {
        "fmmm": sum(p.numel() for p in fmmm.parameters()),
        "hf_llama": sum(p.numel() for p in llama.parameters()),
    }
    assert counts["fmmm"] == counts["hf_llama"], counts
    flops_per_token = shape_of(config, args.vocab_size, seq_len=args.seq_len).flops_per_token()

    generator = torch.Generator().manual_seed(1)
    batches = [
        torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len + 1), generator=generator)
        for _ in range(args.steps)
    ]
    batches = [ids.to(args.device) for ids in batches]
    models = {"fmmm": fmmm.to(args.device).train(), "hf_llama": llama.to(args.device).train()}
    results, loads = {}, []
    for precision, autocast in (("fp32", False), ("bf16 autocast", True)):
        results[precision], precision_loads = measure(models, batches, args.repeats, autocast)
        loads += precision_loads

    import transformers

    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    if args.device == "cpu":
        machine = f"2-core CPU, no GPU ({platform.machine()}), torch threads: {args.threads}"
    else:
        machine = torch.cuda.get_device_name()
    lines = [
        "# Backbone training throughput: fmmm vs Hugging Face Llama",
        "",
        f"Command: `python -m benchmarks.backbone --steps {args.steps} --repeats {args.repeats} "
        f"--batch-size {args.batch_size} --seq-len {args.seq_len} --threads {args.threads} "
        f"--device {args.device}`",
        f"Machine: {machine}; torch {torch.__version__}, transformers {transformers.__version__}",
        f"Date: {date}; 1-minute load average {load_before:.1f} before the run, "
        f"{spread(loads, '.1f')} (min / median / max) during the repeats, its own threads included",
        "",
        f"Shape: width 256, 4 layers, 8 heads, SwiGLU {config.hidden_dim}, vocab {args.vocab_size}, "
        f"sequence {args.seq_len}, batch {args.batch_size}; {counts['fmmm']:,} parameters in both.",
        f"Same weights, same logits: max |fmmm - llama| = {max_diff:.2e} (fp32).",
        f"Training FLOPs per token (6N + attention, `fmmm.scaling`): {flops_per_token:,.0f}.",
        f"{args.repeats} interleaved repeats (after one warm-up) of {args.steps} AdamW steps per "
        "model; every figure is min / median / max over the repeats, the ratio taken within each.",
        "",
        "| precision | model | tokens/s | achieved GFLOP/s (median) | fmmm / llama |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for precision, speeds in results.items():
        ratios = [f / h for f, h in zip(speeds["fmmm"], speeds["hf_llama"])]
        for name, values in speeds.items():
            shown = spread(ratios, ".2f") if name == "fmmm" else ""
            gflops = statistics.median(values) * flops_per_token / 1e9
            lines.append(
                f"| {precision} | {name} | {spread(values, ',.0f')} | {gflops:.2f} | {shown} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        from fmmm.utils.io import atomic_write_text

        atomic_write_text(args.output, text)


if __name__ == "__main__":
    main()
