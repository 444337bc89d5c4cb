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
A session the warm pool prepared ahead (recorded ``prepared``: no agent ever ran in it) is not
harvested: its container, volume, untouched branch and row are removed.
It never deletes a branch that holds anything of an agent (only the branch of a session whose
agent never started, still at its base) and never touches a session whose owner is alive.
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
from runtime.backends.registry import (
    collect_leftovers,
    kept_elsewhere,
    kept_tree,
    remove_kept_tree,
)
from runtime.config import RunConfig
from runtime.engine.labels import (
    LABEL_HARVEST,
    LABEL_OWNER_PID,
    LABEL_OWNER_START,
    LABEL_REPO,
    LABEL_ROLE,
    LABEL_SESSION,
    LABEL_TIME_SECONDS,
)
from runtime.engine.volumes import found_volume
from runtime.errors import AgentRuntimeError, NotFoundError
from runtime.git.harvest import HarvestPlan
from runtime.git.object_store import remove_run_stores
from runtime.git.safe_git import MainRepo
from runtime.git.work_home import WorkOutcome, bring_work_home
from runtime.models import SessionResult, SessionStatus, WorkState, settle_merge, utcnow
from runtime.paths import runs_dir
from runtime.state.classify import classify, recorded_facts
from runtime.state.liveness import recorded_alive
from runtime.state.repair import open_store_for_gc
from runtime.state.run_leftovers import (
    collect_database_servers,
    collect_egress_proxies,
    collect_services,
)
from runtime.state.schema import SessionRow
from runtime.state.session_facts import SessionMarker, engine_times, import_policy
from runtime.state.store import Store
from runtime.state.traces import session_dirs

log = logging.getLogger(__name__)


@dataclass
class GcReport:
    """What a garbage collection found and did."""

    removed_containers: list[str] = field(default_factory=list)
    removed_sessions: list[str] = field(default_factory=list)
    removed_branches: list[str] = field(default_factory=list)
    """Branches of sessions whose agent never started, still at their base (nothing on them)."""
    lost_work: dict[str, str] = field(default_factory=dict)
    """Sessions whose kept work is gone for good (said once, then recorded ``lost``): why."""
    saved_branches: dict[str, str] = field(default_factory=dict)
    skipped_live: list[str] = field(default_factory=list)
    forgotten_prepared: list[str] = field(default_factory=list)
    """Sessions prepared ahead for a task of a run that died first: their rows are deleted."""
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return dict(self.__dict__)


def _containers(client: docker.DockerClient | None, repo: MainRepo) -> dict[str, Any]:
    if client is None:
        return {}
    with contextlib.suppress(docker.errors.DockerException):
        found = client.containers.list(all=True, filters={"label": f"{LABEL_REPO}={repo.root}"})
        # A run's database server is the run's, not a session's (run_leftovers.py judges it).
        return {c.labels[LABEL_SESSION]: c for c in found if LABEL_SESSION in c.labels
                and c.labels.get(LABEL_ROLE) != "database"}
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
    """Object stores (rebuilt on demand by a retry) and every other per-run file of runs that
    finished or whose owner died."""
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
            # And whatever else the run kept there (its dependency notes): the run is over.
            shutil.rmtree(run_dir, ignore_errors=True)


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
        _mark_lost_work(store, set(containers) | set(dirs), report)
        _remove_stale_harvests(client, repo, report)
        if client is not None:  # without an engine, how their sessions ended is not known
            _finish_dead_runs(repo, store, report, set(containers) | set(dirs))
        _remove_dead_run_stores(repo, store)
        collect_database_servers(client, store, report, repo.root)
        collect_egress_proxies(client, store, report, repo.root)
        collect_services(client, store, report, repo.root)
        if client is not None:
            collect_leftovers(client, repo, store, report)
    finally:
        if store is not None:
            store.close()
    return report


def _mark_lost_work(store: Store | None, present: set[str], report: GcReport) -> None:
    """Sessions recorded ``kept`` whose session directory (volume and marker) is gone while
    their owner is dead: nothing can bring that work home any more. Each is recorded ``lost``
    (where the volume was, and why) once, so ``ps``, ``doctor`` and gc stop offering a retry."""
    if store is None:
        return
    for row in store.list_sessions():
        if row.result.work is not WorkState.KEPT or row.id in present or \
                recorded_alive(row.owner_pid, row.owner_start_time):
            continue
        where = row.volume_path or "its session directory"
        why = (f"work lost: its kept volume at {where} no longer exists (removed outside "
               "agentrt); the branch has only what came home before")
        _record_lost(store, row, why, report)


