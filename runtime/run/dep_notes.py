"""What a session may know of the sessions it depends on: their final diff, the end of their
output and how they ended, as read-only files under ``/agentrt/deps/<task>/`` in its container.

The files are written by agentrt on the host once the dependencies have ended (each session its
own directory, holding only its own dependencies) and bind-mounted read-only: no session can
write them, none sees another's, and nothing the sessions share is writable. Per dependency:

* ``diff.patch``: ``git diff`` of its branch against the commit it started from;
* ``output.txt``: the last 64 KiB of its output (secrets already redacted by the owner);
* ``result.json``: its task id, session id, status, exit code, branch and head commit.

Only for sessions on this engine's host (a remote engine or Swarm node cannot bind a host
path): elsewhere the directory is absent and the agent sees only its dependencies' work merged
into its start (docs/mcp.md).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from runtime import paths
from runtime.engine.types import Mount
from runtime.git.safe_git import MainRepo, run_git
from runtime.models import SessionResult

#: Where a session finds its dependencies' notes.
DEPS_MOUNT = "/agentrt/deps"
OUTPUT_TAIL_BYTES = 64 * 1024


def notes_root(repo: MainRepo, run_id: str) -> Path:
    """The directory holding the notes of every session of ``run_id`` (removed with the run)."""
    return paths.runs_dir(repo.state_dir) / run_id / "deps"


def write_dep_notes(repo: MainRepo, run_id: str, task_id: str,
                    deps: Sequence[SessionResult]) -> Mount | None:
    """Write the notes of ``deps`` for the session of ``task_id``; return its read-only mount
    (None when it has no dependencies). Readable by any uid, writable by agentrt only."""
    if not deps:
        return None
    root = notes_root(repo, run_id) / task_id
    shutil.rmtree(root, ignore_errors=True)
    for dep in deps:
        folder = root / dep.task_id
        folder.mkdir(parents=True, mode=0o755, exist_ok=True)
        (folder / "result.json").write_text(json.dumps({
            "task_id": dep.task_id, "session_id": dep.id, "status": dep.status.value,
            "exit_code": dep.exit_code, "branch": dep.branch, "base_commit": dep.base_commit,
            "head_commit": dep.head_commit}, indent=2) + "\n", encoding="utf-8")
        diff = folder / "diff.patch"
        if dep.base_commit and dep.head_commit:
            run_git(["diff", "--no-ext-diff", "--no-textconv", "--no-color", f"--output={diff}",
                     dep.base_commit, dep.head_commit, "--"],
                    git_dir=repo.git_dir, cwd=repo.git_dir)
        else:
            diff.write_bytes(b"")
        (folder / "output.txt").write_bytes(_tail(paths.log_path(repo.state_dir, dep.id)))
    for path in [root, *root.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return Mount(DEPS_MOUNT, str(root), type="bind", read_only=True)


def _tail(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - OUTPUT_TAIL_BYTES))
            return f.read()
    except OSError:
        return b""


def remove_dep_notes(repo: MainRepo, run_id: str) -> None:
    """Remove the run's notes (at the end of the run)."""
    shutil.rmtree(notes_root(repo, run_id), ignore_errors=True)
