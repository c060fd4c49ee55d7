"""Sharding, activation checkpointing and compilation applied to a model from outside its code.

    from fmmm.train.parallel import FSDPConfig, parallelize

    skeleton = parallelize(module, "fsdp", FSDPConfig(), precision="bf16", compile_backend="inductor")
    ...                                   # train; the optimizer is built over the sharded parameters
    plain = consolidate(module, skeleton)  # process 0: an unsharded module with the full weights

The model files stay single-device (torchtitan's `parallelize.py` split); `Trainer` calls this from
`train.distributed`, `train.fsdp`, `train.precision` and `train.compile`. The units are the
Transformer blocks (`fmmm.models.backbone.Block`); everything else (embeddings, encoders, heads)
forms the root unit. The order follows torchtitan: activation checkpointing, then `torch.compile`
per block, then `fully_shard` per block and finally on the root. Both wrappers replace the block's
`forward` attribute, so parameter names (and checkpoints) are the same with and without them.

Compilation is per block with static sequence lengths: the data side pads variable-length rows up
to one of a few `length_buckets`, so a run compiles once per bucket; the batch dimension is marked
dynamic, so varying batch sizes do not recompile.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import gc
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

DISTRIBUTED = ("ddp", "fsdp")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class FSDPConfig:
    """FSDP2 options (used when `train.distributed: fsdp`)."""

    reshard_after_forward: bool = True  # False: keep gathered weights until backward (ZeRO-2-like)
    cpu_offload: bool = False  # sharded parameters, gradients and optimizer state live on the CPU
    activation_checkpointing: bool = False  # recompute each block's activations in backward


def length_buckets(max_length: int, count: int = 4, multiple: int = 8) -> tuple[int, ...]:
    """`count` sequence lengths up to `max_length`, each twice the one before (multiples of 8)."""
    if max_length < 1 or count < 1:
        raise ValueError("max_length and count must be >= 1")
    sizes = {
        min(max_length, multiple * math.ceil(max_length / 2**k / multiple)) for k in range(count)
    }
    return tuple(sorted(sizes))


def bucket_length(length: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds `length` (`length` itself when no bucket is large enough)."""
    return next((size for size in buckets if size >= length), length)


def sequence_buckets(train: Any, max_length: int) -> tuple[int, ...]:
    """The lengths a run pads its variable-length rows to: buckets when `train.compile` is on
    (`train` is a `TrainerConfig`), none otherwise (rows keep their natural length)."""
    return length_buckets(max_length, train.compile_buckets) if train.compile else ()


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """Every Transformer block inside `module` (the FSDP, checkpointing and compile units)."""
    from fmmm.models.backbone import Block

    return [m for m in module.modules() if isinstance(m, Block)]


def _static_except_batch(args: tuple) -> None:
    """Sequence dims static (one compile per length bucket); the batch dim may vary freely."""
    for arg in args:
        if isinstance(arg, torch.Tensor) and arg.ndim > 0:
            if arg.shape[0] > 1:
                torch._dynamo.maybe_mark_dynamic(arg, 0)
            for dim in range(1, arg.ndim):
                torch._dynamo.mark_static(arg, dim)


def wrap_block_forward(
    block: nn.Module, checkpointing: bool, compile_backend: str | Callable | None
) -> None:
    """Replace `block.forward` (an instance attribute: parameter names stay the same) by itself
    under activation checkpointing and/or `torch.compile`."""
    from torch.utils.checkpoint import checkpoint

    forward = block.forward
    if checkpointing:
        forward = functools.partial(checkpoint, forward, use_reentrant=False)
    if compile_backend:
        compiled = torch.compile(forward, backend=compile_backend, dynamic=None)

        def forward(*args: Any, **kwargs: Any) -> Any:
            _static_except_batch(args)
            return compiled(*args, **kwargs)

    block.forward = forward


def ensure_process_group() -> None:
    """A one-process group when none exists, so FSDP2 also runs unlaunched (world size 1)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    close_process_group_at_exit()


def close_process_group() -> None:
    """Destroy the default process group, if there is one (a no-op otherwise).

    Garbage is collected first and after: objects that still reference the group (a DDP
    reducer, pending work) would otherwise keep its gloo threads alive to interpreter
    finalization, which aborts the process even after `destroy_process_group`.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


_CLOSE_REGISTERED = False


def close_process_group_at_exit() -> None:
    """Destroy the process group while the interpreter is still whole, once per process.

    A gloo group left to interpreter finalization can abort the process ("terminate called
    without an active exception", SIGABRT; pytorch#190489): its worker threads still hold
    tensors whose release needs the GIL. A rank that finishes first then fails the launch.
    """
    global _CLOSE_REGISTERED
    if not _CLOSE_REGISTERED:
        atexit.register(close_process_group)
        _CLOSE_REGISTERED = True


