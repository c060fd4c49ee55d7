"""Run-directory logs: per-step metrics and events as JSONL, throughput and estimated MFU."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fmmm.utils.io import atomic_write_text


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep them readable
    return value


class JsonlLog:
    """Append-only JSONL file, one dict per line, flushed on every write."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in row.items()}, sort_keys=True) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` (a resumed run rewrites them), and a line cut short by a
        process killed while writing it."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All rows of a JSONL log."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak FLOP/s."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be > 0, got {peak_flops}")
    return tokens_per_second * flops_per_token / peak_flops
