"""How a session ends: the stop request from another process, the classification of a local
container's end (exit code, OOM, deadline, disk, the engine's record), and finishing up (the
saved log, usage, bringing the work home onto the session's branch).

:class:`SessionEnd` is a mixin of :class:`~runtime.run.session.IsolatedAgentSession`; the Swarm
session classifies from its service's task instead and overrides :meth:`SessionEnd._bring_home`
for a lost node.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker

from runtime.config import ResourceLimits, RunConfig, Task
from runtime.engine.container import AgentRunner
from runtime.engine.labels import LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_REPO
from runtime.errors import AgentRuntimeError, EngineError
from runtime.git.harvest import HarvestPlan
from runtime.git.safe_git import MainRepo
from runtime.git.session_tree import SessionTree
from runtime.git.work_home import bring_work_home
from runtime.models import SessionResult, SessionStatus, WorkState, utcnow
from runtime.run.engine_watch import ENGINE_LOST
from runtime.run.identity import agent_ids
from runtime.run.resilience import crash_point, engine_retry
from runtime.run.supervisor import Watch
from runtime.run.usage import usage_from_log
from runtime.state.classify import EndFacts, classify, own_deadline_ended
from runtime.state.liveness import process_start_time
from runtime.state.session_facts import engine_times, import_policy

if TYPE_CHECKING:
    import threading

    from runtime.state.store import Store

log = logging.getLogger(__name__)

STOP_REQUESTED = "stop_requested"
#: A cancelled session whose engine stopped answering: its container may still run.
UNCONFIRMED_STOP = ("the engine stopped answering, so the stop was not confirmed: `agentrt gc` "
                    "stops the container and brings the work home once the engine answers")
DISK_FULL_MARGIN = 1024 * 1024


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

    def _classify(self, watch: Watch) -> None:
        try:
            # A container given up (the engine stopped answering) is not asked about again.
            state = {} if watch.engine_gone else self._inspect_when_reachable() or {}
        except EngineError:
            # The engine went away while (or right after) the container ended.
            watch.record(engine_interrupted=True)
            state = {}
        st = state.get("State", {})
        code = watch.exit_code if watch.exit_code is not None else st.get("ExitCode")
        self.result.exit_code = int(code) if code is not None else None
        oom = watch.oom_seen or bool(st.get("OOMKilled"))
        volume = self.tree
        low_disk = volume is not None and volume.mode == "loop" and \
            self.result.exit_code not in (0, None) and volume.free_bytes() < DISK_FULL_MARGIN
        started, finished = engine_times(st)
        own_deadline = own_deadline_ended(self.result.exit_code, started, finished,
                                          self.limits.time_seconds, watch.stop_sent_at,
                                          watch.stop_failed)
        facts = EndFacts(
            cancelled=watch.cancelled or self._cancel.is_set() or self._stop_requested(),
            timed_out=watch.timed_out, stop_failed=watch.stop_failed, own_deadline=own_deadline,
            disk_exceeded=watch.disk_exceeded,
            engine_lost=watch.engine_interrupted, vanished=watch.vanished or not state,
            oom=oom, exit_code=self.result.exit_code, volume_full=low_disk,
            external_kill=watch.external_kill, stopping=watch.stopping,
            engine_error=str(st["Error"]) if st.get("Error") else None)
        status, reason = classify(facts, self.limits)
        if status is SessionStatus.CANCELLED and watch.engine_gone:
            reason = f"{reason}; {UNCONFIRMED_STOP}"
        self.result.status = status
        self.result.reason = reason
        if status is SessionStatus.TIMED_OUT and own_deadline:
            self.result.warnings.append(
                "stopped by the container's own deadline (agentrt did not stop it in time)")
        if started is not None and finished is not None:
            # The engine's own clock: a paused supervisor does not stretch a session. Its two
            # stamps come from different parts of the engine: a session that ran for under a
            # millisecond may "finish" before it started.
            self.result.started_at, self.result.finished_at = started, max(finished, started)
        self.result.peak_memory_bytes = watch.peak_memory_bytes
        if oom:
            # The kernel OOM-kills only once the cgroup's usage reached its limit, however
            # fast the climb was for the samples: the peak is at least the limit.
            self.result.peak_memory_bytes = max(watch.peak_memory_bytes,
                                                self.limits.memory_mb * 1024 * 1024)
        if status is SessionStatus.SUCCEEDED and (low_disk or watch.disk_filled):
            self.result.warnings.append(
                f"the volume filled up to disk_mb={self.limits.disk_mb} during the session "
                "(writes failed with ENOSPC), although the agent exited 0")
        self.result.cpu_seconds = round(watch.cpu_seconds, 3)
        with contextlib.suppress(OSError):
            # A volume on a lost engine is not measured (that would wait for the engine).
            measure = volume is not None and not (watch.engine_gone and volume.on_engine)
            self.result.disk_used_bytes = (
                volume.used_bytes() if measure and volume else watch.disk_used_bytes
            )
        self.result.warnings.extend(watch.error_lines())

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
        if self._started and ENGINE_LOST.is_set():
            # The engine stopped answering: a harvest (a container) would only wait for it.
            self.result.work = WorkState.KEPT
            self.result.head_commit = self.repo.branch_head(self.branch)
            self.result.warnings.append(
                f"work not brought home yet: the engine was lost; the volume is kept: run "
                f"`agentrt recover {self.session_id}` once an engine answers")
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