def _record_lost(store: Store, row: Any, why: str, report: GcReport) -> None:
    result = row.result
    result.work = WorkState.LOST
    result.warnings = [*(w for w in result.warnings if "agentrt recover" not in w), why]
    settle_merge([result])
    try:
        store.upsert_session(result, row.run_id)
        store.add_event(row.run_id, "gc", why, session_id=row.id)
    except AgentRuntimeError as exc:
        report.errors.append(f"{row.id}: {exc}")
        return
    report.lost_work[row.id] = why


def _finish_dead_runs(repo: MainRepo, store: Store | None, report: GcReport,
                      present: set[str]) -> None:
    """Runs whose owner died without finishing are marked ``crashed``; the branches of their
    sessions that never got further than a branch are removed (still at their base).

    A session with a container or a session directory still ``present`` got further: its work
    may be in its tree, and only its own collection (this gc's, or a later one's, e.g. after
    ``agentrt recover`` of another session) may finish it."""
    if store is None:
        return
    for run in store.list_runs():
        if run.finished_at is None and not recorded_alive(run.owner_pid, run.owner_start_time):
            live = [row for row in store.list_sessions(run.id, include_finished=False)
                    if row.id in present]
            if live:
                continue  # the run is finished when its last session is
            for row in store.list_sessions(run.id, include_finished=False):
                if row.status is SessionStatus.PREPARED:  # prepared ahead, never taken
                    _forget_prepared(store, row, report)
                    _remove_unused_branch(repo, row.branch, row.result.base_commit, report,
                                          store, row.id)
                    continue
                # Its owner died before it had a volume or a container: nothing to save.
                result = row.result
                result.status = SessionStatus.CRASHED
                result.reason = ("the agentrt process died while setting the session up, "
                                 "before its container started; finished by gc")
                result.finished_at = utcnow()
                store.upsert_session(result, run.id)
                _remove_unused_branch(repo, row.branch, result.base_commit, report, store,
                                      row.id)
            warnings = ["the agentrt process died; sessions reconciled by gc"]
            merged = [row.id for row in store.list_sessions(run.id)
                      if row.result.merge.status == "merged"]
            if merged:  # it died in the middle of its automatic merge
                warnings.append("merged before the process died: " + ", ".join(merged)
                                + "; `agentrt merge " + run.id + " --strategy auto` merges "
                                "the rest")
            store.finish_run(run.id, "crashed", warnings=warnings)


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
    # Prepared ahead and never taken: nothing of an agent in it, and no task's session.
    prepared = row is not None and row.status is SessionStatus.PREPARED
    kept_for_retry = marker is not None and marker.work_kept
    if recorded_alive(pid, start) and not kept_for_retry and \
            not (finished and include_finished and marker and marker.keep):
        report.skipped_live.append(session_id)
        return
    stopped_by_gc = False
    if container is not None:
        with contextlib.suppress(docker.errors.DockerException):
            container.reload()
            if container.status in ("running", "paused", "restarting"):
                stopped_by_gc = True
                container.stop(timeout=grace_seconds)
                container.reload()
    branch = marker.branch if marker else (row.branch if row else None)
    work = row.result.work if row is not None else WorkState.NONE
    outcome: WorkOutcome | None = None
    needs_harvest = (not discard and not prepared and marker is not None and marker.checked_out
                     and session_dir is not None
                     and branch and repo.branch_head(branch)
                     and (kept_for_retry or work in (WorkState.NONE, WorkState.KEPT)))
    if needs_harvest and marker is not None and session_dir is not None and branch:
        outcome = _harvest_orphan(repo, client, session_id, session_dir, marker, branch, store,
                                  row)
        if outcome.state is WorkState.LOST:
            report.lost_work[session_id] = "; ".join(outcome.warnings)
        elif outcome.state is not WorkState.KEPT and outcome.head:
            report.saved_branches[branch] = outcome.head
    if store is not None and row is not None and prepared:
        _forget_prepared(store, row, report)
    elif store is not None and row is not None:
        result = row.result
        if not finished:
            _classify_orphan(result, row, container, client, stopped_by_gc)
        if outcome is not None:
            if outcome.state is not WorkState.KEPT:  # no retry to offer any more
                result.warnings = [w for w in result.warnings if "agentrt recover" not in w]
            result.work = outcome.state
            result.head_commit = outcome.head
            settle_merge([result])
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
    if marker is not None and (row is None or row.result.started_at is None) and \
            (container is None or not _ever_started(container)):
        _remove_unused_branch(repo, marker.branch, marker.base_commit, report, store,
                              session_id)
    if discard:
        shutil.rmtree(paths.harvest_dir(repo.state_dir, session_id), ignore_errors=True)
    if session_dir is not None:
        if marker is not None and kept_elsewhere(marker):
            if client is None:
                report.errors.append(f"{session_id}: no engine to remove its volume with")
                return
            remove_kept_tree(client, marker, session_id)
            shutil.rmtree(session_dir, ignore_errors=True)
        else:
            found_volume(session_dir).remove()
        report.removed_sessions.append(session_id)


