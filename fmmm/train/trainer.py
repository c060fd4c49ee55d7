"""The reusable training loop: one `Trainer` for pretraining, VLA fine-tuning, SFT and DPO.

    from fmmm.train.trainer import Trainer, TrainerConfig

    trainer = Trainer(cfg, module, stream, run_dir, count_tokens=..., evaluate=..., flops_per_token=...)
    result = trainer.train()  # TrainResult(step, status, metrics, tokens_per_second, mfu, ...)

- `cfg`: `TrainerConfig` (steps, global batch size, gradient accumulation, precision, seed, `optim`,
  `checkpoint`, `spike`, `logging`); embed it as the `train:` section of a run config.
- `module`: an `nn.Module` whose `forward(batch)` returns a dict with a scalar `"loss"` plus named
  scalars to log (each objective's loss), or a `(loss, info_dict)` pair (the Policy convention).
  Everything trainable, objective parameters included (e.g. a contrastive temperature), lives in it.
- `stream`: any object with `batch(start, count)` returning the batch made of samples
  `start .. start+count-1` of an endless stream that is a pure function of the index (no global RNG),
  e.g. `fmmm.train.data.MixtureStream` or `fmmm.train.data.DatasetStream`. The trainer gives every
  process and micro-step its own slice of the global batch, so the data position is just the step
  and resuming or skipping a data window is exact.
- `run_dir` receives `metrics.jsonl` (one row per step), `events.jsonl` (skips, rollbacks,
  checkpoints, preemption), `tensorboard/` and `ckpt/step_NNNNNN/` (see `fmmm.train.checkpoint`).
- `evaluate(module) -> dict[str, float]`, run on the main process every `eval_every` steps and at the
  end on the unwrapped module in eval mode (no collectives inside; global RNG is left untouched).
  Under FSDP it runs on every process (the forward passes gather the weights); the main one logs.

Precision and DDP (multi-process via `accelerate launch` / `torchrun`) come through Accelerate from
the config; `distributed: fsdp` shards the module with FSDP2 and `compile: true` compiles each
Transformer block (both applied from outside by `fmmm.train.parallel`); the module stays
single-device. Sharded runs write `torch.distributed.checkpoint` checkpoints and, at the end, leave
the unsharded module on the main process (what `accelerator.unwrap_model(trainer.module)` returns
there), so recipes save one `model.safetensors` as for a DDP run. MFU divides by the device's peak
(`fmmm.scaling.device_peak_flops`) unless `peak_flops` is set. SIGTERM writes a checkpoint and
returns with `status == "preempted"`; `checkpoint.resume: auto` continues from the newest valid
checkpoint.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from fmmm.scaling import device_peak_flops
from fmmm.train import checkpoint as ckpt
from fmmm.train import parallel
from fmmm.train.metrics import JsonlLog, mfu
from fmmm.train.optim import OptimConfig, build_optimizer, build_scheduler
from fmmm.train.parallel import DISTRIBUTED, FSDPConfig
from fmmm.train.spike import SpikeConfig, SpikeGuard

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class CheckpointConfig:
    """How often checkpoints are written, how many are kept, and where a run resumes from."""

    every: int = 100  # steps between checkpoints (0: only at the end)
    keep: int = 3  # newest checkpoints kept (0: all)
    resume: str = "auto"  # "auto" (newest valid one, if any), "none", or a step_* folder

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"checkpoint.every must be >= 0, got {self.every}")
        if self.keep < 0:
            raise ValueError(f"checkpoint.keep must be >= 0, got {self.keep}")
        if not self.resume:
            raise ValueError("checkpoint.resume must be 'auto', 'none' or a checkpoint folder")


@dataclass
class LoggingConfig:
    """Progress bar and TensorBoard cadence (metrics.jsonl gets every step)."""

    every: int = 10
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError(f"logging.every must be >= 1, got {self.every}")


@dataclass
class TrainerConfig:
    """Everything the loop needs besides the module and the data."""

    steps: int = 1000
    batch_size: int = 32  # global: all processes and all micro-steps of one optimizer step
    grad_accum: int = 1
    precision: str = "fp32"  # fp32 | bf16 | fp16, applied by Accelerate (FSDP: its mixed precision)
    distributed: str = "ddp"  # ddp (replicated) | fsdp (FSDP2, one Transformer block per unit)
    fsdp: FSDPConfig = field(default_factory=FSDPConfig)
    compile: bool = False  # torch.compile per Transformer block; sequence lengths bucketed
    compile_backend: str = "inductor"
    compile_buckets: int = 4  # sequence-length buckets (each twice the last, up to the context)
    seed: int = 0
    eval_every: int = 0  # 0: evaluate only at the end
    eval_at_start: bool = False  # also evaluate the initial weights (fresh runs only)
    peak_flops: float | None = None  # per process, for MFU; 0 / None: measured or looked up
    # Build the next batch in a background thread. None (auto): on when training on an accelerator,
    # off on CPU, where the thread competes with the compute threads for the cores (on 2 cores it
    # made VLA steps 1.1-1.4x slower; docs/benchmarks.md). Batches are the same either way.
    prefetch: bool | None = None
    find_unused_parameters: bool = False  # DDP: some parameters get no gradient on some steps
    # exponential moving average of the weights (0: none): evaluations, validation and the final
    # module use the average; checkpoints keep both. Decay at step n: min(ema_decay, (1+n)/(10+n))
    ema_decay: float = 0.0
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    spike: SpikeConfig = field(default_factory=SpikeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {self.steps}")
        if not 1 <= self.batch_size <= 2**20:  # more samples per step than any run holds
            raise ValueError(f"train.batch_size must be in [1, {2**20}], got {self.batch_size}")
        if self.grad_accum < 1:
            raise ValueError(f"train.grad_accum must be >= 1, got {self.grad_accum}")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"train.batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.eval_every < 0:
            raise ValueError(f"train.eval_every must be >= 0, got {self.eval_every}")
        if self.peak_flops is not None and not 0 <= self.peak_flops < float("inf"):
            raise ValueError(f"train.peak_flops must be >= 0 (0: auto), got {self.peak_flops}")
        if self.distributed not in DISTRIBUTED:
            raise ValueError(
                f"train.distributed must be one of {DISTRIBUTED}, got {self.distributed!r}"
            )
        if self.distributed == "fsdp" and self.precision == "fp16":
            raise ValueError("train.precision=fp16 is not supported with FSDP here; use bf16")
        if self.compile_buckets < 1:
            raise ValueError(f"train.compile_buckets must be >= 1, got {self.compile_buckets}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in [0, 1) (0: off), got {self.ema_decay}")
        if self.ema_decay and self.distributed == "fsdp":
            raise ValueError("train.ema_decay is not supported with train.distributed=fsdp")


class SampleStream(Protocol):
    """An endless, deterministic stream of samples addressed by index."""

    def batch(self, start: int, count: int) -> Any: ...


@dataclass
class TrainResult:
    """What a finished (or preempted) run reports."""

    step: int
    status: str  # "completed" | "preempted"
    metrics: dict[str, float]  # last step's metrics
    eval_metrics: dict[str, float]
    tokens_per_second: float
    mfu: float | None
    wall_seconds: float
    skipped_steps: int
    rollbacks: int


def make_accelerator(cfg: TrainerConfig, run_dir: str | Path) -> Any:
    """The Accelerator a run uses: precision, trackers and DDP options from `cfg`.

    Compilation and FSDP are not Accelerate's here: the trainer applies them per block
    (`fmmm.train.parallel`), which Accelerate's multi-CPU (gloo) mode would not.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(
        cpu=not torch.cuda.is_available(),  # multi-process on CPU: gloo (accelerate's MULTI_CPU)
        mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.precision],
        dynamo_backend="no",
        log_with="tensorboard" if cfg.logging.tensorboard else None,
        project_dir=str(run_dir),
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=cfg.find_unused_parameters)
        ],
    )


