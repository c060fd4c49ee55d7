"""The bad-input corpus as data: each case is an entry point, its arguments and the culprit its one
error line must name. Arguments may hold `{name}` placeholders for the files `bad_files` makes."""

from __future__ import annotations

import importlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import REPO, assert_one_line_error, checksums, run_main

ENTRY_POINTS = {
    "train": ("fmmm.train.__main__", "main"),
    "eval": ("fmmm.eval.__main__", "main"),
    "collect": ("fmmm.collect", "main"),
    "datasets": ("fmmm.datasets.__main__", "main"),
    "data": ("fmmm.data.__main__", "main"),
    "scaling": ("fmmm.scaling", "main"),
    "demo": ("fmmm.demo", "main"),
}
SMOKE = str(REPO / "configs" / "pretrain" / "smoke.yaml")
MODEL_DEBUG = str(REPO / "configs" / "model" / "debug.yaml")
GARBAGE = bytes(range(256)) * 4 + b"\x00\xff\xfe"


@dataclass(frozen=True)
class Case:
    """One bad input: `python -m fmmm.<cli> *args` must fail with one line naming `culprit`."""

    cli: str
    args: tuple[str, ...]
    culprit: str | tuple[str, ...]

    def argv(self, files: dict[str, Path]) -> list[str]:
        names = {key: str(value) for key, value in files.items()}
        return [arg.format(**names) for arg in self.args]


def case(cli: str, *args: str, culprit: str | tuple[str, ...], id: str, slow: bool = False):
    marks = [pytest.mark.slow] if slow else []
    return pytest.param(Case(cli, args, culprit), id=f"{cli}-{id}", marks=marks)


def entry_point(cli: str):
    module, name = ENTRY_POINTS[cli]
    return getattr(importlib.import_module(module), name)


def make_bad_files(root: Path) -> dict[str, Path]:
    """Small bad files and folders under `root`, by name: what a user gets wrong most often."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "missing": root / "missing.yaml",
        "missing_dir": root / "no_such_folder",
        "folder": root / "a_folder",
        "empty": root / "empty.yaml",
        "garbage": root / "garbage.yaml",
        "list_yaml": root / "list.yaml",
        "scalar_yaml": root / "scalar.yaml",
        "syntax_yaml": root / "syntax.yaml",
        "tabs_yaml": root / "tabs.yaml",
        "a_file": root / "a_file.txt",
        "empty_dir": root / "empty_dir",
        "not_shard": root / "notes.txt",
        "json_syntax": root / "broken.json",
        "json_list": root / "list.json",
        "out": root / "out",
    }
    files["folder"].mkdir()
    (files["folder"] / "something.txt").write_text("not a config\n")
    files["empty_dir"].mkdir()
    files["empty"].write_text("")
    files["garbage"].write_bytes(GARBAGE)
    files["list_yaml"].write_text("- train\n- model\n")
    files["scalar_yaml"].write_text("42\n")
    files["syntax_yaml"].write_text("train: {steps: [1, 2\n")
    files["tabs_yaml"].write_text("train:\n\tsteps: 3\n")
    files["a_file"].write_text("I am a file, not a folder\n")
    files["not_shard"].write_text("hello\n")
    files["json_syntax"].write_text('{"type": "vla", ')
    files["json_list"].write_text("[1, 2, 3]\n")
    return files


def write_config(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(text)
    return path


def copy_tree(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def check_case(entry: Case, files: dict[str, Path], root: Path) -> None:
    """Run one corpus case in-process and hold it to the promise: exit 2, one line naming the
    culprit, nothing under `root` (inputs and pre-existing outputs) created or changed."""
    before = checksums(root)
    result = run_main(entry_point(entry.cli), *entry.argv(files))
    assert_one_line_error(result, entry.culprit)
    after = checksums(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"files changed: {changed[:10]}"


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0