def _forget_prepared(store: Store, row: SessionRow, report: GcReport) -> None:
    """Delete the row of a session prepared ahead whose run died before a task took it: it
    never was a task's session (its branch and volume are removed by the caller)."""
    try:
        store.delete_session(row.id)
    except NotFoundError:
        return
    except AgentRuntimeError as exc:
        report.errors.append(f"{row.id}: {exc}")
        return
    report.forgotten_prepared.append(row.id)


def _remove_unused_branch(repo: MainRepo, branch: str, base: str, report: GcReport,
                          store: Store | None, session_id: str) -> None:
    """The branch of a session whose agent never started (killed while it was set up, or
    prepared ahead and never taken), when it is still at its base: nothing of an agent is on
    it, and no row may name it. Compare-and-swap: a branch that moved is kept. A branch another
    session names (the session an ``agentrt continue`` continued) is that one's: kept."""
    if not branch or not base or repo.branch_head(branch) != base:
        return
    if store is not None and any(r.branch == branch and r.id != session_id
                                 for r in store.list_sessions()):
        return
    with contextlib.suppress(AgentRuntimeError):
        repo.git("update-ref", "-d", f"refs/heads/{branch}", base)
        report.removed_branches.append(branch)


def _ever_started(container: Any) -> bool:
    with contextlib.suppress(docker.errors.DockerException, KeyError, TypeError):
        return not str(container.attrs["State"]["StartedAt"]).startswith("0001-")
    return False


def _classify_orphan(result: SessionResult, row: SessionRow | None, container: Any,
                     client: docker.DockerClient | None, stopped_by_gc: bool) -> None:
    """How a session whose agentrt process died ended, from the evidence: the engine's record
    of its container (exit code, OOM kill, finish time against its deadline, whether gc had to
    stop it) through the same classifier as a live session. Without a container there is
    nothing to classify: it never started (finished ``crashed``), or there is no engine to
    ask (left as it is for a gc that has one)."""
    if container is None and client is None:
        return  # no engine to ask: left for a gc that has one, rather than guessed
    result.finished_at = utcnow()
    if container is None or not _ever_started(container):
        result.status = SessionStatus.CRASHED
        result.reason = ("the agentrt process died while setting the session up, before its "
                         "container started; finished by gc")
        return
    state = dict(container.attrs.get("State") or {})
    limits = RunConfig().resource_limits
    with contextlib.suppress(ValueError):
        manifest = row.manifest if row is not None else None
        if manifest is not None:
            limits = manifest.limits
    with contextlib.suppress(KeyError, TypeError, ValueError):
        limits = limits.model_copy(update={"time_seconds": int(container.labels[
            LABEL_TIME_SECONDS])})
    facts = recorded_facts(state, limits.time_seconds, stopped_by_gc=stopped_by_gc)
    result.status, result.reason = classify(facts, limits)
    result.exit_code = facts.exit_code
    if facts.own_deadline:
        result.reason = f"{result.reason} (stopped by its container)"
    elif not stopped_by_gc:
        result.warnings.append("it ended after its agentrt process died; recorded by gc from "
                               "the engine's record")
    started, finished = engine_times(state)
    if started is not None and finished is not None:
        result.started_at, result.finished_at = started, finished
        result.duration_s = max(0.0, round((finished - started).total_seconds(), 3))


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
        found = kept_tree(client, repo, marker, session_dir, session_id)
        if found is None:
            return WorkOutcome(WorkState.LOST, repo.branch_head(branch), [
                f"work lost: its kept volume {marker.engine_volume} no longer exists on "
                "the engine (removed outside agentrt); the branch has only what came home "
                "before"])
        tree = found
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
