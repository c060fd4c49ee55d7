"""Typed configs: dataclasses loaded from YAML with dotted command-line overrides (OmegaConf).

    cfg = load_config(TrainConfig, "configs/pretrain/tiny.yaml", ["model.width=256"])

Every failure (missing file, unknown key, wrong type, invalid value) raises `ConfigError` with a
one-line message that names the offending file or key; entry points print it and exit with 2.
Validation of values lives in each dataclass's `__post_init__` (raise `ValueError` there).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
# attribute of a loaded config: {dotted key: "${oc.env:...}" as written} for the keys it resolved
ENV_INTERPOLATIONS = "_env_interpolations"


class ConfigError(ValueError):
    """A config could not be loaded; the message is one line naming the file or key."""


def _one_line(exc: BaseException) -> str:
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(exc, OmegaConfBaseException):
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        key = getattr(exc, "full_key", None)
        if key and key not in msg:
            msg = f"{key}: {msg}"
        return msg
    return " ".join(str(exc).split())


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML config file into an untyped OmegaConf node; errors name the file."""
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:  # yaml errors come in several types
        raise ConfigError(f"cannot parse config file {path}: {_one_line(exc)}") from None
    return OmegaConf.create({}) if loaded is None else loaded


def load_config(
    schema: type[T],
    path: str | os.PathLike | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> T:
    """Build a `schema` dataclass from defaults, then the YAML file at `path`, then `overrides`."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"{schema!r} is not a dataclass")
    try:
        merged = OmegaConf.structured(schema)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"invalid config schema {schema.__name__}: {_one_line(exc)}") from None
    if path is not None:
        path = Path(path)
        loaded = read_yaml(path)
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path}: a config is a mapping of keys to values, not a list")
        _refuse_renamed(flatten(OmegaConf.to_container(loaded, resolve=False)), schema, path)
        try:
            merged = OmegaConf.merge(merged, loaded)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{path}: {_one_line(exc)}") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        _refuse_renamed([item.split("=", 1)[0]], schema, f"override {item!r}")
        try:
            merged = _apply_override(merged, item)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"override {item!r}: {_one_line(exc)}") from None
    try:
        _refuse_non_finite(merged)
        cfg = OmegaConf.to_object(merged)
        env = {
            key: value
            for key, value in flatten(OmegaConf.to_container(merged, resolve=False)).items()
            if isinstance(value, str) and "${oc.env:" in value
        }
        if env:  # saved configs write these as given, never the values (tokens, private paths)
            object.__setattr__(cfg, ENV_INTERPOLATIONS, env)
        return cfg
    except ConfigError:
        raise
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc)) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid value: {_one_line(exc)}") from None


def _apply_override(merged: Any, item: str) -> Any:
    """`merged` with the override `key=value` applied. A mapping given for a free-form mapping
    (such as `data.task_weights={}`) replaces it, as the command line means; for a section of the
    schema, its keys are merged in (`model.backbone={dim: 64}` sets dim and keeps the rest)."""
    from omegaconf import DictConfig, OmegaConf

    parsed = OmegaConf.from_dotlist([item])
    key = item.split("=", 1)[0].strip()
    value = OmegaConf.select(parsed, key)
    node = OmegaConf.select(merged, key, throw_on_missing=False)
    if (
        isinstance(value, DictConfig)
        and isinstance(node, DictConfig)
        and OmegaConf.get_type(node) is dict
    ):
        OmegaConf.update(merged, key, value, merge=False)
        return merged
    return OmegaConf.merge(merged, parsed)


def _refuse_non_finite(merged: Any) -> None:
    """No config value is meant to be NaN or infinite (`lr: inf` would fail much later)."""
    import math

    from omegaconf import OmegaConf

    for key, value in flatten(OmegaConf.to_container(merged, resolve=True)).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: {value} is not a finite number")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1} (an empty dict is a leaf)."""
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _refuse_renamed(keys: Any, schema: type, where: str) -> None:
    """A one-line error for a key that the schema's `RENAMED` table ({old: new}) says has moved."""
    for key in keys:
        for old, new in getattr(schema, "RENAMED", {}).items():
            if key == old or key.startswith(old + "."):
                raise ConfigError(f"{where}: {old!r} is now {new!r}; rename it")


def migrate(tree: dict, schema: type) -> dict[str, Any]:
    """A saved config, flattened, with the keys its schema renamed under their new names."""
    renamed = getattr(schema, "RENAMED", {})
    return {renamed.get(key, key): value for key, value in flatten(tree).items()}


def _with_env_unresolved(cfg: Any) -> Any:
    """`cfg` as an OmegaConf node whose `${oc.env:...}` keys hold the interpolation again."""
    from omegaconf import OmegaConf

    node = OmegaConf.structured(cfg)
    for key, text in getattr(cfg, ENV_INTERPOLATIONS, {}).items():
        OmegaConf.update(node, key, text, merge=False)
    return node


def config_to_dict(cfg: Any, resolve_env: bool = True) -> dict:
    """Plain-dict view of a config dataclass (for JSON/YAML output).

    `resolve_env=False` keeps `${oc.env:...}` interpolations of a loaded config as written (for
    what is saved to disk).
    """
    from omegaconf import OmegaConf

    if resolve_env:
        return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    return OmegaConf.to_container(_with_env_unresolved(cfg), resolve=False)


def config_to_yaml(cfg: Any) -> str:
    """YAML of a config dataclass, `${oc.env:...}` interpolations as written, not their values."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(_with_env_unresolved(cfg))


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the config as YAML, atomically (every run does this beside its outputs); values from
    the environment stay `${oc.env:...}` interpolations."""
    from fmmm.utils.io import atomic_write_text

    atomic_write_text(path, config_to_yaml(cfg))


def split_cli(argv: list[str]) -> tuple[str | None, list[str]]:
    """Split `CONFIG [key=value ...]` command lines into the config path and the overrides."""
    path = None
    overrides = []
    for arg in argv:
        if "=" in arg:
            overrides.append(arg)
        elif path is None:
            path = arg
        else:
            raise ConfigError(
                f"unexpected argument {arg!r}: give one config file, then key=value overrides"
            )
    return path, overrides
