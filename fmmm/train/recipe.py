"""What every training recipe does around `Trainer.train()`, written once.

    run = Run(cfg)                 # accelerator, resume guard, out_dir/config.yaml, seeding
    dataset = run.main_first(lambda: collect_or_open(...))
    ...                            # build the module and stream, then Trainer(..., run.accelerator)
    run.finish(result, {...})      # out_dir/summary.json with the common header

A recipe config has `kind`, `out_dir` and `train` (a `TrainerConfig`); recipes that start from a
model also have `model` (a `MultimodalConfig`, used as is) and `init` (an `InitConfig`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from fmmm.config import config_to_dict, flatten, save_config
from fmmm.utils.io import atomic_write_json, check_output_dir

T = TypeVar("T")
RUN_FILES = ("config.yaml", "ckpt", "metrics.jsonl")  # what marks a folder as a run's out_dir
# `python -m fmmm.train --overwrite`: a non-empty out_dir that holds no run may be written into
# (its other files are kept; the run's own files replace any of the same name, atomically).
OVERWRITE = {"allowed": False}
INIT_MODES = ("scratch", "pretrained", "pretrained_shape")
# Config keys that may change when a run resumes from its checkpoints (prefixes end with ".").
RESUMABLE_KEYS = ("train.steps", "train.eval_every", "train.prefetch", "train.checkpoint.every",
                  "train.checkpoint.keep", "train.logging.", "train.compile", "train.compile_backend",
                  "data.workers", "eval.")  # fmt: skip


@dataclass
class InitConfig:
    """A recipe's starting weights: fresh ones of the config's `model`, or a pretrained folder."""

    # scratch: a fresh model of the recipe's `model` config; pretrained: the weights in
    # `pretrained`; pretrained_shape: the pretrained architecture with fresh weights (the control).
    mode: str = "scratch"
    pretrained: str = ""  # folder written by MultimodalModel.save_pretrained
    if_missing: str = "error"  # pretrained folder absent: error | scratch | pretrain
    pretrain_config: str = ""  # with if_missing=pretrain: the pretraining config to run first
    pretrain_overrides: list[str] = field(default_factory=list)  # "key=value" for that config

    def __post_init__(self) -> None:
        if self.mode not in INIT_MODES:
            raise ValueError(f"init.mode must be one of {INIT_MODES}, got {self.mode!r}")
        if self.if_missing not in ("error", "scratch", "pretrain"):
            raise ValueError(
                f"init.if_missing must be error, scratch or pretrain, got {self.if_missing!r}"
            )
        if self.mode != "scratch" and not self.pretrained:
            raise ValueError(f"init.mode={self.mode} needs init.pretrained (a model folder)")
        if self.if_missing == "pretrain" and not self.pretrain_config:
            raise ValueError("init.if_missing=pretrain needs init.pretrain_config")


@dataclass
class RunResult:
    """What `python -m fmmm.train` reads back: the status and the run summary."""

    status: str
    summary: dict[str, Any]


def check_resumable(cfg: Any, out_dir: Path, allowed: tuple[str, ...] = RESUMABLE_KEYS) -> None:
    """Refuse an out_dir whose checkpoints belong to a run with another config.

    The trainer resumes from the newest checkpoint in out_dir/ckpt; one written under other settings
    (a changed model or data) would be resumed as if it were this run's. Keys in `allowed` (exact,
    or prefixes ending in ".") may change, so a run can be resumed with more steps.
    """
    from omegaconf import OmegaConf

    from fmmm.config import migrate, read_yaml
    from fmmm.train import checkpoint as ckpt

    saved = out_dir / "config.yaml"
    if not saved.is_file() or not ckpt.list_checkpoints(out_dir / "ckpt"):
        return
    before = migrate(OmegaConf.to_container(read_yaml(saved), resolve=True), type(cfg))
    now = flatten(config_to_dict(cfg))
    differ = sorted(
        key
        for key in before.keys() | now.keys()
        if before.get(key) != now.get(key)
        and not any(key == a or (a.endswith(".") and key.startswith(a)) for a in allowed)
    )
    if differ:
        raise ValueError(
            f"{out_dir} holds checkpoints of a run with another config ({', '.join(differ[:5])} "
            "differ); use another out_dir or delete that one"
        )


class Run:
    """One recipe run: its accelerator, main-process-only writes, and the summary."""

    def __init__(self, cfg: Any):
        from fmmm.train.trainer import make_accelerator

        self.cfg = cfg
        self.out_dir = Path(cfg.out_dir)
        # a run resumes into its own out_dir; a non-empty folder holding no run is someone's data
        check_output_dir(self.out_dir, overwrite=OVERWRITE["allowed"], own_markers=RUN_FILES)
        self.started = time.perf_counter()
        self.accelerator = make_accelerator(cfg.train, self.out_dir)
        check_resumable(cfg, self.out_dir)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out_dir / "config.yaml")
        self.accelerator.wait_for_everyone()
        self.seed()

    def seed(self) -> None:
        from fmmm.utils.seed import seed_everything

        seed_everything(self.cfg.train.seed)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def main_first(self, make: Callable[[], T]) -> T:
        """`make()` on the main process first (it may write files), then on the others.

        Seeds again afterwards, so what follows does not depend on whether `make()` found its
        data on disk or produced it.
        """
        if self.is_main:
            result = make()
        self.accelerator.wait_for_everyone()
        result = result if self.is_main else make()
        self.seed()
        return result

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def finish(self, result: Any, summary: dict[str, Any]) -> RunResult:
        """Write out_dir/summary.json (main process): the common header, then `summary`."""
        cfg, out_dir = self.cfg, str(self.out_dir)
        full = {"kind": cfg.kind, "out_dir": out_dir, "status": result.status, "steps": result.step,
                "final_metrics": result.metrics, **summary, "total_seconds": self.elapsed(),
                "config": config_to_dict(cfg, resolve_env=False)}  # fmt: skip
        if self.is_main:  # no barrier: the trainer has ended the process group
            atomic_write_json(self.out_dir / "summary.json", full)
        return RunResult(result.status, full)


def policy_run(path: str | Path) -> Path | None:
    """`path` when it is a trained policy's run directory (policy.json beside a saved model)."""
    path = Path(path)
    if (path / "policy.json").is_file() and (path / "model" / "config.json").is_file():
        return path
    return None


