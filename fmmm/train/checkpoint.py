"""Training checkpoints: safetensors + JSON (no pickle), written atomically with a checksum manifest.

Layout of `<run_dir>/ckpt/step_000100/`:

    model.safetensors        the trained module's state (shared tensors stored once)
    optimizer.safetensors    optimizer state tensors, keyed "state.<param index>.<name>"
    optimizer.json           param groups and non-tensor optimizer state
    scheduler.json           LR scheduler state (and the fp16 grad scaler's, if any)
    rng.safetensors/.json    torch, CUDA, NumPy and Python RNG states of every process
    trainer.json             step, data position, spike-guard history, counters
    manifest.json            sha256 of every file above; written last

A sharded (FSDP) run writes `state/` instead of the two `*.safetensors` weight files: a
`torch.distributed.checkpoint` folder (`.metadata` plus one `.distcp` file per process) holding the
model and optimizer state by parameter name, so it loads on any number of processes (DCP reshards).
Every process writes its shard into the same temporary folder, which the main process renames once
the manifest (listing every shard's checksum) is written; the manifest's `layout` says which kind.

`resume=auto` picks the newest checkpoint whose manifest checks out and warns about corrupt ones.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from fmmm.utils.io import atomic_dir, swap_in

MANIFEST = "manifest.json"
EMA_FILE = "ema.safetensors"  # the exponential moving average of the weights, when trained with one
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{6,})$")
_COMMON = ("scheduler.json", "rng.safetensors", "rng.json", "trainer.json")
_REQUIRED = ("model.safetensors", "optimizer.safetensors", "optimizer.json", *_COMMON)
SHARDED_STATE = "state"
_REQUIRED_SHARDED = (f"{SHARDED_STATE}/.metadata", *_COMMON)


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def capture_rng_state() -> dict[str, Any]:
    """This process's torch/CUDA/NumPy/Python RNG states as tensors and JSON values."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy": {
            "kind": np_kind,
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{index}"] = cuda_state
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_info = state["numpy"]
    np.random.set_state(
        (
            np_info["kind"],
            state["numpy_keys"].numpy().astype(np.uint32),
            np_info["pos"],
            np_info["has_gauss"],
            np_info["gauss"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    # by device number: lexical order would put "cuda10" before "cuda2"
    cuda_keys = sorted((k for k in state if k.startswith("cuda")), key=lambda k: int(k[4:]))
    cuda_states = [state[k] for k in cuda_keys]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])


def _split_rng_states(states: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {}
    for rank, state in enumerate(states):
        meta[str(rank)] = {"numpy": state["numpy"], "python": state["python"]}
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"rank{rank}.{key}"] = value.contiguous()
    return tensors, meta


def _join_rng_states(tensors: dict[str, torch.Tensor], meta: dict) -> list[dict[str, Any]]:
    states = []
    for rank in range(len(meta)):
        state: dict[str, Any] = dict(meta[str(rank)])
        prefix = f"rank{rank}."
        for key, value in tensors.items():
            if key.startswith(prefix):
                state[key[len(prefix) :]] = value
        states.append(state)
    return states


def _optimizer_to_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state_dict = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _optimizer_from_files(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def save_checkpoint(
    root: str | Path,
    step: int,
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    scaler: Any = None,
    keep: int = 0,
    ema: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write checkpoint `step` under `root` atomically; then keep only the newest `keep` (0: all).

    `ema`: the moving average of the weights by parameter name, stored beside them."""
    root = Path(root)
    target = root / step_dir_name(step)
    with atomic_dir(target) as tmp:
        save_model(module, str(tmp / "model.safetensors"))
        opt_tensors, opt_meta = _optimizer_to_files(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        _write_json(tmp / "optimizer.json", opt_meta)
        _write_common(tmp, step, scheduler, scaler, trainer_state, rng_states)
        names = list(_REQUIRED)
        if ema is not None:
            save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / EMA_FILE))
            names.append(EMA_FILE)
        _write_manifest(tmp, step, "full", names)
    _prune(root, keep, target)
    return target


def _write_common(
    tmp: Path,
    step: int,
    scheduler: Any,
    scaler: Any,
    trainer_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
) -> None:
    sched = {"scheduler": scheduler.state_dict() if scheduler is not None else None}
    if scaler is not None:
        sched["scaler"] = scaler.state_dict()
    _write_json(tmp / "scheduler.json", sched)
    rng_tensors, rng_meta = _split_rng_states(rng_states)
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    _write_json(tmp / "rng.json", rng_meta)
    _write_json(tmp / "trainer.json", {**trainer_state, "step": step})


def _write_manifest(tmp: Path, step: int, layout: str, names: list[str]) -> None:
    files = {name: sha256_file(tmp / name) for name in names}
    manifest = {"format": FORMAT_VERSION, "layout": layout, "step": step, "files": files}
    _write_json(tmp / MANIFEST, manifest)


def _prune(root: Path, keep: int, written: Path) -> None:
    """Keep the newest `keep` valid checkpoints, `written` (just saved) among them; delete older
    folders. Corrupt folders do not count, so they never push a valid checkpoint out."""
    if keep <= 0:
        return
    _VERIFIED.add(_manifest_key(written))  # its manifest was just computed from its files
    valid = 0
    for path in list_checkpoints(root):
        if valid >= keep:
            shutil.rmtree(path, ignore_errors=True)
        elif is_valid(path):
            valid += 1


# (folder, manifest mtime) of checkpoints whose checksums matched in this process: a checkpoint
# is never modified once renamed into place, so each is hashed at most once per process
_VERIFIED: set[tuple[str, int]] = set()


def _manifest_key(path: Path) -> tuple[str, int]:
    return str(path.resolve()), (path / MANIFEST).stat().st_mtime_ns


def is_valid(path: str | Path) -> bool:
    """Whether the checkpoint at `path` checks out (`checkpoint_problem` is None)."""
    path = Path(path)
    try:
        key = _manifest_key(path)
    except OSError:
        return False
    if key in _VERIFIED:
        return True
    if checkpoint_problem(path) is not None:
        return False
    _VERIFIED.add(key)
    return True


def save_sharded_checkpoint(
    root: str | Path,
    step: int,
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    is_main: bool,
    barrier: Any,
    keep: int = 0,
) -> Path:
    """Write checkpoint `step` of a sharded module with DCP; every process calls it.

    `barrier()` synchronises the processes (the accelerator's `wait_for_everyone`).
    """
    import torch.distributed.checkpoint as dcp

    root = Path(root)
    target = root / step_dir_name(step)
    tmp = root / f".{target.name}.tmp"  # one name every process knows
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    # get_state_dict would create an optimizer state before the first step (a zero-lr step that
    # still counts); a fresh optimizer is saved as "no state" instead
    has_optimizer_state = bool(optimizer.state)
    state = _state_by_name(module, optimizer if has_optimizer_state else None)
    dcp.save(state, checkpoint_id=tmp / SHARDED_STATE)
    if is_main:
        try:
            trainer_state = {**trainer_state, "optimizer_state": has_optimizer_state}
            _write_common(tmp, step, scheduler, None, trainer_state, rng_states)
            shards = sorted(
                str(f.relative_to(tmp)) for f in (tmp / SHARDED_STATE).rglob("*") if f.is_file()
            )
            _write_manifest(tmp, step, "sharded", [*shards, *_COMMON])
            swap_in(tmp, target)  # rewritten after a rollback: never leave no checkpoint behind
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _prune(root, keep, target)
    barrier()
    return target


def _state_by_name(
    module: torch.nn.Module, optimizer: torch.optim.Optimizer | None
) -> dict[str, Any]:
    """Model (and optimizer) state keyed by parameter name, sharded as the module is."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(module)}
    model_state, optimizer_state = get_state_dict(module, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def is_sharded(path: str | Path) -> bool:
    """Whether the checkpoint at `path` was written by a sharded (FSDP) run."""
    manifest = Path(path) / MANIFEST
    return manifest.is_file() and json.loads(manifest.read_text()).get("layout") == "sharded"


def load_sharded_checkpoint(
    path: str | Path,
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load a sharded checkpoint into `module` (sharded over any number of processes, or not)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    path = Path(path)
    _require_usable(path)
    trainer_state = json.loads((path / "trainer.json").read_text())
    with_optimizer = optimizer is not None and trainer_state.get("optimizer_state", True)
    state = _state_by_name(module, optimizer if with_optimizer else None)
    saved = set(dcp.FileSystemReader(str(path / SHARDED_STATE)).read_metadata().state_dict_metadata)
    missing = sorted(key for key in state["model"] if f"model.{key}" not in saved)
    if missing:
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing[:5]}")
    # parameters that never had a gradient have no optimizer state in the checkpoint
    planner = dcp.DefaultLoadPlanner(allow_partial_load=True)
    dcp.load(state, checkpoint_id=path / SHARDED_STATE, planner=planner)
    if with_optimizer:
        set_state_dict(
            module,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optimizer"],
        )
        for name, param in module.named_parameters():
            if f"optimizer.state.{name}.step" not in saved:
                optimizer.state.pop(param, None)  # as it was: no state until its first gradient
    else:
        set_model_state_dict(module, state["model"])
    if optimizer is not None and not with_optimizer:
        optimizer.state.clear()  # saved before the first step: a fresh optimizer
    return _load_schedule_and_rng(path, scheduler, scaler)


def load_sharded_model_state(path: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The whole model state of a sharded checkpoint as plain tensors, read in one process.

    `prefix` keeps only the entries under it, without it (e.g. "model." for the backbone model
    inside a recipe's training module), ready for `load_state_dict` / `save_pretrained`.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    state: dict[str, Any] = {}
    _load_state_dict(
        state,
        storage_reader=FileSystemReader(str(Path(path) / SHARDED_STATE)),
        planner=_EmptyStateDictLoadPlanner(keys={"model"}),
        no_dist=True,
    )
    return {k[len(prefix) :]: v for k, v in state["model"].items() if k.startswith(prefix)}


def list_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoint folders under `root`, newest step first (validity not checked)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and p.is_dir()
    ]
    return [path for _, path in sorted(found, reverse=True)]


def checkpoint_problem(path: str | Path) -> str | None:
    """Why the checkpoint at `path` cannot be used, or None when its manifest checks out."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return "no manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"unreadable manifest.json ({exc})"
    required = _REQUIRED_SHARDED if manifest.get("layout") == "sharded" else _REQUIRED
    for name in required:
        if name not in files:
            return f"manifest does not list {name}"
    for name, digest in files.items():
        file_path = path / name
        if not file_path.is_file():
            return f"missing {name}"
        if sha256_file(file_path) != digest:
            return f"checksum mismatch in {name}"
    return None


def latest_valid_checkpoint(root: str | Path) -> Path | None:
    """Newest checkpoint under `root` whose checksums match; warns about each corrupt one skipped."""
    for path in list_checkpoints(root):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        warnings.warn(f"skipping corrupt checkpoint {path}: {problem}", stacklevel=2)
    return None


def remove_partial_checkpoints(root: str | Path) -> None:
    """Delete temporary folders left by a process killed while writing a checkpoint."""
    root = Path(root)
    if root.is_dir():
        for path in root.glob(".step_*.tmp"):
            shutil.rmtree(path, ignore_errors=True)


def load_checkpoint(
    path: str | Path,
    *,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    ema: dict[str, torch.Tensor] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Load states in place from checkpoint `path`; return (trainer state, per-process RNG states).

    `ema`: filled in place from the checkpoint's moving average (an error if it has none)."""
    path = Path(path)
    _require_usable(path)
    if ema is not None:
        _load_ema(path, ema)
    try:
        missing, unexpected = load_model(module, str(path / "model.safetensors"), strict=False)
    except RuntimeError as exc:  # load_state_dict's size mismatches: the model's shape changed
        reasons = [line.strip() for line in str(exc).splitlines()[1:3]]
        raise ValueError(
            f"checkpoint {path} does not match the model: {'; '.join(reasons)}"
        ) from None
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    if optimizer is not None:
        opt_meta = json.loads((path / "optimizer.json").read_text())
        optimizer.load_state_dict(
            _optimizer_from_files(load_file(str(path / "optimizer.safetensors")), opt_meta)
        )
    return _load_schedule_and_rng(path, scheduler, scaler)


def _load_ema(path: Path, ema: dict[str, torch.Tensor]) -> None:
    if not (path / EMA_FILE).is_file():
        raise ValueError(
            f"checkpoint {path} has no {EMA_FILE}: it was written with train.ema_decay=0; "
            "resume it with train.ema_decay=0 or start a new run"
        )
    stored = load_file(str(path / EMA_FILE))
    if stored.keys() != ema.keys():
        raise ValueError(
            f"checkpoint {path}: {EMA_FILE} does not match the model's parameters "
            f"(missing {sorted(ema.keys() - stored.keys())[:5]}, "
            f"unexpected {sorted(stored.keys() - ema.keys())[:5]})"
        )
    for name, value in stored.items():
        ema[name].copy_(value)


def _require_usable(path: Path) -> None:
    problem = checkpoint_problem(path)
    if problem is not None:
        raise ValueError(f"checkpoint {path} is not usable: {problem}")


def _load_schedule_and_rng(
    path: Path, scheduler: Any, scaler: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What both checkpoint layouts store alike: (trainer state, per-process RNG states), with the
    scheduler and grad scaler states loaded in place."""
    sched = json.loads((path / "scheduler.json").read_text())
    if scheduler is not None and sched["scheduler"] is not None:
        scheduler.load_state_dict(sched["scheduler"])
    if scaler is not None and "scaler" in sched:
        scaler.load_state_dict(sched["scaler"])
    rng_states = _join_rng_states(
        load_file(str(path / "rng.safetensors")), json.loads((path / "rng.json").read_text())
    )
    return json.loads((path / "trainer.json").read_text()), rng_states
