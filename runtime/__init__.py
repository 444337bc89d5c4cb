"""agentrt: run several coding agents at once on one git repository, each isolated.

Public API (importing this package has no side effects)::

    from runtime import AgentCoordinator, ResourceLimits, RunConfig, Task

    config = RunConfig(max_concurrent_agents=3, resource_limits=ResourceLimits(memory_mb=512))
    report = AgentCoordinator(config=config, repo=".").run_agents(
        [Task(id="fmt", command=["sh", "-c", "black ."])]
    )
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.config import ResourceLimits, RunConfig, Task, TaskFile, load_task_file
from runtime.errors import AgentRuntimeError
from runtime.models import RunReport, SessionResult, SessionStatus

if TYPE_CHECKING:
    from runtime.run.continuation import continue_session
    from runtime.run.coordinator import AgentCoordinator
    from runtime.run.merging import merge_agent_results
    from runtime.run.revert import revert_session
    from runtime.run.session import IsolatedAgentSession

__all__ = [
    "AgentCoordinator",
    "AgentRuntimeError",
    "IsolatedAgentSession",
    "ResourceLimits",
    "RunConfig",
    "RunReport",
    "SessionResult",
    "SessionStatus",
    "Task",
    "TaskFile",
    "continue_session",
    "load_task_file",
    "merge_agent_results",
    "revert_session",
]

_LAZY = {
    "AgentCoordinator": "runtime.run.coordinator",
    "continue_session": "runtime.run.continuation",
    "IsolatedAgentSession": "runtime.run.session",
    "merge_agent_results": "runtime.run.merging",
    "revert_session": "runtime.run.revert",
}


def __getattr__(name: str) -> Any:
    # The docker SDK is imported only when a name that needs it is used.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'runtime' has no attribute {name!r}")