def pretrained_dir(init: InitConfig) -> Path | None:
    """The pretrained model folder to start from, pretraining it first if the config says so.

    `init.pretrained` may be a model folder or a trained policy's run directory (its `model/`).
    """
    if init.mode == "scratch":
        return None
    path = Path(init.pretrained)
    if (path / "config.json").is_file():
        return path
    if policy_run(path) is not None:
        return path / "model"
    if init.if_missing == "scratch":
        print(f"no pretrained model at {path}: training from scratch (init.if_missing=scratch)")
        return None
    if init.if_missing == "pretrain":
        from fmmm.train.runners import run

        run(init.pretrain_config, list(init.pretrain_overrides))
        if (path / "config.json").is_file():
            return path
        raise ValueError(f"pretraining {init.pretrain_config} did not write a model to {path}")
    raise ValueError(f"no pretrained model at {path} (set init.if_missing to scratch or pretrain)")


def start_model(
    init: InitConfig, config: Any, state_dim: int | None = None
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(model, its tokenizers by name, origin) a recipe adapts.

    From scratch: a fresh model of `config` with the default text tokenizer. From a pretrained
    folder: its own config, weights and tokenizers (`config` is not used). `state_dim` (when given)
    replaces the state encoder width; a pretrained state encoder of another width starts fresh.
    """
    from fmmm.models.factory import builder_tokenizers, load_model_and_builder
    from fmmm.models.multimodal import MultimodalModel
    from fmmm.tokenizers.text import default_text_tokenizer

    source = pretrained_dir(init)
    if source is None:
        if state_dim is not None:
            config = replace(config, state_dim=state_dim)
        text = default_text_tokenizer(config.text_vocab_size)
        return MultimodalModel(config), {"text": text}, {"init": "scratch"}
    pretrained, builder = load_model_and_builder(source)
    tokenizers = builder_tokenizers(builder)
    config, state = pretrained.config, pretrained.state_dict()
    if state_dim is not None and state_dim != config.state_dim:
        state = {k: v for k, v in state.items() if not k.startswith("encoders.state.")}
        config = replace(config, state_dim=state_dim)
        tokenizers.pop("state", None)
    model = MultimodalModel(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.startswith("encoders.state.") for key in missing):
        raise ValueError(f"{source} does not match its own config ({missing + unexpected})")
    if init.mode == "pretrained_shape":
        model = MultimodalModel(config)
    origin = {"init": init.mode, "pretrained": str(source), "new_modules": sorted(missing)}
    return model, tokenizers, origin
