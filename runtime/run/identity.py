"""Who a session runs as and the credentials it carries: run ids, the agent's uid:gid, the
task's secret values from agentrt's environment, and the environment entries that are
credentials and so stay out of the container's configuration."""

from __future__ import annotations

import os
import time

from runtime.config import Task
from runtime.errors import ConfigError

AGENT_UID = 1000

# Environment entries that are credentials even though the task did not name them.
HIDDEN_DATABASE_ENV = ("AGENT_DATABASE_URL",)


def secret_env(task: Task) -> dict[str, str]:
    """The values of ``task``'s secrets from agentrt's environment; ConfigError if one is unset."""
    missing = [name for name in task.secrets if name not in os.environ]
    if missing:
        raise ConfigError(f"task {task.id!r}: field secrets: {missing[0]} is not set in the "
                          "environment; export it or remove it from the task")
    return {name: os.environ[name] for name in task.secrets}


def agent_ids() -> tuple[int, int]:
    """The uid:gid agents run as: the host user's own (so files stay usable), or 1000 for root."""
    uid = os.getuid()
    return (uid, os.getgid()) if uid != 0 else (AGENT_UID, AGENT_UID)


def new_run_id() -> str:
    """A fresh run id, sortable by time."""
    return time.strftime("r%Y%m%d-%H%M%S-") + os.urandom(2).hex()
