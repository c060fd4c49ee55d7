"""Helpers shared by the tokenizers: reading the JSON config a tokenizer saved."""

from __future__ import annotations

import json
from pathlib import Path


def read_config(path: Path) -> dict:
    """Read a tokenizer's JSON config, naming the file when it is missing."""
    if not path.is_file():
        raise ValueError(f"no tokenizer config at {path}")
    return json.loads(path.read_text())
