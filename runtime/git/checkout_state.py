"""Whether an automatic merge into a target may go ahead: the facts of the repository's
checkouts (:func:`checkout_state`, read-only) and the pure rule that weighs them
(:func:`merge_blocker`).

A merge is refused when there is no branch to merge into (detached HEAD and no ``target``),
the target is missing or checked out in a linked worktree, or it is checked out in the main
tree with tracked changes or in the middle of a merge, rebase, cherry-pick or revert (a
rebase's branch counts as checked out).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from runtime.git.conflicts import SafeGit
from runtime.git.safe_git import MainRepo


@dataclass(frozen=True)
class CheckoutState:
    """What decides whether an automatic merge into ``target`` may go ahead.

    ``branch`` is the branch checked out in the main working tree (None: detached HEAD, or a
    bare repository); ``operation`` a git operation in progress there (``merge``, ``rebase``,
    ``cherry-pick``, ``revert``) and ``operation_branch`` the branch a rebase will move when it
    finishes; ``dirty`` whether the main tree has tracked changes (staged or not);
    ``target_exists`` whether ``refs/heads/<target>`` exists; ``linked_worktree`` a linked
    worktree that has ``target`` checked out; ``main_tree`` the main working tree (None: bare).
    """

    root: Path
    target: str | None
    branch: str | None
    operation: str | None = None
    operation_branch: str | None = None
    dirty: bool = False
    target_exists: bool = True
    linked_worktree: Path | None = None
    main_tree: Path | None = None

    @property
    def checked_out(self) -> Path | None:
        """The main working tree if ``target`` is checked out there (it follows a merge)."""
        if self.main_tree is not None and self.target is not None and self.target == self.branch:
            return self.main_tree
        return None


def merge_blocker(state: CheckoutState) -> str | None:
    """Why an automatic merge into ``state.target`` must be refused, or None. Pure."""
    target = state.target
    if target is None:
        during = f" (a {state.operation} is in progress)" if state.operation else ""
        return (f"{state.root} has a detached HEAD{during} and no target is set: there is no "
                "branch to merge into; check out a branch or set target in [run] (or --target)")
    if not state.target_exists:
        return f"target branch {target!r} does not exist in {state.root}"
    if state.linked_worktree is not None:
        return (f"target branch {target!r} is checked out in the linked worktree "
                f"{state.linked_worktree}: merge into another target with --target, or switch "
                "that worktree away")
    involved = target in (state.branch, state.operation_branch)
    if state.operation is not None and involved:
        return (f"a {state.operation} is in progress on {target!r} in {state.root}: finish it "
                f"(git {state.operation} --continue) or abort it (git {state.operation} --abort)")
    if state.dirty and state.checked_out is not None:
        return (f"target branch {target!r} is checked out in {state.root} with uncommitted "
                "changes: commit or stash them, or merge into another target with --target")
    return None


def checkout_state(repo: MainRepo, target: str | None) -> CheckoutState:
    """Gather the facts :func:`merge_blocker` weighs (read-only; never touches the index).

    ``target`` None means the branch checked out in the main working tree.
    """
    git = SafeGit(repo)
    trees = _worktrees(git)
    main_tree, branch = trees[0] if trees else (None, None)
    if main_tree is None:  # bare: no checkout, but HEAD still names the default target
        branch = repo.current_branch()
    target = target if target is not None else branch
    linked = next((path for path, checked in trees[1:] if checked == target), None)
    operation, operation_branch = _operation_in_progress(repo.git_dir)
    state = CheckoutState(
        root=main_tree or repo.root, target=target, branch=branch, operation=operation,
        operation_branch=operation_branch,
        target_exists=target is None or repo.branch_head(target) is not None,
        linked_worktree=linked if target is not None else None, main_tree=main_tree)
    if state.checked_out is None:
        return state
    # --no-optional-locks: a read-only look, which must not rewrite the user's index.
    proc = git.run("--no-optional-locks", "status", "--porcelain", "-z", "--untracked-files=no",
                   work_tree=state.checked_out)
    return dataclasses.replace(state, dirty=bool(proc.stdout.strip("\0")))


def _worktrees(git: SafeGit) -> list[tuple[Path | None, str | None]]:
    """Every worktree, the main one first (path None if bare), with its checked-out branch
    (None: detached)."""
    out = git.run("worktree", "list", "--porcelain", "-z").stdout
    found: list[tuple[Path | None, str | None]] = []
    for record in out.split("\0\0"):
        lines = [line for line in record.split("\0") if line]
        if not lines:
            continue
        path = None if "bare" in lines else Path(lines[0].removeprefix("worktree "))
        branch = next((line.removeprefix("branch refs/heads/") for line in lines
                       if line.startswith("branch refs/heads/")), None)
        found.append((path, branch))
    return found


def _operation_in_progress(git_dir: Path) -> tuple[str | None, str | None]:
    """The operation in progress in the main working tree, and the branch a rebase will move."""
    for state_dir in ("rebase-merge", "rebase-apply"):
        if (git_dir / state_dir).is_dir():
            try:
                head = (git_dir / state_dir / "head-name").read_text().strip()
            except OSError:
                head = ""
            return "rebase", head.removeprefix("refs/heads/") or None
    for name, operation in (("MERGE_HEAD", "merge"), ("CHERRY_PICK_HEAD", "cherry-pick"),
                            ("REVERT_HEAD", "revert")):
        if (git_dir / name).exists():
            return operation, None
    return None, None
