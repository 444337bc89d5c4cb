"""A session's private database.

``per_agent``: a SQLite file on the session's own volume, mounted at ``/agentrt/db`` and named by
``AGENT_DB``; no other session can see the file, so there is no lock contention between agents.

``shared``: one PostgreSQL database and one role with a random password per session on a shared
server; see :mod:`runtime.databases.postgres`.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from runtime.engine.container import DB_MOUNT
from runtime.errors import DatabaseError

SQLITE_NAME = "agent.db"
#: The size of the file create_sqlite makes (an empty WAL-mode database: its header page).
EMPTY_BYTES = 4096


class SessionDatabase(Protocol):
    """A provisioned database: the environment that names it, and how to drop it."""

    env: dict[str, str]

    def drop(self) -> None:
        """Remove the database; idempotent."""


@dataclass
class SqliteDatabase:
    """A private SQLite file in the session's volume (removed with the volume)."""

    host_path: Path
    env: dict[str, str] = field(default_factory=dict)

    def drop(self) -> None:
        """Nothing to do: the file lives and dies with the session's volume."""


def create_sqlite(db_dir: Path, uid: int, gid: int) -> SqliteDatabase:
    """Create the session's SQLite file in WAL mode, owned by the agent's uid."""
    path = db_dir / SQLITE_NAME
    try:
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        if os.geteuid() == 0:
            for item in db_dir.iterdir():
                os.lchown(item, uid, gid)
    except (OSError, sqlite3.Error) as exc:
        raise DatabaseError(f"cannot create SQLite database {path}: {exc}") from exc
    return SqliteDatabase(path, {"AGENT_DB": f"{DB_MOUNT}/{SQLITE_NAME}"})
