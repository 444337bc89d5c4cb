"""The state database of one repository: runs, sessions, events and resource samples.

One SQLite file (the runtime uses ``<repo>/.git/agentrt/state.db``) shared by every agentrt
process working on the repository: a running coordinator, ``ps``, ``logs -f``, ``gc``.
:class:`Store` reads and writes its rows; how the file is opened, checked for damage, migrated
and written one retried transaction at a time, and what callers may rely on there, is
:mod:`runtime.state.connection`. Also:

* **No secret values are stored.** Callers pass environment *keys* only (the task's
  ``secrets`` names, ``Manifest.env_keys``); ``config_json`` must be built the same way.

Timestamps: run start/finish are ISO-8601 text (they round-trip exactly into the report);
events, samples, deadlines and row bookkeeping are unix seconds as REAL (cheap to compare).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Unpack

from runtime.errors import NotFoundError, StateError
from runtime.models import RunReport, SessionResult, SessionStatus, settle_merge
from runtime.state.connection import StoreConnection
from runtime.state.schema import (
    RESOURCE_COLUMNS,
    SCHEMA_VERSION,
    UPDATABLE_COLUMNS,
    Event,
    RunRow,
    Sample,
    SessionColumns,
    SessionResources,
    SessionRow,
    run_row,
    session_row,
)

__all__ = [
    "SCHEMA_VERSION",
    "Event",
    "RunRow",
    "Sample",
    "SessionColumns",
    "SessionResources",
    "SessionRow",
    "Store",
]


class Store(StoreConnection):
    """The state database at ``path`` (created, with its parent directory, if missing).

    StateDamagedError if the file is corrupt, or empty while agentrt's traces exist next to
    it (``allow_empty`` lifts the latter: only :mod:`runtime.state.repair` passes it, to
    write the rebuilt database).
    """

    # -- runs ----------------------------------------------------------------------------------

    def create_run(
        self, run_id: str, repo: str, base_commit: str, target: str | None, merge: str,
        config_json: str, owner_pid: int | None, owner_start_time: float | None,
        owner_host: str | None, *, started_at: datetime | None = None,
    ) -> RunRow:
        """Record a new run (status ``running``). StateError if ``run_id`` already exists.

        ``config_json`` must not contain secret values, only environment keys.
        """
        started = _iso(started_at or datetime.now(UTC))

        def work(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO runs (id, repo, base_commit, target, merge, config_json,"
                    " started_at, owner_pid, owner_start_time, owner_host)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, repo, base_commit, target, merge, config_json, started,
                     owner_pid, owner_start_time, owner_host),
                )
            except sqlite3.IntegrityError as exc:
                raise StateError(f"run '{run_id}' already exists in {self.path}") from exc

        self._transaction(work, write=True)
        return self.find_run(run_id)

    def finish_run(
        self, run_id: str, status: str, *, warnings: Sequence[str] = (),
        finished_at: datetime | None = None,
    ) -> None:
        """Mark a run finished. ``status`` ``interrupted`` makes its report exit 130."""
        finished = _iso(finished_at or datetime.now(UTC))
        self._write_one(
            "UPDATE runs SET status = ?, finished_at = ?, warnings_json = ? WHERE id = ?",
            (status, finished, json.dumps(list(warnings)), run_id),
            missing=f"no run '{run_id}'",
        )

    def set_run_merge(self, run_id: str, merge: str, target: str | None) -> None:
        """Record the strategy and target of the latest merge of a run (`agentrt merge`)."""
        self._write_one("UPDATE runs SET merge = ?, target = ? WHERE id = ?",
                        (merge, target, run_id), missing=f"no run '{run_id}'")

    def find_run(self, prefix: str) -> RunRow:
        """The one run whose id starts with ``prefix`` (an exact id always wins)."""
        return run_row(self._find("runs", "run", prefix))

    def latest_run(self) -> RunRow | None:
        """The most recently started run, or None when there is none."""
        rows = self._read("SELECT * FROM runs ORDER BY started_at DESC, rowid DESC LIMIT 1")
        return run_row(rows[0]) if rows else None

    def list_runs(self) -> list[RunRow]:
        """Every run, oldest first."""
        return [run_row(r) for r in self._read("SELECT * FROM runs ORDER BY started_at, rowid")]

    def run_report(self, run_id: str) -> RunReport:
        """The run's report rebuilt from the rows (sessions in creation order); a session whose
        work is off its branch reads ``not_merged`` whatever was recorded."""

        def work(conn: sqlite3.Connection) -> RunReport:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no run '{run_id}'")
            run = run_row(row)
            sessions = conn.execute(
                "SELECT * FROM sessions WHERE run_id = ? ORDER BY created_at, rowid", (run_id,)
            ).fetchall()
            results = [session_row(s).result for s in sessions]
            settle_merge(results)  # a record from before work states decided merges
            return RunReport(
                run_id=run.id, repo=run.repo, base_commit=run.base_commit, target=run.target,
                merge=run.merge, started_at=run.started_at, finished_at=run.finished_at,
                sessions=results, warnings=run.warnings,
                interrupted=run.status == "interrupted",
            )

        return self._transaction(work, write=False)

    # -- sessions ------------------------------------------------------------------------------

    def upsert_session(
        self, result: SessionResult, run_id: str, **resources: Unpack[SessionResources]
    ) -> None:
        """Insert or update a session from its result; only the given resources are changed.

        StateError if the session already exists under another run; NotFoundError if the run
        does not exist.
        """
        cols = _checked(resources, RESOURCE_COLUMNS)
        now = time.time()
        names = ["id", "run_id", "task_id", "branch", "status", "result_json",
                 "created_at", "updated_at", *cols]
        values = [result.id, run_id, result.task_id, result.branch, result.status.value,
                  result.model_dump_json(), now, now, *cols.values()]
        updates = ["task_id", "branch", "status", "result_json", "updated_at", *cols]
        sql = (
            f"INSERT INTO sessions ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
            f" ON CONFLICT(id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in updates)}"
            " WHERE sessions.run_id = excluded.run_id"
        )

        def work(conn: sqlite3.Connection) -> None:
            try:
                changed = conn.execute(sql, values).rowcount
            except sqlite3.IntegrityError as exc:
                raise NotFoundError(f"no run '{run_id}'") from exc
            if changed == 0:
                raise StateError(f"session '{result.id}' belongs to another run than '{run_id}'")

        self._transaction(work, write=True)

    def update_session(self, session_id: str, **columns: Unpack[SessionColumns]) -> None:
        """Change some columns of a session. A new ``status`` is also written into its result."""
        cols = _checked(columns, UPDATABLE_COLUMNS)
        status = cols.pop("status", None)

        def work(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT result_json FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no session '{session_id}'")
            sets = dict(cols, updated_at=time.time())
            if status is not None:
                result = SessionResult.model_validate_json(row["result_json"])
                result.status = SessionStatus(status)
                sets.update(status=result.status.value, result_json=result.model_dump_json())
            assignments = ", ".join(f"{name} = ?" for name in sets)
            conn.execute(
                f"UPDATE sessions SET {assignments} WHERE id = ?", [*sets.values(), session_id]
            )

        self._transaction(work, write=True)

    def delete_session(self, session_id: str) -> None:
        """Forget a session: its row, events and samples; a run left with no session goes too
        (``agentrt rm``: its branch and files are the caller's to remove first)."""

        def work(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT run_id FROM sessions WHERE id = ?",
                               (session_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no session '{session_id}'")
            # Its events and samples follow by ON DELETE CASCADE; the run's too.
            conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            left = conn.execute("SELECT 1 FROM sessions WHERE run_id = ? LIMIT 1",
                                (row["run_id"],)).fetchone()
            if left is None:
                conn.execute("DELETE FROM runs WHERE id = ? AND status != 'running'",
                             (row["run_id"],))

        self._transaction(work, write=True)

    def get_session(self, session_id: str) -> SessionRow:
        """The session with exactly this id; NotFoundError otherwise."""
        rows = self._read("SELECT * FROM sessions WHERE id = ?", (session_id,))
        if not rows:
            raise NotFoundError(f"no session '{session_id}'")
        return session_row(rows[0])

    def find_session(self, prefix: str) -> SessionRow:
        """The one session whose id starts with ``prefix`` (an exact id always wins)."""
        return session_row(self._find("sessions", "session", prefix))

    def list_sessions(
        self, run_id: str | None = None, include_finished: bool = True
    ) -> list[SessionRow]:
        """Sessions (of one run, or all), oldest first; optionally only pending/running ones."""
        where, args = _where(run_id=run_id)
        if not include_finished:
            live = [s.value for s in SessionStatus if not s.is_final]
            where += (" AND " if where else " WHERE ") + (
                f"status IN ({', '.join('?' * len(live))})"
            )
            args.extend(live)
        rows = self._read(f"SELECT * FROM sessions{where} ORDER BY created_at, rowid", args)
        return [session_row(r) for r in rows]

    # -- events and samples --------------------------------------------------------------------

    def add_event(
        self, run_id: str, kind: str, message: str, session_id: str | None = None
    ) -> int:
        """Append an event and return its id. NotFoundError if the run or session is unknown."""
        missing = f"no run '{run_id}'" + (f" or session '{session_id}'" if session_id else "")
        return self._write_one(
            "INSERT INTO events (run_id, session_id, ts, kind, message) VALUES (?, ?, ?, ?, ?)",
            (run_id, session_id, time.time(), kind, message), missing=missing, want_id=True,
        )

    def events(
        self, run_id: str | None = None, session_id: str | None = None, after_id: int = 0,
        limit: int | None = None,
    ) -> list[Event]:
        """Events with id > ``after_id``, in order; pass the last id seen to follow a log."""
        where, args = _where(run_id=run_id, session_id=session_id)
        where += (" AND " if where else " WHERE ") + "id > ?"
        args.append(after_id)
        sql = f"SELECT * FROM events{where} ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [Event.model_validate(dict(r)) for r in self._read(sql, args)]

    def add_sample(
        self, session_id: str, memory_bytes: int, cpu_seconds: float, disk_bytes: int,
        ts: float | None = None,
    ) -> None:
        """Record one resource measurement of a session (now, unless ``ts`` is given)."""
        self._write_one(
            "INSERT INTO samples (session_id, ts, memory_bytes, cpu_seconds, disk_bytes)"
            " VALUES (?, ?, ?, ?, ?)",
            (session_id, time.time() if ts is None else ts, memory_bytes, cpu_seconds,
             disk_bytes),
            missing=f"no session '{session_id}'",
        )

    def samples(self, session_id: str) -> list[Sample]:
        """A session's samples in time order."""
        rows = self._read(
            "SELECT * FROM samples WHERE session_id = ? ORDER BY ts, rowid", (session_id,)
        )
        return [Sample.model_validate(dict(r)) for r in rows]


def _checked(columns: Any, allowed: frozenset[str]) -> dict[str, Any]:
    unknown = sorted(set(columns) - allowed)
    if unknown:
        raise TypeError(f"unknown session column(s): {', '.join(unknown)}")
    return dict(columns)


def _where(**filters: str | None) -> tuple[str, list[Any]]:
    given = {name: value for name, value in filters.items() if value is not None}
    if not given:
        return "", []
    return " WHERE " + " AND ".join(f"{name} = ?" for name in given), list(given.values())


def _iso(moment: datetime) -> str:
    # One fixed form (UTC, microseconds) so that text order is time order.
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
