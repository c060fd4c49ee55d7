"""Explicit registries: named things are registered with a decorator and looked up by name.

Heavy modules are imported at lookup, not at `import fmmm`: a registry can be told in advance
which module defines a name (`lazy`), and imports it the first time the name is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


class Registry:
    """A name -> object table for one kind of thing (tasks, policies, models, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._lazy: dict[str, str] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def decorator(obj: Any) -> Any:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def lazy(self, name: str, module: str) -> None:
        """Declare that importing `module` registers `name`."""
        self._lazy[name] = module

    def get(self, name: str) -> Any:
        if name not in self._entries and name in self._lazy:
            importlib.import_module(self._lazy[name])
        if name not in self._entries:
            raise KeyError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or 'none'}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._lazy))

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._lazy
