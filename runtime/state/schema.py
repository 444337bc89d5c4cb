"""The state database's schema (versioned migrations) and its rows as typed models."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from typing import TypedDict

from pydantic import BaseModel, ConfigDict

from runtime.models import Manifest, SessionResult, SessionStatus

SCHEMA_VERSION = 1
#: Marks the file as ours ("agrt"), so a foreign SQLite file is refused rather than extended.
APPLICATION_ID = 0x61677274

# Migrations: version -> statements taking the schema from version-1 to version. Each runs in
# the same IMMEDIATE transaction as the user_version bump, so a crash leaves the old version.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE runs (
            id TEXT PRIMARY KEY, repo TEXT NOT NULL, base_commit TEXT NOT NULL, target TEXT,
            merge TEXT NOT NULL, config_json TEXT NOT NULL DEFAULT '{}',
            started_at TEXT NOT NULL, finished_at TEXT, status TEXT NOT NULL DEFAULT 'running',
            warnings_json TEXT NOT NULL DEFAULT '[]',
            owner_pid INTEGER, owner_start_time REAL, owner_host TEXT)""",
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            task_id TEXT NOT NULL, branch TEXT NOT NULL, status TEXT NOT NULL,
            result_json TEXT NOT NULL, manifest_json TEXT,
            container_id TEXT, volume_path TEXT, mount_path TEXT, loop_device TEXT,
            db_path TEXT, deadline REAL, owner_pid INTEGER, owner_start_time REAL,
            created_at REAL NOT NULL, updated_at REAL NOT NULL)""",
        "CREATE INDEX sessions_by_run ON sessions(run_id, created_at)",
        "CREATE INDEX sessions_by_status ON sessions(status)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
            session_id TEXT REFERENCES sessions(id) ON DELETE CASCADE,
            ts REAL NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL)""",
        "CREATE INDEX events_by_run ON events(run_id, id)",
        "CREATE INDEX events_by_session ON events(session_id, id)",
        """CREATE TABLE samples (
            session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            ts REAL NOT NULL, memory_bytes INTEGER NOT NULL, cpu_seconds REAL NOT NULL,
            disk_bytes INTEGER NOT NULL)""",
        "CREATE INDEX samples_by_session ON samples(session_id, ts)",
    ),
}


class SessionResources(TypedDict, total=False):
    """Per-session columns besides the result; passing a key sets it, omitting it keeps it."""

    container_id: str | None
    volume_path: str | None
    mount_path: str | None
    loop_device: str | None
    db_path: str | None
    deadline: float | None  # absolute unix time
    owner_pid: int | None
    owner_start_time: float | None
    manifest_json: str | None


class SessionColumns(SessionResources, total=False):
    """What :meth:`Store.update_session` may change: the resources, and the status."""

    status: SessionStatus


# Column names are interpolated into SQL only from these fixed sets, never from caller strings.
RESOURCE_COLUMNS = frozenset(SessionResources.__annotations__)
UPDATABLE_COLUMNS = RESOURCE_COLUMNS | {"status"}


class _Row(BaseModel):
    model_config = ConfigDict(frozen=True)


class RunRow(_Row):
    """One run as stored. ``status`` is ``running`` until :meth:`Store.finish_run`."""

    id: str
    repo: str
    base_commit: str
    target: str | None
    merge: str
    config_json: str
    started_at: datetime
    finished_at: datetime | None
    status: str
    warnings: list[str]
    owner_pid: int | None
    owner_start_time: float | None
    owner_host: str | None


class SessionRow(_Row):
    """One session as stored: every column, plus ``result`` parsed from ``result_json``."""

    id: str
    run_id: str
    task_id: str
    branch: str
    status: SessionStatus
    result_json: str
    manifest_json: str | None
    container_id: str | None
    volume_path: str | None
    mount_path: str | None
    loop_device: str | None
    db_path: str | None
    deadline: float | None
    owner_pid: int | None
    owner_start_time: float | None
    created_at: float
    updated_at: float
    result: SessionResult

    @property
    def manifest(self) -> Manifest | None:
        """The replay manifest, if one was recorded."""
        if self.manifest_json is None:
            return None
        return Manifest.model_validate_json(self.manifest_json)


class Event(_Row):
    """One line of a run's or session's log; ``id`` increases in insertion order."""

    id: int
    run_id: str
    session_id: str | None
    ts: float
    kind: str
    message: str


class Sample(_Row):
    """One resource measurement of a session (for the report's curves)."""

    session_id: str
    ts: float
    memory_bytes: int
    cpu_seconds: float
    disk_bytes: int


def run_row(row: sqlite3.Row) -> RunRow:
    """A ``runs`` row as a model."""
    data = dict(row)
    data["warnings"] = json.loads(data.pop("warnings_json"))
    return RunRow.model_validate(data)


def session_row(row: sqlite3.Row) -> SessionRow:
    """A ``sessions`` row as a model, its result parsed."""
    data = dict(row)
    data["result"] = SessionResult.model_validate_json(data["result_json"])
    return SessionRow.model_validate(data)

