"""A session's saved output and its diff, as ``logs``, ``diff``, ``report`` and the live view
read them.

The output is the log the process owning the run wrote (secrets redacted there); the diff is
``git diff`` of the session's branch against its base, or, while it runs, asked inside its own
container. Both are the agent's bytes: :func:`terminal_safe` shows their control characters
escaped on a terminal.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from runtime import paths
from runtime.errors import NotFoundError
from runtime.git.safe_git import MainRepo, run_git
from runtime.git.session_work import work_head
from runtime.text import terminal_safe as _safe

if TYPE_CHECKING:
    from runtime.engine.types import EngineClient
    from runtime.state.store import SessionRow, Store

TAIL_BYTES = 64 * 1024


def saved_log_path(repo: MainRepo, session_id: str) -> Path:
    """Where a finished session's output is kept."""
    return paths.log_path(repo.state_dir, session_id)


def saved_log_tail(repo: MainRepo, session_id: str, lines: int = 20) -> list[str]:
    """The last ``lines`` lines of a session's saved output (as text, not yet made safe to
    show: callers pass them through :mod:`runtime.text` or HTML escaping). Empty when none
    was saved. Reads only the end of the file."""
    path = saved_log_path(repo, session_id)
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    found = text.split("\n")
    if size > TAIL_BYTES:
        found = found[1:]  # the first one is probably cut
    while found and not found[-1].strip():
        found.pop()
    return found[-lines:] if lines else []


def last_output_line(repo: MainRepo, session_id: str) -> str:
    """A finished session's last non-blank output line (for the live view), else ''."""
    return next((ln for ln in reversed(saved_log_tail(repo, session_id, 20)) if ln.strip()), "")


def session_output(repo: MainRepo, store: Store, row: SessionRow, follow: bool,
                   client: Callable[[], EngineClient] | None = None) -> Iterator[bytes]:
    """A session's output as the process that owns its run saved it (secrets redacted there).

    Never asks the container or depends on this process's environment: the owner writes the
    log as the output arrives (``runtime.state.log_keeper``). With ``follow`` the output of a
    pending or running session streams until the session ends (or its owner dies).
    ``client`` is accepted for compatibility and not used.
    """
    from runtime.state.log_keeper import follow_log

    path = saved_log_path(repo, row.id)
    if not follow or row.status.is_final:
        with contextlib.suppress(FileNotFoundError):
            yield path.read_bytes()
        return
    yield from follow_log(path, lambda: _session_over(store, row.id))


def _session_over(store: Store, session_id: str) -> bool:
    """True once the session is final, or nobody is left to finish it (its owner died)."""
    from runtime.state.liveness import owner_alive

    row = store.get_session(session_id)
    if row.status.is_final:
        return True
    return row.owner_pid is not None and not owner_alive(row.owner_pid, row.owner_start_time)


def terminal_safe(text: str) -> str:
    """Many-line ``text`` (a log, a diff) safe for a terminal: lines and tabs kept, every other
    control character shown escaped. The rules live in :func:`runtime.text.terminal_safe`."""
    return _safe(text, multiline=True)


def session_diff(repo: MainRepo, row: SessionRow, stat: bool = False) -> bytes:
    """``git diff <base commit> <branch head>`` of a session, as bytes (content is data).

    External diff drivers and textconv filters are off. The branch's current head is used; if
    the branch is gone, the head recorded when the session ended. A running session is asked
    inside its own container (:func:`runtime.git.live_tree.live_diff`): the host never reads it.
    """
    result = row.result
    if not row.status.is_final and row.container_id and result.base_commit:
        live = _live_diff(row.container_id, result.base_commit, stat)
        if live is not None:
            return live
    head = work_head(repo, result)
    if not result.base_commit or not head:
        raise NotFoundError(f"session {row.id} has no branch to diff ({row.status.value})")
    # --output keeps the bytes as git wrote them: agent files need not be UTF-8.
    with tempfile.TemporaryDirectory(prefix="agentrt-diff-") as tmp:
        out = Path(tmp) / "diff"
        run_git(["diff", "--no-ext-diff", "--no-textconv", "--no-color", f"--output={out}",
                 *(["--stat"] if stat else []), result.base_commit, head, "--"],
                git_dir=repo.git_dir, cwd=repo.git_dir)
        return out.read_bytes()


def _live_diff(container_id: str, base: str, stat: bool) -> bytes | None:
    """The diff of a running session from inside its container; None if it is not running."""
    from runtime.engine.container import AgentContainer
    from runtime.engine.discovery import get_client
    from runtime.errors import AgentRuntimeError
    from runtime.git.live_tree import live_diff
    from runtime.run.identity import agent_ids

    try:
        client = get_client()
        container = AgentContainer.find(client, container_id)
        uid, gid = agent_ids()
        return live_diff(container, f"{uid}:{gid}", base, stat)
    except AgentRuntimeError:  # gone or stopping: the branch
        return None
