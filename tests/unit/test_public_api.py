"""The public API is importable from ``runtime`` by every name it promises."""

from __future__ import annotations

import importlib
import subprocess
import sys

import runtime


def test_every_name_in_all_imports_from_runtime() -> None:
    for name in runtime.__all__:
        assert getattr(runtime, name) is not None, name


def test_lazy_names_come_from_their_modules() -> None:
    for name, module in runtime._LAZY.items():
        assert getattr(runtime, name) is getattr(importlib.import_module(module), name)


def test_importing_runtime_does_not_import_the_docker_sdk() -> None:
    code = "import sys, runtime; print('docker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
