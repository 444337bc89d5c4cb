"""Helpers for integration tests: run tasks through the real coordinator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from runtime.config import ResourceLimits, RunConfig, Task
from runtime.models import RunReport, SessionResult
from runtime.run.coordinator import AgentCoordinator


def sh(task_id: str, script: str, **fields: Any) -> Task:
    """A task running ``sh -c script``."""
    return Task(id=task_id, command=["sh", "-c", script], **fields)


def run_tasks(repo: Path, tasks: list[Task], *, grace: int = 2, **run: Any) -> RunReport:
    """Run ``tasks`` on ``repo`` with small default limits; merge off unless asked."""
    limits = run.pop("resource_limits", ResourceLimits(memory_mb=256, cpu_percent=100,
                                                       time_seconds=120, disk_mb=64, pids=128))
    run.setdefault("merge", "none")
    config = RunConfig(resource_limits=limits, **run)
    return AgentCoordinator(config=config, repo=repo, stop_grace_seconds=grace).run_agents(tasks)


def by_task(report: RunReport) -> dict[str, SessionResult]:
    """The report's sessions keyed by task id."""
    return {s.task_id: s for s in report.sessions}


def agentrt(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in a separate process."""
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def start_run_in_background(text: str, tmp_path: Path, repo: Path, env: dict[str, str],
                            *args: str) -> subprocess.Popen[str]:
    """``agentrt run TASKS --repo REPO --json ARGS`` of the task file ``text``, in a separate
    process that is left running (its engine as ``env`` says)."""
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(text)
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "run", str(tasks), "--repo", str(repo), "--json",
         *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **env})
