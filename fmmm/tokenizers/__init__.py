"""Modality tokenizers and the sequence builder; classes load lazily so this import stays light."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TextTokenizer": "text",
    "ClipTextTokenizer": "text",
    "default_text_tokenizer": "text",
    "ImageTokenizer": "image",
    "VideoTokenizer": "image",
    "AudioTokenizer": "audio",
    "ActionTokenizer": "action",
    "StateNormalizer": "action",
    "Modality": "sequence",
    "MultimodalBatch": "sequence",
    "Segment": "sequence",
    "SequenceBuilder": "sequence",
    "pack_samples": "sequence",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
