"""Run kinds for `python -m fmmm.train`: the config's top-level `kind` picks a runner by name.

A runner is `run(config_path, overrides) -> TrainResult`; it loads its own typed config (which must
accept the `kind` key), builds the module and data, and calls `Trainer.train()`. Modules register
with `@RUNNERS.register("<kind>")` and are imported only when their kind is asked for.
"""

from __future__ import annotations

from pathlib import Path

from fmmm.config import ConfigError, read_yaml
from fmmm.registry import Registry

RUNNERS = Registry("training run kind")
RUNNERS.lazy("pretrain", "fmmm.train.pretrain")
RUNNERS.lazy("vla", "fmmm.policies.train_vla")
RUNNERS.lazy("sft", "fmmm.policies.posttrain")
RUNNERS.lazy("dpo", "fmmm.policies.posttrain")

DEFAULT_KIND = "pretrain"


def config_kind(path: str | Path, overrides: list[str]) -> str:
    """The `kind` a config file (after `kind=...` overrides) asks for; `pretrain` when absent."""
    path = Path(path)
    loaded = read_yaml(path)
    kind = loaded.get("kind", DEFAULT_KIND) if hasattr(loaded, "get") else DEFAULT_KIND
    for item in overrides:
        if item.startswith("kind="):
            kind = item.split("=", 1)[1]
    if not isinstance(kind, str) or kind not in RUNNERS:
        raise ConfigError(f"{path}: unknown kind {kind!r}; known: {', '.join(RUNNERS.names())}")
    return kind


def run(path: str | Path, overrides: list[str]) -> object:
    """Load the runner for the config's kind and run it."""
    kind = config_kind(path, overrides)
    try:
        runner = RUNNERS.get(kind)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"kind {kind!r} is not available: {exc}") from None
    return runner(str(path), list(overrides))
