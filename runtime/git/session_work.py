"""One session's work, the way people work with a branch: its commits, its changes applied
to the checkout as unstaged edits, a worktree of its branch, and the branch's removal.

Everything here reads the session's *branch* in the user's repository: work that already came
home through the verified bundle boundary (:mod:`runtime.git.bundle`), never an agent's tree.
Git runs with agentrt's safe configuration and the repository's filters and merge drivers
neutralised (:func:`runtime.git.conflicts.driver_overrides`), so applying or checking out an
agent's files runs none of their attributes' programs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import GitError, MergeError
from runtime.git.conflicts import driver_overrides
from runtime.git.safe_git import MainRepo, run_git
from runtime.models import SessionResult


@dataclass(frozen=True)
class Commit:
    """One of a session's commits, for ``agentrt log``."""

    commit: str
    date: str
    subject: str


def work_head(repo: MainRepo, result: SessionResult) -> str | None:
    """Where a session's work is now: its branch's head, or (the branch deleted) the head it
    recorded when it ended; None when it has neither."""
    return (repo.branch_head(result.branch) if result.branch else None) or result.head_commit


def session_commits(repo: MainRepo, base: str, head: str) -> list[Commit]:
    """The commits ``head`` has over ``base``, newest first (a snapshot commit included)."""
    out = repo.git("log", "--no-color", "--format=%H%x00%ad%x00%s", "--date=iso-strict",
                   f"{base}..{head}", "--").stdout
    commits = []
    for line in out.splitlines():
        commit, date, subject = (line.split("\0") + ["", ""])[:3]
        commits.append(Commit(commit, date, subject))
    return commits


def changed_paths(repo: MainRepo, base: str, head: str) -> list[str]:
    """Paths ``head`` changes against ``base`` (renames as a delete and an add)."""
    out = repo.git("diff", "--no-ext-diff", "--no-textconv", "--no-renames", "--name-only",
                   "-z", base, head, "--").stdout
    return [p for p in out.split("\0") if p]


def dirty_paths(repo: MainRepo) -> set[str]:
    """Paths with uncommitted changes (or untracked files) in the checkout."""
    work_tree = repo.folder or repo.root
    out = run_git(["status", "--porcelain=v1", "-z", "--untracked-files=all"],
                  git_dir=repo.git_dir, work_tree=work_tree, cwd=work_tree,
                  config=driver_overrides(repo)).stdout
    paths: set[str] = set()
    entries = iter(out.split("\0"))
    for entry in entries:
        if not entry:
            continue
        paths.add(entry[3:])
        if entry[:1] in ("R", "C"):  # a rename's source follows as its own field
            paths.add(next(entries, ""))
    return paths


def apply_session(repo: MainRepo, base: str, head: str) -> list[str]:
    """Apply the changes ``head`` made over ``base`` to the checkout as unstaged edits; return
    the paths changed. Nothing is committed or staged.

    Refused (:class:`MergeError`, nothing written) when the checkout has uncommitted changes
    in a path the session changed (a dirty overlap), or when the changes do not apply to the
    checkout as it is (it moved since the session's base and the same lines changed): then
    ``agentrt merge SESSION`` or ``agentrt checkout SESSION`` are the ways in.
    """
    if repo.folder is not None:
        raise MergeError("apply works on a git checkout; in directory mode use "
                         "`agentrt merge SESSION` (it writes the files back into the folder)")
    paths = changed_paths(repo, base, head)
    if not paths:
        return []
    overlap = sorted(dirty_paths(repo) & set(paths))
    if overlap:
        raise MergeError("your checkout has uncommitted changes in files this session changed: "
                         + ", ".join(overlap[:10]) + (" ..." if len(overlap) > 10 else "")
                         + "; commit or stash them first")
    config = driver_overrides(repo)
    with tempfile.TemporaryDirectory(prefix="agentrt-apply-") as tmp:
        patch = Path(tmp) / "session.patch"
        repo.git("diff", "--no-ext-diff", "--no-textconv", "--no-color", "--no-renames",
                 "--binary", "--full-index", f"--output={patch}", base, head, "--",
                 config=config)
        try:
            for check in (True, False):  # every hunk checked before any file is written
                run_git(["apply", *(["--check"] if check else []), "--whitespace=nowarn",
                         str(patch)], git_dir=repo.git_dir, work_tree=repo.root, cwd=repo.root,
                        config=config)
        except GitError as exc:
            raise MergeError(f"the session's changes do not apply to your checkout: {exc}; "
                             "use `agentrt merge SESSION` (a merge commit) or `agentrt "
                             "checkout SESSION` (its branch in a worktree)") from exc
    return paths


def worktree_of(repo: MainRepo, branch: str) -> Path | None:
    """The worktree where ``branch`` is checked out, if any."""
    out = repo.git("worktree", "list", "--porcelain").stdout
    path: Path | None = None
    for line in out.splitlines():
        if line.startswith("worktree "):
            path = Path(line.removeprefix("worktree "))
        elif line == f"branch refs/heads/{branch}":
            return path
    return None


def checkout_session(repo: MainRepo, branch: str, path: Path) -> Path:
    """A worktree of ``branch`` at ``path`` (made; must not exist). Commits made there land on
    the session's branch, which ``agentrt merge SESSION`` then merges."""
    if path.exists():
        raise MergeError(f"{path} already exists: pass another --path")
    existing = worktree_of(repo, branch)
    if existing is not None:
        raise MergeError(f"{branch} is already checked out in {existing}")
    try:
        repo.git("worktree", "add", "--quiet", str(path), branch, config=driver_overrides(repo))
    except GitError as exc:
        raise MergeError(f"cannot check out {branch} in {path}: {exc}") from exc
    return path


def delete_branch(repo: MainRepo, branch: str) -> str | None:
    """Delete ``branch`` if it exists (compare-and-swap on its head); return the head it had.

    Refused when the branch is checked out in a worktree."""
    head = repo.branch_head(branch)
    if head is None:
        return None
    where = worktree_of(repo, branch)
    if where is not None:
        raise MergeError(f"{branch} is checked out in {where}: `git worktree remove {where}` "
                         "first")
    repo.git("update-ref", "-d", f"refs/heads/{branch}", head)
    return head


def is_merged(repo: MainRepo, head: str, target: str) -> bool:
    """True when ``target`` contains ``head``."""
    target_head = repo.branch_head(target)
    if target_head is None:
        return False
    proc = repo.git("merge-base", "--is-ancestor", head, target_head, check=False)
    return proc.returncode == 0
