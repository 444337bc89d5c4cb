"""The packages of ``runtime`` import only downward, in one fixed order.

Every module's imports are read with :mod:`ast` (``import runtime.x``, ``from runtime.x import
y``, ``from runtime import x`` and relative imports; inside functions and ``TYPE_CHECKING``
blocks too), and an import of a higher layer fails the test naming the file and the import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Lowest first. A module may import its own layer and any layer before it.
ORDER = ["errors", "waiting", "version", "crash_points", "text", "egress_rules", "environments", "devcontainer", "limits", "task", "config", "models", "presets", "paths", "engine", "git", "databases",
         "state", "backends", "run", "cli", "__init__"]


def layer_of_file(package: Path, path: Path) -> str:
    """``runtime/<package>/...`` -> the package; ``runtime/<module>.py`` -> the module."""
    parts = path.relative_to(package).with_suffix("").parts
    return parts[0]


def module_of_file(package: Path, path: Path) -> list[str]:
    """``runtime/git/merge.py`` -> ``["runtime", "git", "merge"]`` (``__init__`` dropped)."""
    parts = [package.name, *path.relative_to(package).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_layers(package: Path, path: Path) -> list[tuple[int, str, str]]:
    """``(line, import as written, layer it reaches)`` for each import of the package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = package.name
    here = module_of_file(package, path)
    is_package = path.name == "__init__.py"
    found: list[tuple[int, str, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == name:
                    found.append((node.lineno, f"import {alias.name}",
                                  parts[1] if len(parts) > 1 else "__init__"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Relative: resolve against this module's package.
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                parts = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module:
                parts = node.module.split(".")
            else:
                continue
            if parts[0] != name:
                continue
            written = f"from {'.' * node.level}{node.module or ''} import " + ", ".join(
                a.name for a in node.names)
            if len(parts) > 1:
                found.append((node.lineno, written, parts[1]))
            else:
                # ``from runtime import paths`` reaches the module; any other name, the API.
                for alias in node.names:
                    found.append((node.lineno, written,
                                  alias.name if alias.name in ORDER else "__init__"))
    return found


def layer_problems(package: Path) -> list[str]:
    """Every upward import, and every module or import outside the known layers."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        source = layer_of_file(package, path)
        where = path.relative_to(package.parent)
        if source not in ORDER:
            problems.append(f"{where}: layer {source!r} is not in the layer order")
            continue
        for line, written, target in imported_layers(package, path):
            if target not in ORDER:
                problems.append(f"{where}:{line}: {written} (layer {target!r} is not in the "
                                "layer order)")
            elif ORDER.index(target) > ORDER.index(source):
                problems.append(f"{where}:{line}: {written} ({source} may not import {target})")
    return problems


def test_no_module_imports_a_higher_layer() -> None:
    problems = layer_problems(ROOT / "runtime")
    assert not problems, "upward imports:\n" + "\n".join(problems)


@pytest.mark.parametrize("plant", [
    "from runtime.cli.main import main\n",
    "import runtime.run.session\n",
    "from runtime import cli\n",
    "from runtime import AgentCoordinator\n",
    "from ..state import store\n",
    "def f() -> None:\n    from runtime.state.store import Store\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from runtime.run import x\n",
])
def test_a_planted_upward_import_is_named_with_its_file(tmp_path: Path, plant: str) -> None:
    package = tmp_path / "runtime"
    (package / "engine").mkdir(parents=True)
    (package / "engine" / "fine.py").write_text(
        "from runtime.errors import EngineError\nfrom runtime import paths\n"
        "from . import labels\nimport runtime.engine.labels\n")
    (package / "engine" / "planted.py").write_text(plant)
    problems = layer_problems(package)
    assert len(problems) == 1, problems
    assert problems[0].startswith("runtime/engine/planted.py:"), problems


def test_an_unknown_layer_is_reported(tmp_path: Path) -> None:
    package = tmp_path / "runtime"
    (package / "plugins").mkdir(parents=True)
    (package / "plugins" / "x.py").write_text("from runtime.errors import ConfigError\n")
    assert layer_problems(package) == [
        "runtime/plugins/x.py: layer 'plugins' is not in the layer order"]
