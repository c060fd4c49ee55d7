"""Run kinds for `python -m fmmm.train`: the config's top-level `kind` picks a runner by name.

Each kind is a recipe module in this package with a `run(config_path, overrides)` function; it
loads its own typed config (which must accept the `kind` key), builds the module and data, and calls
`Trainer.train()`. A recipe module is imported only when its kind is asked for, and never imports
this file back.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from fmmm.config import ConfigError, read_yaml

RECIPES = {
    "pretrain": "fmmm.train.pretrain",
    "vla": "fmmm.train.vla",
    "sft": "fmmm.train.posttrain",
    "dpo": "fmmm.train.posttrain",
}

DEFAULT_KIND = "pretrain"


def config_kind(path: str | Path, overrides: list[str]) -> str:
    """The `kind` a config file (after `kind=...` overrides) asks for; `pretrain` when absent."""
    path = Path(path)
    loaded = read_yaml(path)
    kind = loaded.get("kind", DEFAULT_KIND) if hasattr(loaded, "get") else DEFAULT_KIND
    for item in overrides:
        if item.startswith("kind="):
            kind = item.split("=", 1)[1]
    if not isinstance(kind, str) or kind not in RECIPES:
        raise ConfigError(f"{path}: unknown kind {kind!r}; known: {', '.join(sorted(RECIPES))}")
    return kind


def run(path: str | Path, overrides: list[str]) -> object:
    """Load the runner for the config's kind and run it."""
    kind = config_kind(path, overrides)
    try:
        recipe = importlib.import_module(RECIPES[kind])
    except ModuleNotFoundError as exc:
        raise ConfigError(f"kind {kind!r} is not available: {exc}") from None
    return recipe.run(str(path), list(overrides))
