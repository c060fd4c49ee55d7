"""Locate the data folders shipped with fmmm (`tasks/`, `envs/`, `configs/`).

In a wheel they live at `fmmm/_data/<name>`; in a source checkout (editable install) they are the
top-level folders of the repository.
"""

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder holding the shipped `name` data (`"tasks"`, `"envs"` or `"configs"`)."""
    if name not in ("tasks", "envs", "configs"):
        raise ValueError(f"unknown data folder {name!r}; expected 'tasks', 'envs' or 'configs'")
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"fmmm data folder {name!r} not found next to {_PACKAGE_DIR}")