def weightless_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters live on the meta device (buffers are kept)."""
    memo = {
        id(p): nn.Parameter(p.detach().to("meta"), p.requires_grad) for p in module.parameters()
    }
    return copy.deepcopy(module, memo)


def apply_fsdp(
    module: nn.Module, cfg: FSDPConfig, precision: str = "fp32", device: torch.device | None = None
) -> None:
    """`fully_shard` every Transformer block, then the root, over all processes (in place).

    Mixed precision as torch defines it for FSDP2: parameters gathered in bf16/fp16, gradients
    reduced in fp32, sharded master weights and optimizer state in fp32.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    ensure_process_group()
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    options: dict[str, Any] = {"mesh": mesh}
    if precision != "fp32":
        options["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=DTYPES[precision], reduce_dtype=torch.float32
        )
    if cfg.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")
    # FSDP2 cannot shard 0-d parameters (a contrastive temperature): they stay replicated
    options["ignored_params"] = set(replicated_parameters(module))
    blocks = transformer_blocks(module)
    for index, block in enumerate(blocks):
        # the last block's weights are needed again at once by backward: never reshard them
        reshard = cfg.reshard_after_forward and index < len(blocks) - 1
        fully_shard(block, reshard_after_forward=reshard, **options)
    fully_shard(module, reshard_after_forward=cfg.reshard_after_forward, **options)


def parallelize(
    module: nn.Module,
    distributed: str,
    fsdp: FSDPConfig,
    precision: str = "fp32",
    compile_backend: str | Callable | None = None,  # a torch.compile backend
) -> nn.Module | None:
    """Checkpointing, compile and (for "fsdp") sharding applied to `module` in place.

    Returns a weightless copy of the unsharded module for `consolidate` under FSDP, else None.
    """
    if distributed not in DISTRIBUTED:
        raise ValueError(f"distributed must be one of {DISTRIBUTED}, got {distributed!r}")
    sharded = distributed == "fsdp"
    skeleton = weightless_copy(module) if sharded else None
    checkpointing = sharded and fsdp.activation_checkpointing
    if checkpointing or compile_backend:
        for block in transformer_blocks(module):
            wrap_block_forward(block, checkpointing, compile_backend)
    if sharded:
        apply_fsdp(module, fsdp, precision)
    return skeleton


def replicated_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters FSDP leaves unsharded (0-d); their gradients are averaged by `sync_replicated`."""
    return [p for p in module.parameters() if p.ndim == 0]


def sync_replicated(parameters: list[nn.Parameter]) -> None:
    """Average the gradients of replicated parameters over all processes (DDP's rule)."""
    import torch.distributed as dist

    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads or dist.get_world_size() == 1:
        return
    flat = torch.stack([g.reshape(()) for g in grads])
    dist.all_reduce(flat)
    for grad, value in zip(grads, flat / dist.get_world_size()):
        grad.copy_(value)


def clip_grad_norm_(parameters: list[nn.Parameter], max_norm: float) -> float:
    """Global gradient norm over sharded (DTensor) and plain gradients; clip to `max_norm`."""
    from torch.distributed.tensor import DTensor

    with_grad = [p for p in parameters if p.grad is not None]
    groups = (
        [p for p in with_grad if isinstance(p.grad, DTensor)],
        [p for p in with_grad if not isinstance(p.grad, DTensor)],
    )
    squares = torch.zeros((), dtype=torch.float64)
    for group in groups:
        if group:
            norm = torch.nn.utils.get_total_norm([p.grad for p in group], 2.0)
            if isinstance(norm, DTensor):
                norm = norm.full_tensor()  # the shards' squared norms summed over processes
            squares += norm.double().cpu() ** 2
    total = float(squares.sqrt())
    if math.isfinite(max_norm):
        coefficient = min(max_norm / (total + 1e-6), 1.0)
        for p in with_grad:
            p.grad.mul_(coefficient)
    return total


@contextlib.contextmanager
def no_gradient_sync(module: nn.Module) -> Iterator[None]:
    """Accumulate gradients locally (no reduce-scatter) for the micro-steps before the last."""
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


@contextlib.contextmanager
def gathered_root(module: nn.Module) -> Iterator[None]:
    """The root unit's weights (embeddings, encoders, heads) gathered, so that methods other than
    `forward` (an evaluator's `embed_pooled`) can use them; the blocks gather their own."""
    module.unshard()
    # a root forward reshards on exit when no backward follows: gather again after each one
    handle = module.register_forward_hook(lambda *args: module.unshard())
    try:
        yield
    finally:
        handle.remove()
        module.reshard()


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state on the CPU of process 0 (empty elsewhere); all processes call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(module, options=options)


def consolidate(module: nn.Module, skeleton: nn.Module) -> nn.Module | None:
    """An unsharded single-device module with the full weights on process 0 (None elsewhere)."""
    import torch.distributed as dist

    state = full_state_dict(module)
    if dist.get_rank() != 0:
        return None
    plain = copy.deepcopy(skeleton)
    plain.load_state_dict(state, assign=True)
    return plain
