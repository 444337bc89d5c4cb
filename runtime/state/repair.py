"""A lost or damaged state database: noticing it, working around it, rebuilding it.

The state database (``.git/agentrt/state.db``) is the only record of runs and sessions, but
not the only trace of them. Every session leaves a branch ``agent/<task>/<6 hex>`` in the
repository, a directory with its marker (``<volumes root>/sessions/<id>/session.json``) until
``gc`` removes it, and its saved output (``.git/agentrt/logs/<id>.log``). From these:

* :func:`agentrt_traces` says whether agentrt has worked in a repository; the store refuses
  to carry on silently with an existing but empty database where it has (its contents were
  lost). A missing file is a new database: sessions run through the Python API alone leave
  branches and logs but never make one.
* :func:`open_store_for_gc` opens the database for ``gc``, or gives None (and logs a warning)
  when it is damaged, so ``gc`` still cleans up from Docker labels and the disk.
* :func:`repair_state` (``agentrt gc --repair-state``) moves a damaged database aside, as
  ``state.db.broken-<UTC time>`` with its ``-wal`` and ``-shm``, and writes a new one. Rows
  still readable in the broken file are kept as they were. Every other session is rebuilt
  from its branch, marker and log with status ``crashed`` and reason :data:`REBUILT_REASON`:
  how it really ended is not known. Sessions go under their run when a marker or a readable
  row names it, else under one run ``r<time>-rebuilt``; runs that had to be rebuilt get
  status ``rebuilt`` and a warning. Events and samples are not rebuilt.

The decision (:func:`plan_rebuild`) is a pure function of what was found.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from runtime.engine.volumes import known_volume_roots
from runtime.errors import GitError, StateDamagedError, StateError
from runtime.git.safe_git import MainRepo, run_git
from runtime.models import SessionResult, SessionStatus
from runtime.paths import logs_dir
from runtime.state.schema import RESOURCE_COLUMNS, RunRow, SessionRow, run_row, session_row
from runtime.state.store import Store

log = logging.getLogger(__name__)

STATE_DB = "state.db"
REBUILT_REASON = "rebuilt from branches after the state database was lost; final status unknown"
REBUILT_RUN_WARNING = (
    "rebuilt by `agentrt gc --repair-state` after the state database was lost: this run's "
    "target, configuration, events and samples are unknown"
)
REBUILT_RUN_STATUS = "rebuilt"

_BRANCH_RE = re.compile(r"^agent/([a-z0-9][a-z0-9-]{0,39})/([0-9a-f]{4,16})$")
_SESSION_RE = re.compile(r"^([a-z0-9][a-z0-9-]{0,39})-([0-9a-f]{4,16})$")
_REFLOG_TIME = re.compile(r"@\{(\d+)\}$")

T = TypeVar("T", RunRow, SessionRow)


# -- what agentrt left behind ----------------------------------------------------------------


def git_dir_of(state_dir: Path) -> Path | None:
    """The git directory a state directory belongs to (``<git dir>/agentrt``), or None."""
    parent = state_dir.parent
    if state_dir.name == "agentrt" and (parent / "HEAD").is_file():
        return parent
    return None


def agent_branches(git_dir: Path) -> dict[str, str]:
    """Every agentrt session branch (``agent/<task>/<hex>``) of a repository -> its head."""
    try:
        proc = run_git(["for-each-ref", "--format=%(refname:short)%00%(objectname)",
                        "refs/heads/agent/"], git_dir=git_dir, cwd=git_dir, timeout=60)
    except GitError:
        return {}
    heads: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        branch, _, head = line.partition("\0")
        if _BRANCH_RE.match(branch):
            heads[branch] = head
    return heads


def session_dirs(state_dir: Path) -> dict[str, Path]:
    """Every ``sessions/<id>`` directory under the repository's volumes roots."""
    found: dict[str, Path] = {}
    for root in known_volume_roots(state_dir):
        with contextlib.suppress(OSError):
            for path in (root / "sessions").iterdir():
                if path.is_dir():
                    found.setdefault(path.name, path)
    return found


def saved_logs(state_dir: Path) -> dict[str, Path]:
    """Every saved session log ``logs/<session id>.log``."""
    with contextlib.suppress(OSError):
        return {p.stem: p for p in logs_dir(state_dir).glob("*.log") if p.is_file()}
    return {}


