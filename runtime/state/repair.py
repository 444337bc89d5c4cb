"""A lost or damaged state database: noticing it, working around it, rebuilding it.

The state database (``.git/agentrt/state.db``) is the only record of runs and sessions, but
not the only trace of them. Every session leaves a branch ``agent/<task>/<6 hex>`` in the
repository, a directory with its marker (``<volumes root>/sessions/<id>/session.json``) until
``gc`` removes it, and its saved output (``.git/agentrt/logs/<id>.log``). From these:

* :func:`~runtime.state.traces.agentrt_traces` says whether agentrt has worked in a
  repository; the store refuses to carry on silently with an existing but empty database
  where it has (its contents were lost). A missing file is a new database: sessions run
  through the Python API alone leave branches and logs but never make one.
* :func:`open_store_for_gc` opens the database for ``gc``, or gives None (and logs a warning)
  when it is damaged, so ``gc`` still cleans up from Docker labels and the disk.
* :func:`repair_state` (``agentrt gc --repair-state``) moves a damaged database aside, as
  ``state.db.broken-<UTC time>`` with its ``-wal`` and ``-shm``, and writes a new one. Rows
  still readable in the broken file are kept as they were. Every other session is rebuilt
  from its branch, marker and log with status ``crashed`` and reason
  :data:`~runtime.state.rebuild.REBUILT_REASON`: how it really ended is not known. Sessions
  go under their run when a marker or a readable row names it, else under one run
  ``r<time>-rebuilt``; runs that had to be rebuilt get status ``rebuilt`` and a warning.
  Events and samples are not rebuilt.

What the traces are and what they say is :mod:`runtime.state.traces`; the rows a rebuilt
database gets, decided by a pure function of what was found, :mod:`runtime.state.rebuild`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from runtime import paths
from runtime.errors import StateDamagedError, StateError
from runtime.git.safe_git import MainRepo
from runtime.state.rebuild import plan_rebuild, write_plan
from runtime.state.schema import RunRow, SessionRow, run_row, session_row
from runtime.state.store import Store
from runtime.state.traces import agentrt_traces, find_sessions, session_dirs

log = logging.getLogger(__name__)

T = TypeVar("T", RunRow, SessionRow)

# -- gc without a usable database ------------------------------------------------------------


def open_store_for_gc(state_dir: Path) -> Store | None:
    """The state database for ``gc``; None when there is no state directory, or when the
    database is damaged (a warning naming the repair is logged), so that ``gc`` can still
    clean up by Docker label and on disk. Other StateErrors (a newer schema) propagate."""
    if not state_dir.is_dir():
        return None
    try:
        return Store(paths.state_db(state_dir))
    except StateDamagedError as exc:
        log.warning("%s. Meanwhile gc cleans up from Docker labels and the disk only", exc)
        return None


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


def repair_state(repo: MainRepo, *, now: datetime | None = None) -> RepairReport:
    """Repair the state database of ``repo`` if it is damaged or lost; see the module doc.

    A healthy database is left alone (``damage`` None); a missing one is rebuilt when
    agentrt's traces exist. StateError, with nothing changed,
    if the database is too new or foreign, or if a session or run's owner is still alive.
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    path = paths.state_db(repo.state_dir)
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
    from runtime.state.session_facts import SessionMarker

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
