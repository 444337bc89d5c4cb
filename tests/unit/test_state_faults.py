"""State database faults are named before SQLite meets them (a real database file)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from runtime.errors import StateError
from runtime.state.store import Store


def _unwritable(path: Path) -> None:
    """Make ``path`` impossible to open for writing, even for root (immutable) where we can."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        return
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(path)], capture_output=True, check=False).returncode != 0:
        pytest.skip("no way to make a file unwritable for root here (chattr +i)")


def test_an_unwritable_shm_file_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    Store(db).close()
    conn = sqlite3.connect(db)  # a -shm left by another connection
    conn.execute("SELECT 1").fetchall()
    shm = tmp_path / "state.db-shm"
    conn.close()
    shm.write_bytes(b"\0" * 32768)
    _unwritable(shm)
    try:
        with pytest.raises(StateError, match=r"state\.db-shm cannot be written.*chattr -i"):
            Store(db)
    finally:
        subprocess.run(["chattr", "-i", str(shm)], capture_output=True, check=False)
    Store(db).close()  # the control: writable again, it opens


def test_writes_the_database_fails_are_counted_for_the_run_to_report(tmp_path: Path) -> None:
    with Store(tmp_path / "state.db") as store:
        store.create_run("r1", "/x", "b" * 40, "main", "auto", "{}", None, None, None)
        with pytest.raises(StateError):  # refused by agentrt, not a fault of the file
            store.create_run("r1", "/x", "b" * 40, "main", "auto", "{}", None, None, None)
        assert store.write_failures == []
        # The database refuses every write from here (as a read-only or failing file does).
        store._conn.execute("PRAGMA query_only = ON")  # type: ignore[union-attr]
        with pytest.raises(StateError, match="readonly"):
            store.add_event("r1", "note", "lost")
        assert len(store.write_failures) == 1 and "readonly" in store.write_failures[0]
