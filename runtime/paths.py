"""Every path under a repository's agentrt state directory (``<repo>/.git/agentrt``).

Pure path arithmetic: nothing here touches the disk.
"""

from __future__ import annotations

from pathlib import Path

STATE_DB = "state.db"


def state_db(state_dir: Path) -> Path:
    """The state database."""
    return state_dir / STATE_DB


def logs_dir(state_dir: Path) -> Path:
    """Where sessions' saved output lives."""
    return state_dir / "logs"


def log_path(state_dir: Path, session_id: str) -> Path:
    """A session's saved output (secret values redacted)."""
    return logs_dir(state_dir) / f"{session_id}.log"


def runs_dir(state_dir: Path) -> Path:
    """Per-run files (the runs' read-only object stores)."""
    return state_dir / "runs"


def harvest_dir(state_dir: Path, session_id: str) -> Path:
    """Where a session's bundles wait for import (and refused ones stay for inspection)."""
    return state_dir / "harvest" / session_id


def quarantine_root(state_dir: Path) -> Path:
    """Where a bundle's pack is checked before it may enter the repository."""
    return state_dir / "quarantine"
