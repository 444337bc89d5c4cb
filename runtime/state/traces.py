"""What agentrt leaves behind in a repository besides its state database, and the sessions
those traces describe.

Every session leaves a branch ``agent/<task>/<6 hex>`` in the repository, a directory with its
marker (``<volumes root>/sessions/<id>/session.json``) until ``gc`` removes it, and its saved
output (``.git/agentrt/logs/<id>.log``). :func:`agentrt_traces` says whether agentrt has worked
in a repository (the store refuses to carry on silently with an existing but empty database
where it has); :func:`find_sessions` gathers what the three say about each session, for
:mod:`runtime.state.repair` to rebuild the database from.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from runtime.engine.volumes import known_volume_roots
from runtime.errors import GitError
from runtime.git.safe_git import MainRepo, run_git
from runtime.paths import logs_dir

_BRANCH_RE = re.compile(r"^agent/([a-z0-9][a-z0-9-]{0,39})/([0-9a-f]{4,16})$")
_SESSION_RE = re.compile(r"^([a-z0-9][a-z0-9-]{0,39})-([0-9a-f]{4,16})$")
_REFLOG_TIME = re.compile(r"@\{(\d+)\}$")


def git_dir_of(state_dir: Path) -> Path | None:
    """The git directory a state directory belongs to (``<git dir>/agentrt``), or None."""
    parent = state_dir.parent
    if state_dir.name == "agentrt" and (parent / "HEAD").is_file():
        return parent
    return None


def agent_branches(git_dir: Path) -> dict[str, str]:
    """Every agentrt session branch (``agent/<task>/<hex>``) of a repository -> its head."""
    try:
        proc = run_git(["for-each-ref", "--format=%(refname:short)%00%(objectname)",
                        "refs/heads/agent/"], git_dir=git_dir, cwd=git_dir, timeout=60)
    except GitError:
        return {}
    heads: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        branch, _, head = line.partition("\0")
        if _BRANCH_RE.match(branch):
            heads[branch] = head
    return heads


def session_dirs(state_dir: Path) -> dict[str, Path]:
    """Every ``sessions/<id>`` directory under the repository's volumes roots."""
    found: dict[str, Path] = {}
    for root in known_volume_roots(state_dir):
        with contextlib.suppress(OSError):
            for path in (root / "sessions").iterdir():
                if path.is_dir():
                    found.setdefault(path.name, path)
    return found


def saved_logs(state_dir: Path) -> dict[str, Path]:
    """Every saved session log ``logs/<session id>.log``."""
    with contextlib.suppress(OSError):
        return {p.stem: p for p in logs_dir(state_dir).glob("*.log") if p.is_file()}
    return {}


def agentrt_traces(state_dir: Path) -> list[str]:
    """What says agentrt has worked here, e.g. ``["3 agent/* branches"]``; empty if nothing."""
    git_dir = git_dir_of(state_dir)
    counts = [
        (len(agent_branches(git_dir)) if git_dir else 0, "agent/* branch"),
        (len(session_dirs(state_dir)), "session directory"),
        (len(saved_logs(state_dir)), "saved session log"),
    ]
    return [f"{n} {noun if n == 1 else _plural(noun)}" for n, noun in counts if n]


def _plural(noun: str) -> str:
    if noun.endswith("y"):
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith("h") else "s")


@dataclass
class FoundSession:
    """What the branch, the marker and the log say about one session (any may be missing)."""

    session_id: str
    task_id: str
    branch: str
    head_commit: str | None = None
    base_commit: str = ""
    run_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


def find_sessions(repo: MainRepo) -> list[FoundSession]:
    """Sessions known from branches, session markers and saved logs (merged by session id)."""
    from runtime.state.session_facts import SessionMarker

    found: dict[str, FoundSession] = {}

    def get(session_id: str, task_id: str, branch: str) -> FoundSession:
        return found.setdefault(session_id, FoundSession(session_id, task_id, branch))

    for branch, head in agent_branches(repo.git_dir).items():
        match = _BRANCH_RE.match(branch)
        if match is None:
            continue
        task_id, suffix = match.groups()
        session = get(f"{task_id}-{suffix}", task_id, branch)
        session.head_commit = head
        session.base_commit, session.started_at = _branch_origin(repo, branch)
    for session_id, path in session_dirs(repo.state_dir).items():
        marker = SessionMarker.read(path)
        match = _SESSION_RE.match(session_id)
        if marker is None or match is None:
            continue
        session = get(session_id, match.group(1), marker.branch)
        session.run_id = marker.run_id
        session.started_at = session.started_at or _mtime(path)
    for session_id, path in saved_logs(repo.state_dir).items():
        match = _SESSION_RE.match(session_id)
        if match is None:
            continue
        task_id, suffix = match.groups()
        session = get(session_id, task_id, f"agent/{task_id}/{suffix}")
        session.finished_at = _mtime(path)
    return sorted(found.values(), key=lambda s: (sort_time(s.started_at), s.session_id))


def _branch_origin(repo: MainRepo, branch: str) -> tuple[str, datetime | None]:
    """(the commit the branch was created at, when), from its reflog; ("", None) without one."""
    try:
        proc = repo.git("reflog", "show", "--date=unix", "--format=%H %gd",
                        f"refs/heads/{branch}", "--", timeout=60)
    except GitError:
        return "", None
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        return "", None
    commit, _, selector = lines[-1].partition(" ")
    stamp = _REFLOG_TIME.search(selector)
    return commit, datetime.fromtimestamp(int(stamp.group(1)), UTC) if stamp else None


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None


def sort_time(moment: datetime | None) -> float:
    """``moment`` as seconds to sort by; an unknown moment sorts last."""
    return moment.timestamp() if moment else float("inf")
