"""How a session ends: the stop request from another process, the classification of its
backend's :class:`~runtime.state.classify.EndFacts` (exit code, OOM, deadline, disk, engine or
node lost), and finishing up (the saved log, usage, bringing the work home onto the session's
branch).

:class:`SessionEnd` is a mixin of :class:`~runtime.run.session.IsolatedAgentSession`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker

from runtime.backends.base import AgentRun, SessionTree
from runtime.config import ResourceLimits, RunConfig, Task
from runtime.engine.container import AgentRunner
from runtime.engine.labels import LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_REPO
from runtime.engine.resilience import crash_point, engine_retry
from runtime.errors import AgentRuntimeError
from runtime.git.harvest import HarvestPlan
from runtime.git.safe_git import MainRepo
from runtime.git.work_home import bring_work_home
from runtime.models import SessionResult, SessionStatus, WorkState, utcnow
from runtime.run.identity import agent_ids
from runtime.run.usage import usage_from_log
from runtime.state.classify import EndFacts, classify
from runtime.state.liveness import process_start_time
from runtime.state.session_facts import import_policy

if TYPE_CHECKING:
    import threading

    from runtime.state.store import Store

log = logging.getLogger(__name__)

STOP_REQUESTED = "stop_requested"


class SessionEnd:
    """The end of a session: classify how its container ended, finish, bring the work home."""

    if TYPE_CHECKING:
        task: Task
        config: RunConfig
        repo: MainRepo
        store: Store | None
        session_id: str
        branch: str
        base_commit: str
        limits: ResourceLimits
        result: SessionResult
        tree: SessionTree | None
        container: AgentRunner | None
        agent: AgentRun | None
        _cancel: threading.Event
        _started: bool
        _harvested: bool
        _checked_out: bool
        _workspace_lent: bool

        @property
        def client(self) -> docker.DockerClient: ...
        @property
        def log_path(self) -> Path: ...
        def _record(self, **resources: Any) -> None: ...
        def _event(self, kind: str, message: str) -> None: ...
        def _save_logs(self) -> None: ...

    def _stop_requested(self) -> bool:
        """True if `agentrt stop` asked for this session from another process."""
        if self.store is None:
            return False
        try:
            return any(e.kind == STOP_REQUESTED for e in self.store.events(
                session_id=self.session_id))
        except AgentRuntimeError:
            return False

    def _inspect_when_reachable(self) -> dict[str, Any] | None:
        """The container's state (None: gone), waiting a while for a restarting engine."""
        return engine_retry(self.container.inspect) if self.container else None

    def _end(self, facts: EndFacts) -> None:
        """How the session ended, from its backend's facts: the status and reason by the pure
        classifier; the engine's times, peaks and totals into the result."""
        self.result.exit_code = facts.exit_code
        status, reason = classify(facts, self.limits)
        self.result.status = status
        self.result.reason = reason
        if status is SessionStatus.TIMED_OUT and facts.own_deadline:
            self.result.warnings.append(
                "stopped by the container's own deadline (agentrt did not stop it in time)")
        started, finished = facts.started_at, facts.finished_at
        if started is not None and finished is not None:
            # The engine's own clock: a paused supervisor does not stretch a session. Its two
            # stamps come from different parts of the engine: a session that ran for under a
            # millisecond may "finish" before it started.
            self.result.started_at, self.result.finished_at = started, max(finished, started)
        if facts.peak_memory_bytes is not None:
            self.result.peak_memory_bytes = facts.peak_memory_bytes
        if facts.oom:
            # The kernel OOM-kills only once the cgroup's usage reached its limit, however
            # fast the climb was for the samples: the peak is at least the limit.
            self.result.peak_memory_bytes = max(self.result.peak_memory_bytes,
                                                self.limits.memory_mb * 1024 * 1024)
        if status is SessionStatus.SUCCEEDED and (facts.volume_full or facts.disk_filled):
            self.result.warnings.append(
                f"the volume filled up to disk_mb={self.limits.disk_mb} during the session "
                "(writes failed with ENOSPC), although the agent exited 0")
        if facts.cpu_seconds is not None:
            self.result.cpu_seconds = round(facts.cpu_seconds, 3)
        if facts.disk_used_bytes is not None:
            self.result.disk_used_bytes = facts.disk_used_bytes
        self.result.warnings.extend(facts.warnings)

    def _discard_secrets(self) -> None:
        # The entry point deletes the file as soon as it has read it; this covers a container
        # that never got that far.
        if self.tree is not None:
            self.tree.discard_secrets()

    def _finish(self) -> None:
        self._discard_secrets()
        if self.result.finished_at is None:
            self.result.finished_at = utcnow()
        if self.result.started_at:
            self.result.duration_s = max(0.0, round(
                (self.result.finished_at - self.result.started_at).total_seconds(), 3))
        self._save_logs()
        if self.task.command is None:  # a preset's CLI: what it reported it used
            self.result.usage = usage_from_log(self.task.agent, self.log_path)
        crash_point("harvest")
        self._bring_home()
        crash_point("home")
        self._record()
        self._event("finished", f"{self.result.status.value}: {self.result.reason or ''}")

    def _bring_home(self) -> None:
        """Harvest the stopped session's tree in a container; import the verified bundle."""
        if self._harvested or self.tree is None or not self._checked_out:
            return
        self._harvested = True
        unreachable = self.agent.unreachable(self.session_id) if self._started and \
            self.agent is not None else None
        if unreachable:
            # Its engine or node is lost: a harvest would only wait for it; gc retries.
            self.result.work = WorkState.KEPT
            self.result.head_commit = self.repo.branch_head(self.branch)
            self.result.warnings.append(unreachable)
            return
        if not self._started and not self._workspace_lent:
            # Nobody worked in the tree: it is the checkout agentrt made.
            self.result.work = WorkState.HOME
            self.result.head_commit = self.repo.branch_head(self.branch)
            return
        uid, gid = agent_ids()
        plan = HarvestPlan(
            session_id=self.session_id, base_commit=self.base_commit,
            mounts=tuple(self.tree.harvest_mounts()), store=self.tree.store, uid=uid, gid=gid,
            memory_mb=self.limits.memory_mb, scratch_mb=self.limits.disk_mb,
            runtime=self.config.runtime,
            labels={LABEL_OWNER_PID: str(os.getpid()),
                    LABEL_OWNER_START: str(process_start_time(os.getpid()) or ""),
                    LABEL_REPO: str(self.repo.root)})
        tree = self.tree
        outcome = bring_work_home(
            self.client, self.repo, plan, branch=self.branch,
            policy=import_policy(self.config, self.task.secrets, self.limits.disk_mb),
            harvester=lambda plan, dest, limit: tree.harvest(self.client, plan, dest, limit))
        self.result.work = outcome.state
        self.result.head_commit = outcome.head
        self.result.warnings.extend(outcome.warnings)
        if outcome.state is not WorkState.HOME:
            log.error("session %s: %s", self.session_id, "; ".join(outcome.warnings))

