"""Crash recovery and garbage collection: find leftovers by label and on disk, save, remove.

A session is *orphaned* when the agentrt process that owns it is dead (pid plus process start
time, so a reused pid is not mistaken for life). For each orphaned or finished-but-kept session
:func:`collect_garbage`

1. stops its container (SIGTERM, grace, SIGKILL),
2. brings its work home exactly as a normal exit does: a harvest container reads the tree and
   only a verified bundle reaches the branch (the volume is remounted if needed). A session
   whose checkout never completed has nothing of the agent's and is not harvested,
3. records it as ``crashed`` (if it had not finished; saying whether it died before its
   container started) and
4. removes container, database, mount, loop device and session directory, but only once the
   work is home: if the harvest cannot finish (engine away, disk full) the volume is kept and
   the next gc tries again.

Sessions whose harvest failed at the end of a run (``work = kept``) are retried the same way.
It never deletes a branch and never touches a session whose owner is alive.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from runtime import paths
from runtime.config import RunConfig
from runtime.engine.container import ended_at_deadline
from runtime.engine.engine_volumes import list_engine_volumes
from runtime.engine.labels import (
    LABEL_HARVEST,
    LABEL_OWNER_PID,
    LABEL_OWNER_START,
    LABEL_REPO,
    LABEL_SESSION,
    LABEL_TIME_SECONDS,
)
from runtime.engine.remote_volume import RemoteVolume
from runtime.engine.volumes import open_volume
from runtime.errors import AgentRuntimeError, NotFoundError
from runtime.git.harvest import HarvestPlan
from runtime.git.object_store import ensure_store, remove_run_stores
from runtime.git.safe_git import MainRepo
from runtime.git.session_tree import EngineTree, HostTree, SessionTree
from runtime.git.work_home import WorkOutcome, bring_work_home
from runtime.models import SessionStatus, WorkState, utcnow
from runtime.paths import runs_dir
from runtime.state.liveness import recorded_alive
from runtime.state.repair import open_store_for_gc
from runtime.state.run_leftovers import (
    collect_database_servers,
    collect_egress_proxies,
    collect_services,
)
from runtime.state.session_facts import SessionMarker, engine_times, import_policy
from runtime.state.store import Store
from runtime.state.traces import session_dirs

log = logging.getLogger(__name__)


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


def _containers(client: docker.DockerClient | None, repo: MainRepo) -> dict[str, Any]:
    if client is None:
        return {}
    with contextlib.suppress(docker.errors.DockerException):
        found = client.containers.list(all=True, filters={"label": f"{LABEL_REPO}={repo.root}"})
        return {c.labels[LABEL_SESSION]: c for c in found if LABEL_SESSION in c.labels}
    return {}


def _remove_stale_harvests(client: docker.DockerClient | None, repo: MainRepo,
                           report: GcReport) -> None:
    """Harvest containers left by a killed agentrt (their owner is dead)."""
    if client is None:
        return
    with contextlib.suppress(docker.errors.DockerException):
        for container in client.containers.list(
                all=True, filters={"label": [LABEL_HARVEST, f"{LABEL_REPO}={repo.root}"]}):
            labels = container.labels
            if recorded_alive(labels.get(LABEL_OWNER_PID), labels.get(LABEL_OWNER_START)):
                continue
            container.remove(force=True, v=True)
            report.removed_containers.append(str(container.name))


def _remove_dead_run_stores(repo: MainRepo, store: Store | None) -> None:
    """Object stores of runs that finished or whose owner died (rebuilt on demand by a retry)."""
    root = runs_dir(repo.state_dir)
    if store is None or not root.is_dir():
        return
    for run_dir in root.iterdir():
        try:
            run = store.find_run(run_dir.name)
        except NotFoundError:
            continue
        if run.finished_at is not None or not recorded_alive(run.owner_pid, run.owner_start_time):
            remove_run_stores(repo, run.id)


DISCARDED = "discarded with `agentrt discard`: its work was not harvested again"


def collect_garbage(
    repo: MainRepo,
    client: docker.DockerClient | None,
    *,
    only_session: str | None = None,
    include_finished: bool = True,
    grace_seconds: int = 5,
    discard: bool = False,
) -> GcReport:
    """Reconcile every session of ``repo`` whose owner is dead (or that finished and was kept).

    ``discard`` (with ``only_session``): remove that session's container, volume, bundles and
    kept state without running its harvest again (a hostile kept session: a retry would only
    replay its attack); its branch stays where it is.
    """
    if discard and not only_session:
        raise ValueError("discard names one session")
    report = GcReport()
    containers = _containers(client, repo)
    dirs = session_dirs(repo.state_dir)  # every volumes root, not only .git/agentrt
    store = open_store_for_gc(repo.state_dir)  # None (and a warning) when it is damaged
    try:
        for session_id in sorted(set(containers) | set(dirs)):
            if only_session and session_id != only_session:
                continue
            try:
                _collect_one(repo, client, session_id, containers.get(session_id),
                             dirs.get(session_id),
                             store, report, include_finished, grace_seconds, discard)
            except (AgentRuntimeError, OSError, docker.errors.DockerException) as exc:
                report.errors.append(f"{session_id}: {exc}")
        _remove_stale_harvests(client, repo, report)
        _finish_dead_runs(store)
        _remove_dead_run_stores(repo, store)
        collect_database_servers(client, store, report)
        collect_egress_proxies(client, store, report)
        collect_services(client, store, report)
        if client is not None:
            from runtime.state.swarm_recovery import collect_swarm_leftovers

            collect_swarm_leftovers(client, repo, store, report)
    finally:
        if store is not None:
            store.close()
    return report


def _finish_dead_runs(store: Store | None) -> None:
    """Runs whose owner died without finishing are marked ``crashed``."""
    if store is None:
        return
    for run in store.list_runs():
        if run.finished_at is None and not recorded_alive(run.owner_pid, run.owner_start_time):
            for row in store.list_sessions(run.id, include_finished=False):
                # Its owner died before it had a volume or a container: nothing to save.
                result = row.result
                result.status = SessionStatus.CRASHED
                result.reason = ("the agentrt process died while setting the session up, "
                                 "before its container started; finished by gc")
                result.finished_at = utcnow()
                store.upsert_session(result, run.id)
            store.finish_run(run.id, "crashed",
                             warnings=["the agentrt process died; sessions reconciled by gc"])


def _collect_one(repo: MainRepo, client: docker.DockerClient | None, session_id: str,
                 container: Any, session_dir: Path | None, store: Store | None,
                 report: GcReport, include_finished: bool, grace_seconds: int,
                 discard: bool = False) -> None:
    marker = SessionMarker.read(session_dir) if session_dir else None
    labels = container.labels if container is not None else {}
    pid = labels.get(LABEL_OWNER_PID) or (marker.owner_pid if marker else None)
    start = labels.get(LABEL_OWNER_START) or (marker.owner_start_time if marker else None)
    row = None
    if store is not None:
        with contextlib.suppress(NotFoundError):
            row = store.get_session(session_id)
    finished = row is not None and row.result.status.is_final
    kept_for_retry = marker is not None and marker.work_kept
    if recorded_alive(pid, start) and not kept_for_retry and \
            not (finished and include_finished and marker and marker.keep):
        report.skipped_live.append(session_id)
        return
    if container is not None:
        with contextlib.suppress(docker.errors.DockerException):
            container.reload()
            if container.status == "running":
                container.stop(timeout=grace_seconds)
    branch = marker.branch if marker else (row.branch if row else None)
    work = row.result.work if row is not None else WorkState.NONE
    outcome: WorkOutcome | None = None
    needs_harvest = (not discard and marker is not None and marker.checked_out
                     and session_dir is not None
                     and branch and repo.branch_head(branch)
                     and (kept_for_retry or work in (WorkState.NONE, WorkState.KEPT)))
    if needs_harvest and marker is not None and session_dir is not None and branch:
        outcome = _harvest_orphan(repo, client, session_id, session_dir, marker, branch, store,
                                  row)
        if outcome.state is not WorkState.KEPT and outcome.head:
            report.saved_branches[branch] = outcome.head
    if store is not None and row is not None:
        result = row.result
        if not finished:
            result.status = SessionStatus.CRASHED
            started = container is not None and _ever_started(container)
            result.reason = (
                "the agentrt process owning this session died; work saved by gc" if started
                else "the agentrt process died while setting the session up, before its "
                     "container started; finished by gc")
            result.finished_at = utcnow()
            limit = _own_deadline_seconds(container)
            if limit is not None:  # the container's own deadline ended it, agentrt was gone
                result.status = SessionStatus.TIMED_OUT
                result.reason = f"ran past time_seconds={limit} (stopped by its container)"
                result.exit_code = int(container.attrs["State"]["ExitCode"])
                result.started_at, result.finished_at = engine_times(container.attrs["State"])
        if outcome is not None:
            result.work = outcome.state
            result.head_commit = outcome.head
            result.warnings.extend(w for w in outcome.warnings if w not in result.warnings)
        elif branch and not finished:
            result.head_commit = repo.branch_head(branch)
        if discard:
            result.warnings.append(DISCARDED)
        try:
            store.upsert_session(result, row.run_id)
            store.add_event(row.run_id, "gc", "reconciled session", session_id=session_id)
        except AgentRuntimeError as exc:  # the record waits; the work and the volume do not
            report.errors.append(f"{session_id}: {exc}")
    if container is not None:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)
        report.removed_containers.append(container.name)
    if outcome is not None and outcome.state is WorkState.KEPT:
        # Nothing is deleted until it is safely home: the next gc tries again.
        report.errors.append(f"{session_id}: {'; '.join(outcome.warnings)}")
        if marker is not None and session_dir is not None and not marker.work_kept:
            marker.work_kept = True
            marker.write(session_dir)
        return
    if discard:
        shutil.rmtree(paths.harvest_dir(repo.state_dir, session_id), ignore_errors=True)
    if session_dir is not None:
        if marker is not None and marker.node_id:
            if client is None:
                report.errors.append(f"{session_id}: no engine to remove its volume with")
                return
            from runtime.state.swarm_recovery import remove_node_tree

            remove_node_tree(client, marker, session_id)
            shutil.rmtree(session_dir, ignore_errors=True)
        elif marker is not None and marker.engine_volume:
            if client is None:
                report.errors.append(f"{session_id}: no engine to remove its volume with")
                return
            with contextlib.suppress(NotFoundError):
                _engine_volume(client, session_id).remove()
            shutil.rmtree(session_dir, ignore_errors=True)
        else:
            open_volume(session_dir).remove()
        report.removed_sessions.append(session_id)


def _engine_volume(client: docker.DockerClient | None, session_id: str) -> RemoteVolume:
    """The engine-side volume of ``session_id`` (found by label); NotFoundError if gone."""
    if client is None:
        raise NotFoundError("no engine")
    found = list_engine_volumes(client, session_id)
    if not found:
        raise NotFoundError(f"no engine volume for {session_id}")
    return RemoteVolume(client, found[0])


def _ever_started(container: Any) -> bool:
    with contextlib.suppress(docker.errors.DockerException, KeyError, TypeError):
        return not str(container.attrs["State"]["StartedAt"]).startswith("0001-")
    return False


def _own_deadline_seconds(container: Any) -> int | None:
    """time_seconds, if the engine's record says the container's own deadline ended it."""
    with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):
        limit = int(container.labels[LABEL_TIME_SECONDS])
        state = container.attrs["State"]
        if ended_at_deadline(state.get("ExitCode"), *engine_times(state), limit):
            return limit
    return None


def _harvest_orphan(repo: MainRepo, client: docker.DockerClient | None, session_id: str,
                    session_dir: Path, marker: SessionMarker, branch: str,
                    store: Store | None, row: Any) -> WorkOutcome:
    """Bring an orphaned (or kept) session's work home, exactly as its own end would have."""
    if client is None:
        return WorkOutcome(WorkState.KEPT, repo.branch_head(branch),
                           ["no Docker engine to harvest with; the volume is kept"])
    config = RunConfig()
    secrets: list[str] = []
    if store is not None and row is not None:
        with contextlib.suppress(NotFoundError, ValueError):
            config = RunConfig.model_validate_json(store.find_run(row.run_id).config_json)
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            secrets = list(json.loads(row.manifest_json or "{}").get("task", {}).get("secrets", []))
    try:
        tree: SessionTree
        if marker.node_id:
            from runtime.state.swarm_recovery import node_tree

            tree = node_tree(client, marker, session_id)
        elif marker.engine_volume:
            remote = _engine_volume(client, session_id)
            tree = EngineTree(client, remote.volume, marker.uid, marker.gid)
        else:
            tree = HostTree(open_volume(session_dir), marker.uid, marker.gid,
                            ensure_store(repo, marker.run_id, marker.base_commit))
    except AgentRuntimeError as exc:
        return WorkOutcome(WorkState.KEPT, repo.branch_head(branch),
                           [f"cannot reopen the session to harvest it: {exc}; the volume is kept"])
    plan = HarvestPlan(session_id=session_id, base_commit=marker.base_commit,
                       mounts=tuple(tree.harvest_mounts()), store=tree.store, uid=marker.uid,
                       gid=marker.gid, memory_mb=config.resource_limits.memory_mb,
                       scratch_mb=config.resource_limits.disk_mb,
                       runtime=config.runtime, labels={LABEL_REPO: str(repo.root)})
    return bring_work_home(client, repo, plan, branch=branch,
                           policy=import_policy(config, secrets),
                           harvester=lambda plan, dest, limit: tree.harvest(client, plan, dest,
                                                                            limit))


def reconcile_on_start(repo: MainRepo, client: docker.DockerClient | None) -> GcReport:
    """Called when a run starts: recover orphans of dead processes, leave finished ones alone."""
    return collect_garbage(repo, client, include_finished=False)
