"""The rows a rebuilt state database gets: readable rows kept, every other session found in
the repository's traces (:mod:`runtime.state.traces`) recorded as ``crashed`` with
:data:`REBUILT_REASON`, under its run or a rebuilt one.

The decision (:func:`plan_rebuild`) is a pure function of what was found; :func:`write_plan`
writes it into an empty database.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from runtime.models import SessionResult, SessionStatus
from runtime.state.schema import RESOURCE_COLUMNS, RunRow, SessionRow
from runtime.state.store import Store
from runtime.state.traces import FoundSession, sort_time

REBUILT_REASON = "rebuilt from branches after the state database was lost; final status unknown"
REBUILT_RUN_WARNING = (
    "rebuilt by `agentrt gc --repair-state` after the state database was lost: this run's "
    "target, configuration, events and samples are unknown"
)
REBUILT_RUN_STATUS = "rebuilt"


@dataclass
class RunPlan:
    """One run to write: a row kept from the broken file, or one rebuilt."""

    row: RunRow
    rebuilt: bool


@dataclass
class RebuildPlan:
    """What the new database will hold: runs, then ``(run id, result, resources)``."""

    runs: list[RunPlan] = field(default_factory=list)
    sessions: list[tuple[str, SessionResult, dict[str, Any]]] = field(default_factory=list)



def plan_rebuild(kept_runs: list[RunRow], kept_sessions: list[SessionRow],
                 found: list[FoundSession], repo_root: str, now: datetime) -> RebuildPlan:
    """Decide the new database's rows. Pure.

    Readable rows are kept as they were. Other sessions become ``crashed`` with
    :data:`REBUILT_REASON`, under the run their marker names, else under the kept run that
    was going when their branch was made, else under ``r<now>-rebuilt``.
    A run with no readable row is rebuilt: status ``rebuilt``, started at its first session,
    finished at its last, base commit the one its sessions share (else empty).
    """
    plan = RebuildPlan()
    runs = {r.id: r for r in kept_runs}
    known = {s.id for s in kept_sessions}
    fallback_run = now.strftime("r%Y%m%d-%H%M%S-rebuilt")
    members: dict[str, list[FoundSession]] = {}
    for session in found:
        if session.session_id not in known:
            run_id = session.run_id or _run_going_at(kept_runs, session.started_at, now)
            members.setdefault(run_id or fallback_run, []).append(session)
    session_runs = {s.run_id for s in kept_sessions} | set(members)
    for run_id in sorted(session_runs - set(runs)):
        group = members.get(run_id, [])
        kept = [s for s in kept_sessions if s.run_id == run_id]
        starts = [s.started_at for s in group if s.started_at] + \
                 [s.result.started_at for s in kept if s.result.started_at]
        ends = [end for s in group if (end := s.finished_at or s.started_at) is not None]
        bases = Counter([s.base_commit for s in group if s.base_commit]
                        + [s.result.base_commit for s in kept if s.result.base_commit])
        start = min(starts, default=now)
        runs[run_id] = RunRow(
            id=run_id, repo=repo_root, base_commit=bases.most_common(1)[0][0] if bases else "",
            target=None, merge="none", config_json="{}", started_at=start,
            finished_at=max([*ends, start]), status=REBUILT_RUN_STATUS,
            warnings=[REBUILT_RUN_WARNING], owner_pid=None, owner_start_time=None,
            owner_host=None)
    kept_ids = {r.id for r in kept_runs}
    plan.runs = [RunPlan(r, r.id not in kept_ids)
                 for r in sorted(runs.values(), key=lambda r: (r.started_at, r.id))]
    for row in kept_sessions:
        resources = {name: getattr(row, name) for name in RESOURCE_COLUMNS}
        plan.sessions.append((row.run_id, row.result, resources))
    for run_id, group in members.items():
        for session in group:
            result = SessionResult(
                id=session.session_id, task_id=session.task_id, branch=session.branch,
                base_commit=session.base_commit, head_commit=session.head_commit,
                status=SessionStatus.CRASHED, reason=REBUILT_REASON,
                started_at=session.started_at, finished_at=session.finished_at)
            plan.sessions.append((run_id, result, {}))
    plan.sessions.sort(key=lambda item: (sort_time(item[1].started_at), item[1].id))
    return plan


def _run_going_at(runs: list[RunRow], moment: datetime | None, now: datetime) -> str | None:
    """The latest-started run whose lifetime covers ``moment`` (reflog times are whole
    seconds, so a run may seem to start up to 2 s after its first branch)."""
    if moment is None:
        return None
    going = [r for r in runs
             if r.started_at.timestamp() - 2 <= moment.timestamp()
             <= (r.finished_at or now).timestamp()]
    return max(going, key=lambda r: r.started_at).id if going else None


def write_plan(store: Store, plan: RebuildPlan, moved_to: str | None = None) -> None:
    """Write the planned rows into an empty database, and one ``repair`` event per run."""
    for item in plan.runs:
        run = item.row
        store.create_run(run.id, run.repo, run.base_commit, run.target, run.merge,
                         run.config_json, run.owner_pid, run.owner_start_time, run.owner_host,
                         started_at=run.started_at)
        if run.finished_at is not None:
            store.finish_run(run.id, run.status, warnings=run.warnings,
                             finished_at=run.finished_at)
    for run_id, result, resources in plan.sessions:
        store.upsert_session(result, run_id, **resources)
    where = f" (the damaged file is {moved_to})" if moved_to else ""
    for item in plan.runs:
        what = "rebuilt from branches, session markers and logs" if item.rebuilt else \
            "kept from the damaged state database"
        store.add_event(item.row.id, "repair", f"{what} by gc --repair-state{where}")
