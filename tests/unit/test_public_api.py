"""The public API is importable from ``runtime`` by every name it promises."""

from __future__ import annotations

import importlib
import subprocess
import sys

import runtime


def test_every_name_in_all_imports_from_runtime() -> None:
    for name in runtime.__all__:
        assert getattr(runtime, name) is not None, name


def test_every_name_in_all_is_importable_with_from_import() -> None:
    from runtime import (
        AgentCoordinator,
        AgentRuntimeError,
        IsolatedAgentSession,
        ResourceLimits,
        RunConfig,
        RunReport,
        SessionResult,
        SessionStatus,
        Task,
        TaskFile,
        continue_session,
        load_task_file,
        merge_agent_results,
        revert_session,
    )

    imported = {
        "AgentCoordinator": AgentCoordinator, "AgentRuntimeError": AgentRuntimeError,
        "IsolatedAgentSession": IsolatedAgentSession, "ResourceLimits": ResourceLimits,
        "RunConfig": RunConfig, "RunReport": RunReport, "SessionResult": SessionResult,
        "SessionStatus": SessionStatus, "Task": Task, "TaskFile": TaskFile,
        "continue_session": continue_session,
        "load_task_file": load_task_file, "merge_agent_results": merge_agent_results,
        "revert_session": revert_session,
    }
    # The list above is the promise: a name added to or dropped from __all__ shows up here.
    assert sorted(imported) == sorted(runtime.__all__)
    for name, value in imported.items():
        assert value is getattr(runtime, name), name
    for name in runtime.__all__:
        namespace: dict[str, object] = {}
        exec(f"from runtime import {name}", namespace)
        assert namespace[name] is getattr(runtime, name), name


def test_lazy_names_come_from_their_modules() -> None:
    for name, module in runtime._LAZY.items():
        assert getattr(runtime, name) is getattr(importlib.import_module(module), name)


def test_importing_runtime_does_not_import_the_docker_sdk() -> None:
    code = "import sys, runtime; print('docker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