def agentrt_traces(state_dir: Path) -> list[str]:
    """What says agentrt has worked here, e.g. ``["3 agent/* branches"]``; empty if nothing."""
    git_dir = git_dir_of(state_dir)
    counts = [
        (len(agent_branches(git_dir)) if git_dir else 0, "agent/* branch"),
        (len(session_dirs(state_dir)), "session directory"),
        (len(saved_logs(state_dir)), "saved session log"),
    ]
    return [f"{n} {noun if n == 1 else _plural(noun)}" for n, noun in counts if n]


def _plural(noun: str) -> str:
    if noun.endswith("y"):
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith("h") else "s")


# -- gc without a usable database ------------------------------------------------------------


def open_store_for_gc(state_dir: Path) -> Store | None:
    """The state database for ``gc``; None when there is no state directory, or when the
    database is damaged (a warning naming the repair is logged), so that ``gc`` can still
    clean up by Docker label and on disk. Other StateErrors (a newer schema) propagate."""
    if not state_dir.is_dir():
        return None
    try:
        return Store(state_dir / STATE_DB)
    except StateDamagedError as exc:
        log.warning("%s. Meanwhile gc cleans up from Docker labels and the disk only", exc)
        return None


# -- rebuilding ------------------------------------------------------------------------------


@dataclass
class FoundSession:
    """What the branch, the marker and the log say about one session (any may be missing)."""

    session_id: str
    task_id: str
    branch: str
    head_commit: str | None = None
    base_commit: str = ""
    run_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


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


@dataclass
class RepairReport:
    """What ``gc --repair-state`` found and did. ``damage`` is None when nothing was wrong."""

    damage: str | None = None
    moved_aside: list[str] = field(default_factory=list)
    kept_runs: list[str] = field(default_factory=list)
    kept_sessions: list[str] = field(default_factory=list)
    rebuilt_runs: list[str] = field(default_factory=list)
    rebuilt_sessions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return dict(self.__dict__)


def find_sessions(repo: MainRepo) -> list[FoundSession]:
    """Sessions known from branches, session markers and saved logs (merged by session id)."""
    from runtime.state.recovery import SessionMarker

    found: dict[str, FoundSession] = {}

    def get(session_id: str, task_id: str, branch: str) -> FoundSession:
        return found.setdefault(session_id, FoundSession(session_id, task_id, branch))

    for branch, head in agent_branches(repo.git_dir).items():
        match = _BRANCH_RE.match(branch)
        if match is None:
            continue
        task_id, suffix = match.groups()
        session = get(f"{task_id}-{suffix}", task_id, branch)
        session.head_commit = head
        session.base_commit, session.started_at = _branch_origin(repo, branch)
    for session_id, path in session_dirs(repo.state_dir).items():
        marker = SessionMarker.read(path)
        match = _SESSION_RE.match(session_id)
        if marker is None or match is None:
            continue
        session = get(session_id, match.group(1), marker.branch)
        session.run_id = marker.run_id
        session.started_at = session.started_at or _mtime(path)
    for session_id, path in saved_logs(repo.state_dir).items():
        match = _SESSION_RE.match(session_id)
        if match is None:
            continue
        task_id, suffix = match.groups()
        session = get(session_id, task_id, f"agent/{task_id}/{suffix}")
        session.finished_at = _mtime(path)
    return sorted(found.values(), key=lambda s: (_time(s.started_at), s.session_id))


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
    plan.sessions.sort(key=lambda item: (_time(item[1].started_at), item[1].id))
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


