"""The state database of one repository: runs, sessions, events and resource samples.

One SQLite file (the runtime uses ``<repo>/.git/agentrt/state.db``) shared by every agentrt
process working on the repository: a running coordinator, ``ps``, ``logs -f``, ``gc``.

What callers may rely on:

* Every write is one ``BEGIN IMMEDIATE`` transaction. In WAL mode a read-then-write
  transaction started as DEFERRED fails with SQLITE_BUSY_SNAPSHOT whatever the busy timeout, so
  writers take the write lock up front; a busy database is retried (30 s busy timeout, then a
  few more attempts with jitter) before :class:`~runtime.errors.StateError` is raised.
* Reads never block writers (WAL) and see one consistent snapshot per call.
* A :class:`Store` may be shared by threads (one connection behind a lock), not across
  ``fork()``: a child process must open its own Store (a connection carried over a fork can
  corrupt the file).
* The schema is versioned (``PRAGMA user_version``). A file written by a newer agentrt or a
  file of another application raises StateError naming the path.
* **A damaged database is found at open, before anything starts**, and raises
  :class:`~runtime.errors.StateDamagedError` (a StateError) saying how to repair it
  (``agentrt gc --repair-state``, see :mod:`runtime.state.repair`): a file that is not SQLite,
  corrupt pages (``PRAGMA quick_check`` on every open: 6.5 ms for a 1.3 MB database of 200
  sessions, 4000 events and 10000 samples; above 8 MiB only ``runs`` and ``sessions`` are
  checked, 0.7 ms there, and damage elsewhere is met when used), and an existing but empty
  database where agentrt has left branches, session directories or logs (it lost its
  contents: starting afresh silently would hide every earlier run). A missing file is a new
  database. A corrupt page met later raises it too.
* **No secret values are stored.** Callers pass environment *keys* only (the task's
  ``secrets`` names, ``Manifest.env_keys``); ``config_json`` must be built the same way.

Timestamps: run start/finish are ISO-8601 text (they round-trip exactly into the report);
events, samples, deadlines and row bookkeeping are unix seconds as REAL (cheap to compare).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, Unpack

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from runtime.errors import NotFoundError, StateDamagedError, StateError
from runtime.models import RunReport, SessionResult, SessionStatus
from runtime.state.schema import (
    APPLICATION_ID,
    MIGRATIONS,
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

T = TypeVar("T")

_BUSY_ATTEMPTS = 5
#: Up to this size (database plus WAL) every open runs a full ``PRAGMA quick_check`` (about
#: 5 ms per MB here, so at most ~40 ms); above it only the two tables that matter most.
QUICK_CHECK_FULL_BYTES = 8 * 1024 * 1024
_QUICK_CHECK_TABLES = ("runs", "sessions")
#: What every StateDamagedError ends with.
REPAIR_HINT = (
    "run `agentrt gc --repair-state` to move it aside and rebuild the runs and sessions from "
    "the agent/* branches, the session markers and the saved logs"
)


class Store:
    """The state database at ``path`` (created, with its parent directory, if missing).

    StateDamagedError if the file is corrupt, or empty while agentrt's traces exist next to
    it (``allow_empty`` lifts the latter: only :mod:`runtime.state.repair` passes it, to
    write the rebuilt database).
    """

    def __init__(self, path: str | os.PathLike[str], *, allow_empty: bool = False) -> None:
        self.path = Path(path)
        self._allow_empty = allow_empty
        # A missing file is a new database (sessions run through the Python API alone leave
        # branches and logs but no database); an existing one that turns out empty lost its
        # contents. Checked before connecting too, as opening writes a header into the file.
        self._existed = self.path.exists()
        if not allow_empty and self._existed and _size(self.path) == 0:
            self._refuse_if_lost()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open state database {self.path}: {exc}") from exc
        self._conn = conn
        try:
            conn.row_factory = sqlite3.Row
            self._retry(lambda: self._configure(conn))
            self._transaction(self._migrate, write=True)
            self._transaction(self._quick_check, write=False)
        except BaseException:
            self.close()
            raise

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection; later calls raise StateError. Safe to call twice."""
        with self._lock:
            if self._conn is not None and os.getpid() == self._pid:
                self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
        """The run's report rebuilt from the rows (sessions in creation order)."""

        def work(conn: sqlite3.Connection) -> RunReport:
            row = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no run '{run_id}'")
            run = run_row(row)
            sessions = conn.execute(
                "SELECT * FROM sessions WHERE run_id = ? ORDER BY created_at, rowid", (run_id,)
            ).fetchall()
            return RunReport(
                run_id=run.id, repo=run.repo, base_commit=run.base_commit, target=run.target,
                merge=run.merge, started_at=run.started_at, finished_at=run.finished_at,
                sessions=[session_row(s).result for s in sessions], warnings=run.warnings,
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

    # -- plumbing ------------------------------------------------------------------------------

    def _find(self, table: str, noun: str, prefix: str) -> sqlite3.Row:
        if not prefix:
            raise NotFoundError(f"no {noun} matches ''")
        # substr() rather than LIKE: ids may contain '_' or '%', which LIKE would treat as
        # wildcards. Fetch a few more than needed to be able to list the ambiguity.
        rows = self._read(
            f"SELECT * FROM {table} WHERE substr(id, 1, ?) = ? ORDER BY id LIMIT 6",
            (len(prefix), prefix),
        )
        exact = [r for r in rows if r["id"] == prefix]
        if exact:
            return exact[0]
        if not rows:
            raise NotFoundError(f"no {noun} matches '{prefix}'")
        if len(rows) > 1:
            names = ", ".join(r["id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise NotFoundError(f"'{prefix}' is ambiguous: matches {names}")
        return rows[0]

    def _write_one(
        self, sql: str, args: Sequence[Any], *, missing: str, want_id: bool = False
    ) -> int:
        """One statement in its own write transaction; NotFoundError(missing) on FK failure
        or when an UPDATE matched nothing. Returns the new row id (or the row count)."""

        def work(conn: sqlite3.Connection) -> int:
            try:
                cursor = conn.execute(sql, args)
            except sqlite3.IntegrityError as exc:
                raise NotFoundError(missing) from exc
            if cursor.rowcount == 0:
                raise NotFoundError(missing)
            return int(cursor.lastrowid or 0) if want_id else cursor.rowcount

        return self._transaction(work, write=True)

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._transaction(lambda conn: conn.execute(sql, args).fetchall(), write=False)

    def _transaction(self, work: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run ``work`` in one transaction, retried as a whole while the database is busy."""

        def attempt() -> T:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return result

        with self._lock:
            return self._retry(attempt)

    def _retry(self, fn: Callable[[], T]) -> T:
        # The busy timeout already waits 30 s for the write lock; this covers the cases where
        # SQLite returns BUSY without waiting (WAL recovery, journal-mode switch, snapshots).
        retrying = Retrying(
            retry=retry_if_exception(_is_busy), stop=stop_after_attempt(_BUSY_ATTEMPTS),
            wait=wait_random_exponential(multiplier=0.05, max=1.0), reraise=True,
        )
        try:
            return retrying(fn)
        except sqlite3.Error as exc:
            if _is_damage(exc):
                raise StateDamagedError(
                    f"state database {self.path} is damaged ({exc}); {REPAIR_HINT}") from exc
            what = "is busy" if _is_busy(exc) else "cannot be used"
            raise StateError(f"state database {self.path} {what}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StateError(f"state database {self.path} is closed")
        if os.getpid() != self._pid:
            raise StateError(
                f"state database {self.path} was opened in process {self._pid};"
                " open a new Store after fork()"
            )
        return self._conn

    @staticmethod
    def _configure(conn: sqlite3.Connection) -> None:
        # Also the first statements that read the file, so a non-SQLite file fails here.
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA journal_mode = WAL").fetchone()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if app_id not in (0, APPLICATION_ID):
            raise StateError(f"{self.path} is an SQLite file of another application")
        if version > SCHEMA_VERSION:
            raise StateError(
                f"state database {self.path} has schema version {version}, written by a newer"
                f" agentrt (this one knows up to {SCHEMA_VERSION}); upgrade agentrt"
            )
        if version == 0 and conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' LIMIT 1"
        ).fetchone():
            raise StateError(f"{self.path} is an SQLite file but not an agentrt state database")
        if version == 0 and self._existed and not self._allow_empty:
            # Empty: new, or lost its contents (truncated, WAL gone). Decided inside the write
            # transaction, so a database another process is creating right now is never
            # mistaken for a lost one.
            self._refuse_if_lost()
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
        if version < SCHEMA_VERSION:
            # PRAGMAs take no parameters; both values are our own integers.
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")

    def _refuse_if_lost(self) -> None:
        from runtime.state.repair import agentrt_traces

        traces = agentrt_traces(self.path.parent)
        if traces:
            raise StateDamagedError(
                f"state database {self.path} is empty, but agentrt has worked in this "
                f"repository ({'; '.join(traces)}): its file was lost or truncated, and a new "
                f"one would hide every earlier run. Nothing was done; {REPAIR_HINT}")

    def _quick_check(self, conn: sqlite3.Connection) -> None:
        size = sum(_size(self.path.with_name(self.path.name + tail)) for tail in ("", "-wal"))
        pragmas = (["PRAGMA quick_check(5)"] if size <= QUICK_CHECK_FULL_BYTES
                   else [f"PRAGMA quick_check({table})" for table in _QUICK_CHECK_TABLES])
        for pragma in pragmas:
            problems = [row[0] for row in conn.execute(pragma).fetchall()]
            if problems != ["ok"]:
                found = "; ".join(" ".join(p.split()) for p in problems)[:300]
                raise StateDamagedError(
                    f"state database {self.path} is damaged (quick_check: {found}); nothing was "
                    f"done; {REPAIR_HINT}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _is_damage(exc: BaseException) -> bool:
    """True for SQLite's "corrupt" and "not a database" errors (the file itself is bad)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return True
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text


def _is_busy(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return True
    text = str(exc).lower()
    return "locked" in text or "busy" in text


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
