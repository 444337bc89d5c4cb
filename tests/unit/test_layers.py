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
    found = []
    for line, written, parts in imported_modules(package, path):
        if len(parts) > 2 or (len(parts) == 2 and (written.startswith("import ")
                                                    or parts[1] in ORDER)):
            found.append((line, written, parts[1]))
        else:
            # ``from runtime import paths`` reaches the module; any other name, the API.
            found.append((line, written, "__init__"))
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


#: The one module that may import a backend's folder (runtime/backends/<name>/).
REGISTRY = ("backends", "registry")


def imported_modules(package: Path, path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, import as written, module path)`` for each import of the package, the names
    of a ``from package.x import a, b`` counted as modules ``package.x.a`` and ``.b``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = module_of_file(package, path)
    is_package = path.name == "__init__.py"
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, f"import {a.name}", a.name.split(".")) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here if is_package else here[:-1]
                base = base[: len(base) - (node.level - 1)]
                parts = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module:
                parts = node.module.split(".")
            else:
                continue
            written = f"from {'.' * node.level}{node.module or ''} import " + ", ".join(
                a.name for a in node.names)
            found += [(node.lineno, written, [*parts, a.name]) for a in node.names]
    return [f for f in found if f[2][0] == package.name]


def backend_folder_problems(package: Path) -> list[str]:
    """Every import of a backend's folder from outside that folder, but the registry's."""
    backends = package / "backends"
    folders = {p.name for p in backends.iterdir() if p.is_dir() and p.name != "__pycache__"} \
        if backends.is_dir() else set()
    problems = []
    for path in sorted(package.rglob("*.py")):
        inside = path.relative_to(package).with_suffix("").parts
        if inside[:2] == REGISTRY:
            continue
        for line, written, parts in imported_modules(package, path):
            if len(parts) < 3 or parts[1] != "backends" or parts[2] not in folders:
                continue
            if inside[:2] == ("backends", parts[2]):
                continue  # a backend's own modules
            where = path.relative_to(package.parent)
            problems.append(f"{where}:{line}: {written} (only the registry imports "
                            f"backends/{parts[2]}/)")
    return problems


def test_only_the_registry_imports_a_backends_folder() -> None:
    problems = backend_folder_problems(ROOT / "runtime")
    assert not problems, "imports of a backend's folder:\n" + "\n".join(problems)


@pytest.mark.parametrize(("where", "plant", "flagged"), [
    ("run/x.py", "from runtime.backends.swarm.nodes import place\n", True),
    ("run/x.py", "from runtime.backends import swarm\n", True),
    ("run/x.py", "import runtime.backends.docker.trees\n", True),
    ("backends/docker/x.py", "from runtime.backends.swarm import nodes\n", True),
    ("backends/recovery.py", "from .swarm.recovery import node_tree\n", True),
    ("run/x.py", "from runtime.backends.registry import open_backend\n", False),
    ("run/x.py", "from runtime.backends.base import Backend\n", False),
    ("backends/registry.py", "from runtime.backends.swarm.backend import SwarmBackend\n", False),
    ("backends/swarm/x.py", "from .nodes import place\n", False),
])
def test_a_planted_import_of_a_backends_folder_is_named(tmp_path: Path, where: str, plant: str,
                                                        flagged: bool) -> None:
    package = tmp_path / "runtime"
    for folder in ("backends/docker", "backends/swarm", "run"):
        (package / folder).mkdir(parents=True, exist_ok=True)
    (package / where).write_text(plant)
    problems = backend_folder_problems(package)
    assert bool(problems) is flagged, problems
    if flagged:
        assert problems[0].startswith(f"runtime/{where}:1: "), problems


def class_stub_problems(package: Path) -> list[str]:
    """Attributes a class declares only under ``if TYPE_CHECKING:`` (the state a mixin shares
    with the class it is mixed into): every attribute is set where it is declared."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for cls in (n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)):
            for node in cls.body:
                if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
                    for stub in node.body:
                        if isinstance(stub, ast.AnnAssign):
                            problems.append(f"{path.relative_to(package.parent)}:{stub.lineno}: "
                                            f"{cls.name}.{ast.unparse(stub.target)}")
    return problems


def test_no_class_declares_attributes_only_for_the_type_checker() -> None:
    problems = class_stub_problems(ROOT / "runtime")
    assert not problems, "TYPE_CHECKING-only attribute stubs:\n" + "\n".join(problems)


def test_a_planted_type_checking_stub_is_named(tmp_path: Path) -> None:
    package = tmp_path / "runtime"
    (package / "run").mkdir(parents=True)
    (package / "run" / "mixin.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from runtime.config import Task\n"  # module level: fine
        "class Mixin:\n    if TYPE_CHECKING:\n        task: Task\n")
    assert class_stub_problems(package) == ["runtime/run/mixin.py:6: Mixin.task"]


#: Where the Docker SDK may be imported: the shared engine plumbing and the backends.
SDK_HOMES = ("engine", "backends")
#: Modules that still drive containers of their own with the SDK (the harvest's container, the
#: shared PostgreSQL server and its admin commands): to move into engine/ next. The list is
#: exact, so a new importer fails the test and so does one that no longer needs its place.
SDK_NOT_YET_MOVED = {"runtime/git/harvest.py", "runtime/databases/postgres_server.py",
                     "runtime/databases/postgres.py", "runtime/databases/psql_admin.py"}


def sdk_importers(package: Path) -> dict[str, int]:
    """Each module outside engine/ and backends/ importing the Docker SDK, with the first
    line that does."""
    found: dict[str, int] = {}
    for path in sorted(package.rglob("*.py")):
        if layer_of_file(package, path) in SDK_HOMES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            if any(name == "docker" or name.startswith("docker.") for name in names):
                where = str(path.relative_to(package.parent))
                found[where] = min(found.get(where, node.lineno), node.lineno)
    return found


def test_only_engine_and_backends_import_the_docker_sdk() -> None:
    found = sdk_importers(ROOT / "runtime")
    new = {f"{where}:{line}" for where, line in found.items()
           if where not in SDK_NOT_YET_MOVED}
    assert not new, "the Docker SDK imported outside engine/ and backends/: " \
        f"{sorted(new)} (use runtime.engine.types for signatures; ask engine/ to act)"
    assert set(found) == SDK_NOT_YET_MOVED, \
        f"no longer importing the SDK (drop from the list): {SDK_NOT_YET_MOVED - set(found)}"


def test_a_planted_sdk_import_is_named(tmp_path: Path) -> None:
    package = tmp_path / "runtime"
    for layer in ("engine", "backends", "run"):
        (package / layer).mkdir(parents=True)
    (package / "engine" / "fine.py").write_text("import docker\n")
    (package / "backends" / "fine.py").write_text("from docker.types import Mount\n")
    (package / "run" / "planted.py").write_text(
        "x = 1\ndef f() -> None:\n    from docker.types import Mount\n")
    assert sdk_importers(package) == {"runtime/run/planted.py": 3}
