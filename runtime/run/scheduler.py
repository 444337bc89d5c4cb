"""Pure scheduling of a task DAG under a concurrency limit (no Docker, no threads).

The coordinator asks :meth:`DagScheduler.next_ready` for work whenever a slot is free and
reports every outcome with :meth:`finish`. A task starts only when every dependency succeeded;
a failed, skipped or cancelled dependency skips its dependents, transitively.

A live run adds tasks while it goes (:meth:`DagScheduler.add`): an added task may depend on
any task already known, waiting, running or finished; it is scheduled by the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum


class TaskState(StrEnum):
    """A task's place in the schedule."""

    WAITING = "waiting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class DagScheduler:
    """Which task may start next; never more than ``max_concurrent`` running."""

    def __init__(self, deps: Mapping[str, Sequence[str]], max_concurrent: int) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.order = list(deps)
        self.deps = {task: list(d) for task, d in deps.items()}
        self.max_concurrent = max_concurrent
        self.state = {task: TaskState.WAITING for task in self.order}
        self.skip_reason: dict[str, str] = {}
        self._dependents: dict[str, list[str]] = {task: [] for task in self.order}
        for task, task_deps in self.deps.items():
            for dep in task_deps:
                self._dependents[dep].append(task)

    def add(self, task: str, deps: Sequence[str]) -> str | None:
        """Add a task after the start; return why it is skipped at once (a dependency already
        failed, was skipped or cancelled), else None (it waits like any other).

        ValueError if the id is known or a dependency is not (so no cycle can form)."""
        if task in self.state:
            raise ValueError(f"task {task!r} is already in the run")
        unknown = [d for d in deps if d not in self.state]
        if unknown:
            raise ValueError(f"unknown dependency {unknown[0]!r}")
        self.order.append(task)
        self.deps[task] = list(deps)
        self.state[task] = TaskState.WAITING
        self._dependents[task] = []
        for dep in deps:
            self._dependents[dep].append(task)
        ended = next((d for d in deps if self.state[d] in (
            TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED)), None)
        if ended is None:
            return None
        reason = f"dependency {ended!r} {self.state[ended].value}"
        self.state[task] = TaskState.SKIPPED
        self.skip_reason[task] = reason
        return reason

    @property
    def running(self) -> int:
        """How many tasks are running now."""
        return sum(1 for s in self.state.values() if s is TaskState.RUNNING)

    @property
    def done(self) -> bool:
        """True when no task is waiting or running."""
        return all(s not in (TaskState.WAITING, TaskState.RUNNING) for s in self.state.values())

    def next_ready(self) -> list[str]:
        """Tasks to start now (marked running), in file order, filling the free slots."""
        free = self.max_concurrent - self.running
        started: list[str] = []
        for task in self.order:
            if free <= 0:
                break
            if self.state[task] is TaskState.WAITING and all(
                self.state[d] is TaskState.SUCCEEDED for d in self.deps[task]
            ):
                self.state[task] = TaskState.RUNNING
                started.append(task)
                free -= 1
        return started

    def upcoming(self, limit: int) -> list[str]:
        """Up to ``limit`` waiting tasks whose dependencies all succeeded: the ones
        :meth:`next_ready` gives next, in file order (not marked; for preparing ahead)."""
        ready = [task for task in self.order if self.state[task] is TaskState.WAITING
                 and all(self.state[d] is TaskState.SUCCEEDED for d in self.deps[task])]
        return ready[:max(0, limit)]

    def finish(self, task: str, outcome: TaskState) -> list[str]:
        """Record how a running task ended; return the tasks skipped because of it."""
        if self.state[task] is not TaskState.RUNNING:
            raise ValueError(f"task {task!r} is not running")
        if outcome in (TaskState.WAITING, TaskState.RUNNING):
            raise ValueError("outcome must be final")
        self.state[task] = outcome
        if outcome is TaskState.SUCCEEDED:
            return []
        return self._skip_dependents(task, f"dependency {task!r} {outcome.value}")

    def _skip_dependents(self, task: str, reason: str) -> list[str]:
        skipped: list[str] = []
        stack = list(self._dependents[task])
        while stack:
            dependent = stack.pop()
            if self.state[dependent] is TaskState.WAITING:
                self.state[dependent] = TaskState.SKIPPED
                self.skip_reason[dependent] = reason
                skipped.append(dependent)
                stack.extend(self._dependents[dependent])
        return skipped

    def cancel_waiting(self) -> list[str]:
        """Mark every task that has not started as cancelled; return them."""
        cancelled = [t for t in self.order if self.state[t] is TaskState.WAITING]
        for task in cancelled:
            self.state[task] = TaskState.CANCELLED
        return cancelled
