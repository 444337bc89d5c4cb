"""The state database's file and its one connection: opened safely, checked, migrated, and
used one transaction at a time.

What callers (through :class:`~runtime.state.store.Store`) may rely on:

* Every write is one ``BEGIN IMMEDIATE`` transaction. In WAL mode a read-then-write
  transaction started as DEFERRED fails with SQLITE_BUSY_SNAPSHOT whatever the busy timeout, so
  writers take the write lock up front; a busy database is retried (30 s busy timeout, then a
  few more attempts with jitter) before :class:`~runtime.errors.StateError` is raised.
* Reads never block writers (WAL) and see one consistent snapshot per call.
* A :class:`~runtime.state.store.Store` may be shared by threads (one connection behind a
  lock), not across ``fork()``: a child process must open its own Store (a connection carried
  over a fork can corrupt the file).
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
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from runtime.errors import NotFoundError, StateDamagedError, StateError
from runtime.state.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION

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


def _check_shm(path: Path) -> None:
    """Refuse, with a clear StateError, a database whose ``-shm`` file exists but cannot be
    opened for writing (read-only, immutable, on a read-only mount): SQLite maps that file
    into memory and, on some of these, dies of SIGBUS instead of reporting an error."""
    shm = path.with_name(path.name + "-shm")
    try:
        fd = os.open(shm, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StateError(
            f"state database {path}: its shared-memory file {shm} cannot be written "
            f"({exc.strerror or exc}); make it writable (chmod u+w, chattr -i, a writable "
            "mount) or, with no agentrt running, delete it") from exc
    os.close(fd)


class StoreConnection:
    """The SQLite connection to the state database at ``path`` (created, with its parent
    directory, if missing), checked and migrated when opened; the base of
    :class:`~runtime.state.store.Store`, which adds the rows.

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
        self.write_failures: list[str] = []
        """Every write the database failed since the store was opened (a run reports them)."""
        _check_shm(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Private: the state directory 0700 and the database 0600 (SQLite gives its -wal
            # and -shm files the database's mode). A new file is made 0600 before SQLite opens
            # it; an existing one is only chmod'ed: opening and closing a descriptor of a
            # database this process already has open would drop its connections' POSIX locks.
            self.path.parent.chmod(0o700)
            if not self._existed:
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL
                                     | os.O_NOFOLLOW, 0o600))
            os.chmod(self.path, 0o600)
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

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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
            try:
                return self._retry(attempt)
            except StateError as exc:
                cause = exc.__cause__
                if write and isinstance(cause, sqlite3.Error) and \
                        not isinstance(cause, sqlite3.IntegrityError):  # the file failed
                    self.write_failures.append(str(exc))
                raise

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
        from runtime.state.traces import agentrt_traces

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


