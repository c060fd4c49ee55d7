"""Imports by name (module paths as strings) respect the layers that import-linter checks.

import-linter sees every `import` statement, function-level ones too, but not
`importlib.import_module("fmmm...")`, registry `lazy(name, "fmmm...")` entries or tables of module
names: here every string literal in fmmm/ that names an fmmm module counts as an import of it.
"""

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_NAME = re.compile(r"fmmm(\.\w+)+(:\w+)?")  # entry points ("fmmm.envs.env:TabletopEnv") too


def layer_ranks() -> dict[str, int]:
    """Package -> its layer in the pyproject.toml layers contract (0 is the top layer)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return {
        package.strip(): rank
        for rank, layer in enumerate(contract["layers"])
        for package in layer.split(":")
    }


def imports_by_name(source: str, importer: str) -> list[tuple[str, str]]:
    """(importer, module) for each string literal in `source` that names an fmmm module."""
    return [
        (importer, node.value.partition(":")[0])
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and MODULE_NAME.fullmatch(node.value)
    ]


def package_imports_by_name() -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / "fmmm").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        importer = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found += imports_by_name(path.read_text(), importer)
    return found


def upward_imports(found: list[tuple[str, str]], ranks: dict[str, int]) -> list[str]:
    def rank(module: str) -> int | None:
        return next(
            (r for p, r in ranks.items() if module == p or module.startswith(p + ".")), None
        )

    return [
        f"{importer} -> {module}"
        for importer, module in found
        if rank(importer) is not None and rank(module) is not None and rank(importer) > rank(module)
    ]


def test_modules_imported_by_name_exist():
    def exists(module: str) -> bool:
        path = ROOT.joinpath(*module.split("."))
        return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()

    found = package_imports_by_name()
    assert ("fmmm.policies.factory", "fmmm.policies.vla") in found  # registry entries are seen
    assert [f"{a} -> {b}" for a, b in found if not exists(b)] == []


def test_modules_imported_by_name_respect_the_layers():
    ranks = layer_ranks()
    assert ranks["fmmm.train"] < ranks["fmmm.policies"] < ranks["fmmm.models"] == ranks["fmmm.data"]
    assert upward_imports(package_imports_by_name(), ranks) == []


def test_an_upward_import_by_name_is_caught():
    source = 'import importlib\nimportlib.import_module("fmmm.train.vla")\n'
    found = imports_by_name(source, "fmmm.policies.factory")
    assert upward_imports(found, layer_ranks()) == ["fmmm.policies.factory -> fmmm.train.vla"]
    assert upward_imports(imports_by_name(source, "fmmm.train.runners"), layer_ranks()) == []