def _as_output_dict(out: Any) -> dict[str, Any]:
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        return {**out[1], "loss": out[0]}
    if isinstance(out, dict) and "loss" in out:
        return out
    raise ValueError('the module must return a dict with a "loss" key or a (loss, info) pair')


def use_prefetch(setting: bool | None, device_type: str) -> bool:
    """Whether to build batches in a background thread: `train.prefetch`, or when it is None
    (auto) only on an accelerator (on CPU the thread takes cores from the compute threads)."""
    return setting if setting is not None else device_type != "cpu"


class _Prefetcher:
    """Builds the batch for a given sample range, the next one in a background thread."""

    def __init__(self, stream: SampleStream, enabled: bool):
        self.stream = stream
        self.pool = ThreadPoolExecutor(max_workers=1) if enabled else None
        self.pending: tuple[tuple[int, int], Future] | None = None

    def get(self, start: int, count: int, next_start: int | None) -> Any:
        key = (start, count)
        if self.pending is not None and self.pending[0] == key:
            batch = self.pending[1].result()
        else:
            batch = self.stream.batch(start, count)
        self.pending = None
        if self.pool is not None and next_start is not None:
            self.pending = (
                (next_start, count),
                self.pool.submit(self.stream.batch, next_start, count),
            )
        return batch

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _rng_untouched() -> Iterator[None]:
    state = ckpt.capture_rng_state()
    try:
        yield
    finally:
        ckpt.restore_rng_state(state)


