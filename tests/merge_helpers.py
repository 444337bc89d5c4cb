"""Helpers for merge tests on real git repositories: commits, branches, merge-state checks."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

from runtime.models import SessionResult, SessionStatus

LINES = "".join(f"{n}\n" for n in range(1, 21))


def git(repo: Path, *args: str, env: dict[str, str] | None = None, input: str | None = None) -> str:
    """The test's own git: isolated from the developer's config, deterministic identity."""
    full = {
        **os.environ,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        **(env or {}),
    }
    proc = subprocess.run(["git", "-C", str(repo), *args], env=full, input=input,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"git {args} failed: {proc.stderr}")
    return proc.stdout.strip()


def make_repo(tmp_path: Path, files: dict[str, str] | None = None) -> Path:
    """A repository with ``main`` checked out and one commit of ``files``."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    commit_worktree(repo, files or {"f.txt": LINES, "keep.txt": "keep\n"}, "base")
    return repo


def commit_worktree(repo: Path, files: dict[str, str], message: str) -> str:
    """Commit on the checked-out branch through the working tree, as a user would."""
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "--", *files)
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def commit_branch(
    repo: Path, branch: str, files: dict[str, str | bytes | None], start: str = "main"
) -> str:
    """Commit ``files`` (None deletes) on ``branch`` without touching the checkout or index."""
    exists = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet",
                             f"refs/heads/{branch}"], capture_output=True, check=False)
    parent = git(repo, "rev-parse", f"refs/heads/{branch}" if exists.returncode == 0 else start)
    env = {"GIT_INDEX_FILE": str(repo / ".git" / f"test-index-{threading.get_ident()}")}
    git(repo, "read-tree", parent, env=env)
    for name, content in files.items():
        if content is None:
            git(repo, "update-index", "--force-remove", "--", name, env=env)
            continue
        data = content if isinstance(content, bytes) else content.encode()
        blob = subprocess.run(["git", "-C", str(repo), "hash-object", "-w", "--stdin"],
                              input=data, capture_output=True, check=True).stdout.decode().strip()
        git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{name}", env=env)
    tree = git(repo, "write-tree", env=env)
    commit = git(repo, "commit-tree", tree, "-p", parent, "-m", f"work on {branch}")
    git(repo, "update-ref", f"refs/heads/{branch}", commit)
    Path(env["GIT_INDEX_FILE"]).unlink()
    return commit


def session(task: str, status: SessionStatus = SessionStatus.SUCCEEDED) -> SessionResult:
    return SessionResult(id=f"{task}-abc123", task_id=task, branch=f"agent/{task}/abc123",
                         status=status)


def change_line(text: str, line: int, new: str) -> str:
    lines = text.splitlines(keepends=True)
    lines[line - 1] = new + "\n"
    return "".join(lines)


def snapshot(repo: Path) -> dict[str, bytes]:
    """Every file under the repository except objects: refs, index, HEAD, working tree."""
    out: dict[str, bytes] = {}
    for path in sorted(repo.rglob("*")):
        rel = path.relative_to(repo).as_posix()
        if path.is_file() and not rel.startswith((".git/objects/", ".git/agentrt/")):
            out[rel] = path.read_bytes()
    return out


def worktree_and_index(repo: Path) -> dict[str, bytes]:
    """The user's side of a repository: working tree files, index and HEAD."""
    return {k: v for k, v in snapshot(repo).items()
            if not k.startswith(".git/") or k in (".git/index", ".git/HEAD")}


def assert_no_merge_state(repo: Path) -> None:
    """No MERGE_HEAD, and no conflict marker in the working tree or in main's tree."""
    assert not (repo / ".git" / "MERGE_HEAD").exists()
    for path in repo.rglob("*"):
        if path.is_file() and ".git" not in path.relative_to(repo).parts:
            assert b"<<<<<<<" not in path.read_bytes(), path
    grep = subprocess.run(["git", "-C", str(repo), "grep", "-q", "-e", "<<<<<<<", "main"],
                          capture_output=True, check=False)
    assert grep.returncode == 1, grep


# --- detection ---------------------------------------------------------------------------


