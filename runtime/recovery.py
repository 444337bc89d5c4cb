"""Crash recovery and garbage collection: find leftovers by label and on disk, save, remove.

A session is *orphaned* when the agentrt process that owns it is dead (pid plus process start
time, so a reused pid is not mistaken for life). For each orphaned or finished-but-kept session
:func:`collect_garbage`

1. stops its container (SIGTERM, grace, SIGKILL),
2. brings its work home: the agent's commits and whatever it left uncommitted go onto its
   branch (the same safe snapshot as a normal exit; the volume is remounted if needed),
3. records it as ``crashed`` (if it had not finished) and
4. removes container, database, mount, loop device and session directory.

It never deletes a branch and never touches a session whose owner is alive.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from runtime.container import LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_REPO, LABEL_SESSION
from runtime.errors import AgentRuntimeError, NotFoundError
from runtime.gitops import MainRepo
from runtime.models import SessionStatus, utcnow
from runtime.owner import owner_alive
from runtime.store import Store
from runtime.volumes import open_volume
from runtime.workspace import snapshot

log = logging.getLogger(__name__)

SESSION_FILE = "session.json"
YOUNG_SECONDS = 120


@dataclass
class SessionMarker:
    """What the session directory says about its session (written before the agent starts)."""

    session_id: str
    run_id: str
    branch: str
    owner_pid: int | None
    owner_start_time: float | None
    keep: bool = False

    def write(self, session_dir: Path) -> None:
        """Store the marker in ``session_dir``."""
        (session_dir / SESSION_FILE).write_text(json.dumps(self.__dict__))

    @classmethod
    def read(cls, session_dir: Path) -> SessionMarker | None:
        """The marker of ``session_dir``, or None if missing or unreadable."""
        with contextlib.suppress(OSError, ValueError, TypeError):
            return cls(**json.loads((session_dir / SESSION_FILE).read_text()))
        return None


@dataclass
class GcReport:
    """What a garbage collection found and did."""

    removed_containers: list[str] = field(default_factory=list)
    removed_sessions: list[str] = field(default_factory=list)
    saved_branches: dict[str, str] = field(default_factory=dict)
    skipped_live: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return dict(self.__dict__)


def _alive(pid: Any, start: Any) -> bool:
    try:
        return owner_alive(int(pid) if pid not in (None, "") else None,
                           float(start) if start not in (None, "") else None)
    except (TypeError, ValueError):
        return False


def _containers(client: docker.DockerClient | None, repo: MainRepo) -> dict[str, Any]:
    if client is None:
        return {}
    with contextlib.suppress(docker.errors.DockerException):
        found = client.containers.list(all=True, filters={"label": f"{LABEL_REPO}={repo.root}"})
        return {c.labels.get(LABEL_SESSION, c.id): c for c in found}
    return {}


def collect_garbage(
    repo: MainRepo,
    client: docker.DockerClient | None,
    *,
    only_session: str | None = None,
    include_finished: bool = True,
    grace_seconds: int = 5,
) -> GcReport:
    """Reconcile every session of ``repo`` whose owner is dead (or that finished and was kept)."""
    report = GcReport()
    containers = _containers(client, repo)
    sessions_dir = repo.state_dir / "sessions"
    dirs = {p.name: p for p in sessions_dir.iterdir()} if sessions_dir.is_dir() else {}
    store = Store(repo.state_dir / "state.db") if repo.state_dir.is_dir() else None
    try:
        for session_id in sorted(set(containers) | set(dirs)):
            if only_session and session_id != only_session:
                continue
            try:
                _collect_one(repo, session_id, containers.get(session_id), dirs.get(session_id),
                             store, report, include_finished, grace_seconds)
            except (AgentRuntimeError, OSError, docker.errors.DockerException) as exc:
                report.errors.append(f"{session_id}: {exc}")
        _finish_dead_runs(store)
        _collect_database_servers(client, store, report)
    finally:
        if store is not None:
            store.close()
    return report


def _finish_dead_runs(store: Store | None) -> None:
    """Runs whose owner died without finishing are marked ``crashed``."""
    if store is None:
        return
    for run in store.list_runs():
        if run.finished_at is None and not _alive(run.owner_pid, run.owner_start_time):
            store.finish_run(run.id, "crashed",
                             warnings=["the agentrt process died; sessions reconciled by gc"])


def _collect_database_servers(client: docker.DockerClient | None, store: Store | None,
                              report: GcReport) -> None:
    """Remove shared PostgreSQL servers whose run is over (finished or owner dead)."""
    if client is None or store is None:
        return
    from runtime.postgres import stop_shared_server

    with contextlib.suppress(docker.errors.DockerException):
        servers = client.containers.list(all=True, filters={"label": "agentrt.role=database"})
        for server in servers:
            run_id = server.labels.get("agentrt.run", "")
            try:
                run = store.find_run(run_id)
            except NotFoundError:
                continue  # another repository's run: not ours to judge
            if run.finished_at is None and _alive(run.owner_pid, run.owner_start_time):
                continue
            stop_shared_server(run_id, client)
            report.removed_containers.append(server.name)


def _collect_one(repo: MainRepo, session_id: str, container: Any, session_dir: Path | None,
                 store: Store | None, report: GcReport, include_finished: bool,
                 grace_seconds: int) -> None:
    marker = SessionMarker.read(session_dir) if session_dir else None
    if marker is None and container is None and session_dir is not None and \
            time.time() - session_dir.stat().st_mtime < YOUNG_SECONDS:
        # Possibly being created right now by a live process that has not written its marker.
        report.skipped_live.append(session_id)
        return
    labels = container.labels if container is not None else {}
    pid = labels.get(LABEL_OWNER_PID) or (marker.owner_pid if marker else None)
    start = labels.get(LABEL_OWNER_START) or (marker.owner_start_time if marker else None)
    row = None
    if store is not None:
        with contextlib.suppress(NotFoundError):
            row = store.get_session(session_id)
    finished = row is not None and row.result.status.is_final
    if _alive(pid, start) and not (finished and include_finished and marker and marker.keep):
        report.skipped_live.append(session_id)
        return
    if container is not None:
        with contextlib.suppress(docker.errors.DockerException):
            container.reload()
            if container.status == "running":
                container.stop(timeout=grace_seconds)
    branch = marker.branch if marker else (row.branch if row else None)
    if session_dir is not None and branch and repo.branch_head(branch):
        volume = open_volume(session_dir)
        if volume.workspace.is_dir():
            head = snapshot(repo, volume.workspace, session_id, branch,
                            session_dir / "snapshot.index")
            report.saved_branches[branch] = head
    if store is not None and row is not None and not finished:
        result = row.result
        result.status = SessionStatus.CRASHED
        result.reason = "the agentrt process owning this session died; work saved by gc"
        result.finished_at = utcnow()
        if branch:
            result.head_commit = repo.branch_head(branch)
        store.upsert_session(result, row.run_id)
        store.add_event(row.run_id, "gc", "reconciled orphaned session", session_id=session_id)
    if container is not None:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)
        report.removed_containers.append(container.name)
    if session_dir is not None:
        open_volume(session_dir).remove()
        report.removed_sessions.append(session_id)


def reconcile_on_start(repo: MainRepo, client: docker.DockerClient | None) -> GcReport:
    """Called when a run starts: recover orphans of dead processes, leave finished ones alone."""
    return collect_garbage(repo, client, include_finished=False)