class WeightAverage:
    """Exponential moving average (fp32) of a module's trainable parameters.

    The decay warms up as in Diffusion Policy and timm: at step n it is min(decay, (1+n)/(10+n)),
    so the early average follows the fast-moving weights instead of the initialisation.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.shadow = {n: p.detach().float().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Fold the current weights in, after optimizer step `step` (1-based)."""
        weight = 1 - min(self.decay, (1 + step) / (10 + step))
        for name, param in self.params.items():
            self.shadow[name].lerp_(param.detach().float(), weight)

    @torch.no_grad()
    def copy_to(self) -> None:
        """Put the average into the module's parameters."""
        for name, param in self.params.items():
            param.copy_(self.shadow[name])

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """The module holds the average inside the block, its own weights again after it."""
        with torch.no_grad():
            raw = {n: p.detach().clone() for n, p in self.params.items()}
            self.copy_to()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in self.params.items():
                    param.copy_(raw[name])


class Trainer:
    """Runs optimizer steps over a deterministic sample stream with checkpoints and spike guard."""

    def __init__(
        self,
        cfg: TrainerConfig,
        module: nn.Module,
        stream: SampleStream,
        run_dir: str | Path,
        *,
        accelerator: Any = None,
        count_tokens: Callable[[Any], int] | None = None,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        flops_per_token: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ):
        from fmmm.utils.seed import seed_everything

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "ckpt"
        self.accelerator = accelerator or make_accelerator(cfg, self.run_dir)
        acc = self.accelerator
        world = acc.num_processes
        if world > 1:
            parallel.close_process_group_at_exit()
        if cfg.batch_size % (cfg.grad_accum * world):
            raise ValueError(
                f"train.batch_size {cfg.batch_size} is not divisible by grad_accum x processes "
                f"= {cfg.grad_accum * world}"
            )
        self.micro_batch = cfg.batch_size // (cfg.grad_accum * world)
        self.stream = stream
        self.count_tokens = count_tokens
        self.evaluate_fn = evaluate
        self.flops_per_token = flops_per_token
        if optimizer is not None and cfg.distributed == "fsdp":
            raise ValueError("with train.distributed=fsdp the trainer builds the optimizer itself")
        self.skeleton = parallel.parallelize(
            module,
            cfg.distributed,
            cfg.fsdp,
            cfg.precision,
            cfg.compile_backend if cfg.compile else None,
        )
        self.sharded = self.skeleton is not None
        self.replicated = parallel.replicated_parameters(module) if self.sharded else []
        optimizer = optimizer or build_optimizer(module, cfg.optim)  # over the sharded parameters
        self.scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
        if self.sharded:
            self.module, self.optimizer = module, acc.prepare(optimizer)
        else:
            self.module, self.optimizer = acc.prepare(module, optimizer)
        self.peak_flops = cfg.peak_flops or device_peak_flops(acc.device, cfg.precision)
        self.ema = (
            WeightAverage(acc.unwrap_model(self.module), cfg.ema_decay) if cfg.ema_decay else None
        )
        self.guard = SpikeGuard(cfg.spike)
        self.step = 0
        self.data_offset = 0  # data step = step + data_offset (rollbacks skip data windows)
        self.tokens_seen = 0
        self.skipped_steps = 0
        self.rollbacks = 0
        self._preempted = False
        seed_everything(cfg.seed + acc.process_index)
        if acc.is_main_process:
            self.metrics_log = JsonlLog(self.run_dir / "metrics.jsonl")
            self.events_log = JsonlLog(self.run_dir / "events.jsonl")

    # ----------------------------------------------------------------- checkpoints
    def _trainer_state(self) -> dict[str, Any]:
        return {
            "data_offset": self.data_offset,
            "tokens_seen": self.tokens_seen,
            "skipped_steps": self.skipped_steps,
            "rollbacks": self.rollbacks,
            "spike_guard": self.guard.state_dict(),
        }

    def save_checkpoint(self) -> Path:
        """Write the checkpoint for the current step (all processes must call this)."""
        from accelerate.utils import gather_object

        acc = self.accelerator
        rng_states = gather_object([ckpt.capture_rng_state()])
        path = self.ckpt_dir / ckpt.step_dir_name(self.step)
        if self.sharded:
            ckpt.save_sharded_checkpoint(
                self.ckpt_dir,
                self.step,
                module=self.module,
                optimizer=self.optimizer.optimizer,
                scheduler=self.scheduler,
                trainer_state=self._trainer_state(),
                rng_states=rng_states,
                is_main=acc.is_main_process,
                barrier=acc.wait_for_everyone,
                keep=self.cfg.checkpoint.keep,
            )
            self._event("checkpoint", path=str(path))
        elif acc.is_main_process:
            ckpt.save_checkpoint(
                self.ckpt_dir,
                self.step,
                module=acc.unwrap_model(self.module),
                optimizer=self.optimizer.optimizer,
                scheduler=self.scheduler,
                trainer_state=self._trainer_state(),
                rng_states=rng_states,
                scaler=acc.scaler,
                keep=self.cfg.checkpoint.keep,
                ema=self.ema.shadow if self.ema is not None else None,
            )
            self._event("checkpoint", path=str(path))
        acc.wait_for_everyone()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore module, optimizer, scheduler, RNG, data position and counters from `path`."""
        acc = self.accelerator
        load = ckpt.load_sharded_checkpoint if ckpt.is_sharded(path) else ckpt.load_checkpoint
        extra = {"ema": self.ema.shadow} if self.ema is not None else {}
        if extra and ckpt.is_sharded(path):
            raise ValueError(
                f"checkpoint {path} is sharded (FSDP); train.ema_decay needs a full one"
            )
        state, rng_states = load(
            path,
            module=acc.unwrap_model(self.module),
            optimizer=self.optimizer.optimizer,
            scheduler=self.scheduler,
            scaler=acc.scaler,
            **extra,
        )
        self.step = int(state["step"])
        self.data_offset = int(state["data_offset"])
        self.tokens_seen = int(state["tokens_seen"])
        self.skipped_steps = int(state["skipped_steps"])
        self.rollbacks = int(state["rollbacks"])
        self.guard.load_state_dict(state["spike_guard"])
        ckpt.restore_rng_state(rng_states[acc.process_index % len(rng_states)])

    def _resume(self) -> None:
        import warnings

        resume = self.cfg.checkpoint.resume
        if self.accelerator.is_main_process:
            ckpt.remove_partial_checkpoints(self.ckpt_dir)
        self.accelerator.wait_for_everyone()
        path, problems = None, []
        if resume == "none":
            if ckpt.list_checkpoints(self.ckpt_dir):
                raise ValueError(
                    f"{self.ckpt_dir} already holds checkpoints; use checkpoint.resume=auto or a new run dir"
                )
        elif resume == "auto":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                path = ckpt.latest_valid_checkpoint(self.ckpt_dir)
            problems = [str(warning.message) for warning in caught]
        else:
            path = Path(resume)
        if path is not None:
            self.load_checkpoint(path)
        if self.accelerator.is_main_process:
            # rows past the resume point (all of them when starting over) belong to steps that
            # are trained again; without them every step appears once
            last_kept = self.step if path is not None else -1
            self.metrics_log.truncate_after(last_kept)
            self.events_log.truncate_after(last_kept)
        for message in problems:
            warnings.warn(message, stacklevel=3)
            self._event("corrupt_checkpoint", message=message)
        if path is not None:
            self._event("resume", path=str(path))

    # ----------------------------------------------------------------- logging
    def _event(self, kind: str, **fields: Any) -> None:
        if not self.accelerator.is_main_process:
            return
        row = {"event": kind, "step": self.step, "time": time.time(), **fields}
        self.events_log.write(row)
        if kind not in ("checkpoint", "eval"):
            from tqdm.auto import tqdm

            tqdm.write(
                f"[step {self.step}] {kind}: " + ", ".join(f"{k}={v}" for k, v in fields.items())
            )

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._preempted = True

    def _preemption_requested(self) -> bool:
        flag = self._preempted
        if self.accelerator.num_processes > 1:
            tensor = torch.tensor([float(flag)], device=self.accelerator.device)
            flag = bool(self.accelerator.reduce(tensor, "max").item())
        return flag

    # ----------------------------------------------------------------- one step
    def _sample_start(self, data_step: int, micro: int) -> int:
        acc = self.accelerator
        per_micro = self.cfg.batch_size // self.cfg.grad_accum
        return (
            data_step * self.cfg.batch_size
            + micro * per_micro
            + acc.process_index * self.micro_batch
        )

    def _forward_backward(self, prefetcher: _Prefetcher) -> tuple[dict[str, float], int]:
        from accelerate.utils import send_to_device

        acc, accum = self.accelerator, self.cfg.grad_accum
        data_step = self.step + self.data_offset
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        tokens = 0
        self.module.train()
        for micro in range(accum):
            start = self._sample_start(data_step, micro)
            following = self._sample_start(data_step + (micro + 1) // accum, (micro + 1) % accum)
            batch = prefetcher.get(start, self.micro_batch, following)
            tokens += self.count_tokens(batch) if self.count_tokens else self.micro_batch
            batch = send_to_device(batch, acc.device)
            sync = contextlib.nullcontext()
            if micro < accum - 1:
                sync = (
                    parallel.no_gradient_sync(self.module)
                    if self.sharded
                    else acc.no_sync(self.module)
                )
            with sync:
                with acc.autocast():
                    out = _as_output_dict(self.module(batch))
                loss = out["loss"]
                if loss.ndim != 0:
                    raise ValueError(
                        f"the module's loss must be a scalar, got shape {tuple(loss.shape)}"
                    )
                acc.backward(loss / accum)
            for key, value in out.items():
                if isinstance(value, torch.Tensor) and value.numel() != 1:
                    continue
                if not isinstance(value, torch.Tensor | float | int):
                    continue
                value = torch.as_tensor(value, dtype=torch.float32).detach().reshape(())
                sums[key] = sums.get(key, 0.0) + value.to(acc.device, torch.float32)
                counts[key] = counts.get(key, 0) + 1
        return self._mean_over_processes(sums, counts), self._sum_over_processes(tokens)

    def _mean_over_processes(
        self, sums: dict[str, torch.Tensor], counts: dict[str, int]
    ) -> dict[str, float]:
        """Mean of each logged scalar over the micro-steps and processes that reported it."""
        acc = self.accelerator
        keys = sorted(sums)
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            keys = sorted(set().union(*gather_object([keys])))  # a batch may lack a modality
        totals = torch.stack(
            [
                torch.as_tensor(sums.get(k, 0.0), dtype=torch.float32, device=acc.device)
                for k in keys
            ]
            + [torch.tensor(float(counts.get(k, 0)), device=acc.device) for k in keys]
        )
        if acc.num_processes > 1:
            totals = acc.reduce(totals, "sum")
        values, numbers = totals[: len(keys)], totals[len(keys) :]
        return dict(zip(keys, (values / numbers.clamp(min=1)).tolist()))

    def _sum_over_processes(self, count: int) -> int:
        acc = self.accelerator
        if acc.num_processes == 1:
            return count
        return int(acc.reduce(torch.tensor([count], device=acc.device), "sum").item())

    def _grad_norm(self) -> float:
        params = [p for p in self.module.parameters() if p.requires_grad]
        clip = self.cfg.optim.grad_clip or math.inf
        if self.sharded:
            parallel.sync_replicated(self.replicated)
            return parallel.clip_grad_norm_(params, clip)
        return float(self.accelerator.clip_grad_norm_(params, clip))

    def _rollback(self) -> None:
        path = ckpt.latest_valid_checkpoint(self.ckpt_dir)
        if path is None:
            raise RuntimeError(
                "loss spikes persist and there is no valid checkpoint to roll back to"
            )
        if self.rollbacks >= self.cfg.spike.max_rollbacks:
            raise RuntimeError(f"loss spikes persist after {self.rollbacks} rollbacks; giving up")
        next_data_step = self.step + self.data_offset  # just after the spiking window
        rollbacks, skipped = self.rollbacks + 1, self.skipped_steps
        from_step = self.step
        self.load_checkpoint(path)
        first_skipped = self.step + self.data_offset
        self.rollbacks, self.skipped_steps = rollbacks, skipped
        self.data_offset = next_data_step - self.step
        self._event(
            "rollback",
            from_step=from_step,
            path=str(path),
            skipped_data_steps=f"{first_skipped}..{next_data_step - 1}",
        )

    def _train_step(self, prefetcher: _Prefetcher) -> dict[str, Any]:
        started = time.perf_counter()
        scalars, tokens = self._forward_backward(prefetcher)
        grad_norm = self._grad_norm()
        loss = scalars["loss"]
        reason = self.guard.check(loss, grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        if reason is None:
            self.optimizer.step()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.step + 1)
        elif self.accelerator.scaler is not None:
            self.accelerator.scaler.update()  # clears the unscale record; shrinks the scale on inf
        self.optimizer.zero_grad(set_to_none=True)
        rollback = self.guard.update(loss, grad_norm, spike=reason is not None)
        self.step += 1
        self.tokens_seen += tokens
        seconds = time.perf_counter() - started
        row = {**scalars, "step": self.step, "lr": lr, "grad_norm": grad_norm, "tokens": tokens}
        row.update(
            seconds=seconds,
            tokens_per_second=tokens / max(seconds, 1e-9),
            skipped=reason is not None,
        )
        if self.accelerator.is_main_process:
            self.metrics_log.write(row)
        if reason is not None:
            self.skipped_steps += 1
            self._event("skip", data_step=self.step - 1 + self.data_offset, reason=reason)
            if rollback:
                self._rollback()
        return row

    # ----------------------------------------------------------------- eval
    def evaluate(self) -> dict[str, float]:
        """Run `evaluate` on the main process (on every process when sharded: its forward passes
        gather the weights); log and return its metrics."""
        main = self.accelerator.is_main_process
        if self.evaluate_fn is None or not (main or self.sharded):
            self.accelerator.wait_for_everyone()
            return {}
        model = self.accelerator.unwrap_model(self.module)
        was_training = model.training
        model.eval()
        gathered = parallel.gathered_root(model) if self.sharded else contextlib.nullcontext()
        averaged = self.ema.applied() if self.ema is not None else contextlib.nullcontext()
        with _rng_untouched(), torch.no_grad(), gathered, averaged:
            metrics = {f"eval/{k}": float(v) for k, v in self.evaluate_fn(model).items()}
        model.train(was_training)
        if main:
            self._event("eval", **metrics)
            self.accelerator.log(metrics, step=self.step)
        self.accelerator.wait_for_everyone()
        return metrics if main else {}

    # ----------------------------------------------------------------- the loop
    def train(self) -> TrainResult:
        """Train to `cfg.steps` (resuming if asked); return the run's figures."""
        from fmmm.utils.progress import progress

        acc, cfg = self.accelerator, self.cfg
        self._start()
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        prefetcher = _Prefetcher(self.stream, use_prefetch(cfg.prefetch, acc.device.type))
        bar = progress(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            disable=not (cfg.logging.progress and acc.is_main_process),
            dynamic_ncols=True,
        )
        started = time.perf_counter()
        train_seconds, train_tokens = 0.0, 0
        row: dict[str, Any] = {}
        eval_metrics: dict[str, float] = {}
        status = "completed"
        try:
            while self.step < cfg.steps:
                if self._preemption_requested():
                    status = "preempted"
                    self._event("preempted", message="SIGTERM: checkpoint written, exiting")
                    break
                row = self._train_step(prefetcher)
                train_seconds += row["seconds"]
                train_tokens += row["tokens"]
                self._log_step(row, train_tokens / max(train_seconds, 1e-9), bar)
                if self.step < cfg.steps:
                    if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0:
                        self.save_checkpoint()
                    if cfg.eval_every and self.step % cfg.eval_every == 0:
                        eval_metrics = self.evaluate()
            self.save_checkpoint()
            if status == "completed":
                eval_metrics = self.evaluate()
                if self.ema is not None:
                    self.ema.copy_to()  # the trained module is the average
            if self.sharded:
                self._consolidate()
        finally:
            bar.close()
            prefetcher.close()
            signal.signal(signal.SIGTERM, previous)
            if cfg.logging.tensorboard:
                acc.end_training()
        tokens_per_second = train_tokens / max(train_seconds, 1e-9)
        return TrainResult(
            step=self.step,
            status=status,
            metrics={
                k: v
                for k, v in row.items()
                if isinstance(v, float | int) and not isinstance(v, bool)
            },
            eval_metrics=eval_metrics,
            tokens_per_second=tokens_per_second,
            mfu=self._mfu(tokens_per_second),
            wall_seconds=time.perf_counter() - started,
            skipped_steps=self.skipped_steps,
            rollbacks=self.rollbacks,
        )

    def _start(self) -> None:
        """Trackers, resume, and for a fresh run a first checkpoint (the first rollback target)."""
        if self.cfg.logging.tensorboard:
            self.accelerator.init_trackers("tensorboard")
        self._resume()
        if not ckpt.list_checkpoints(self.ckpt_dir):
            self.save_checkpoint()
            if self.cfg.eval_at_start:
                self.evaluate()

    def _consolidate(self) -> None:
        """Replace the sharded module on the main process by an unsharded one with full weights."""
        plain = parallel.consolidate(self.module, self.skeleton)
        if plain is not None:
            self.module = plain.to(self.accelerator.device)

    def _mfu(self, tokens_per_second: float) -> float | None:
        if not self.flops_per_token:
            return None
        peak = self.peak_flops * self.accelerator.num_processes
        return mfu(tokens_per_second, self.flops_per_token, peak)

    def _log_step(self, row: dict[str, Any], tokens_per_second: float, bar: Any) -> None:
        """TensorBoard scalars every `logging.every` steps; the bar follows the step."""
        if self.step % self.cfg.logging.every == 0 or self.step == self.cfg.steps:
            logged = {k: v for k, v in row.items() if k not in ("step", "skipped", "seconds")}
            logged["tokens_per_second"] = tokens_per_second
            if self.flops_per_token:
                logged["mfu"] = self._mfu(tokens_per_second)
            self.accelerator.log(
                {f"train/{k}": float(v) for k, v in logged.items()}, step=self.step
            )
            bar.set_postfix(
                loss=f"{row['loss']:.4f}", tok_s=f"{tokens_per_second:.0f}", refresh=False
            )
        bar.update(self.step - bar.n)  # a rollback moves the step back; redraws respect mininterval