def repair_state(repo: MainRepo, *, now: datetime | None = None) -> RepairReport:
    """Repair the state database of ``repo`` if it is damaged or lost; see the module doc.

    A healthy database is left alone (``damage`` None); a missing one is rebuilt when
    agentrt's traces exist. StateError, with nothing changed,
    if the database is too new or foreign, or if a session or run's owner is still alive.
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    path = repo.state_dir / STATE_DB
    report = RepairReport()
    traces = agentrt_traces(repo.state_dir)
    if not path.exists() and traces:
        # Deleted (or never made: sessions run through the Python API alone); rebuild anyway.
        report.damage = f"state database {path} is missing ({'; '.join(traces)})"
    else:
        try:
            with Store(path):
                return report
        except StateDamagedError as exc:
            report.damage = str(exc)
    kept_runs, kept_sessions = salvage_rows(path)
    found = find_sessions(repo)
    _refuse_if_alive(repo, kept_runs)
    report.moved_aside = [str(p) for p in move_aside(path, moment)]
    plan = plan_rebuild(kept_runs, kept_sessions, found, str(repo.root), moment)
    with Store(path, allow_empty=True) as store:
        write_plan(store, plan, moved_to=report.moved_aside[0] if report.moved_aside else None)
    report.kept_runs = [p.row.id for p in plan.runs if not p.rebuilt]
    report.rebuilt_runs = [p.row.id for p in plan.runs if p.rebuilt]
    kept = {s.id for s in kept_sessions}
    report.kept_sessions = [r.id for _, r, _ in plan.sessions if r.id in kept]
    report.rebuilt_sessions = [r.id for _, r, _ in plan.sessions if r.id not in kept]
    return report


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


def move_aside(path: Path, now: datetime) -> list[Path]:
    """Rename ``path`` and its ``-wal``/``-shm`` to ``<name>.broken-<UTC time>[-wal|-shm]``
    (SQLite still pairs them); return the new paths, database first. Nothing is deleted."""
    stamp = now.astimezone(UTC).strftime("%Y%m%d-%H%M%S")
    base = path.with_name(f"{path.name}.broken-{stamp}")
    n = 1
    while any(base.with_name(base.name + t).exists() for t in ("", "-wal", "-shm")):
        n += 1
        base = path.with_name(f"{path.name}.broken-{stamp}-{n}")
    moved = []
    for tail in ("", "-wal", "-shm"):
        source = path.with_name(path.name + tail)
        if source.exists():
            target = base.with_name(base.name + tail)
            try:
                os.replace(source, target)
            except OSError as exc:
                raise StateError(f"cannot move {source} aside to {target}: {exc}") from exc
            moved.append(target)
    return moved


def salvage_rows(path: Path) -> tuple[list[RunRow], list[SessionRow]]:
    """The ``runs`` and ``sessions`` rows still readable in a damaged database (read-only).

    Each table is read forwards and backwards by rowid, so rows on both sides of a corrupt
    page are found; rows that do not parse are skipped.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return [], []
    for query in ("mode=ro", "immutable=1"):
        try:
            conn = sqlite3.connect(f"{path.absolute().as_uri()}?{query}", uri=True)
        except sqlite3.Error:
            continue
        try:
            conn.row_factory = sqlite3.Row
            runs = _readable(conn, "runs", run_row)
            sessions = _readable(conn, "sessions", session_row)
        finally:
            conn.close()
        if runs or sessions:
            return runs, sessions
    return [], []


def _readable(conn: sqlite3.Connection, table: str,
              parse: Callable[[sqlite3.Row], T]) -> list[T]:
    rows: dict[str, T] = {}
    for order in ("ASC", "DESC"):
        # ``table`` is one of two literals above, never caller text.
        with contextlib.suppress(sqlite3.Error):
            for raw in conn.execute(f"SELECT * FROM {table} ORDER BY rowid {order}"):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    parsed = parse(raw)
                    rows.setdefault(parsed.id, parsed)
    return list(rows.values())


def _refuse_if_alive(repo: MainRepo, runs: list[RunRow]) -> None:
    from runtime.state.liveness import owner_alive
    from runtime.state.recovery import SessionMarker

    for session_id, path in session_dirs(repo.state_dir).items():
        marker = SessionMarker.read(path)
        if marker and owner_alive(marker.owner_pid, marker.owner_start_time):
            raise StateError(
                f"session {session_id} is still owned by a live agentrt process (pid "
                f"{marker.owner_pid}); stop its run (`agentrt stop {marker.run_id}`) or let it "
                "finish, then repair the state database")
    host = socket.gethostname()
    for run in runs:
        if run.finished_at is None and run.owner_host == host and \
                owner_alive(run.owner_pid, run.owner_start_time):
            raise StateError(f"run {run.id} is still going (pid {run.owner_pid}); stop it or "
                             "let it finish, then repair the state database")


def _branch_origin(repo: MainRepo, branch: str) -> tuple[str, datetime | None]:
    """(the commit the branch was created at, when), from its reflog; ("", None) without one."""
    try:
        proc = repo.git("reflog", "show", "--date=unix", "--format=%H %gd",
                        f"refs/heads/{branch}", "--", timeout=60)
    except GitError:
        return "", None
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        return "", None
    commit, _, selector = lines[-1].partition(" ")
    stamp = _REFLOG_TIME.search(selector)
    return commit, datetime.fromtimestamp(int(stamp.group(1)), UTC) if stamp else None


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None


def _time(moment: datetime | None) -> float:
    return moment.timestamp() if moment else float("inf")
