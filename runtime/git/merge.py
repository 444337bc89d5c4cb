"""Bring sessions' work back: check every branch against the target, and optionally merge.

Merges never run ``git merge`` and never touch the user's checkout while computing: the merged
tree comes from ``git merge-tree --write-tree`` (see :mod:`runtime.git.conflicts`), the merge commit
from ``git commit-tree``, and the branch moves with ``git update-ref <ref> <new> <old>``, a
compare-and-swap, so an interrupted or racing merge leaves the target at the old or the new
commit, never in between. ``MERGE_HEAD`` and conflict markers therefore never appear in the
user's tree: a conflicting branch is left unmerged on its own branch and reported.

When the target is the branch checked out in the main working tree, that tree is refused if it
has tracked changes (staged or not); untracked files are allowed, since the user's ``git merge``
allows them too, and git refuses (before anything moves) if the merge would overwrite one. The
tree and index then follow the new commit with ``git read-tree -m -u <old> <new>``, the two-tree
form a fast-forward uses, which never overwrites local changes. Filters are neutralised for that
checkout as for every runtime git command, so files of a filter such as Git LFS are written as
stored (pointers); ``git lfs checkout`` restores them.

Automatic merges take ``<git dir>/agentrt/merge.lock`` (``flock``) so that concurrent runs or
``agentrt merge`` invocations on the same repository serialise.

An automatic merge is refused, before anything moves, when there is no branch to merge into
(detached HEAD and no ``target``), the target is missing or checked out in a linked worktree,
or it is checked out in the main tree with tracked changes or in the middle of a merge, rebase,
cherry-pick or revert (a rebase's branch counts as checked out: moving it under the rebase would
lose the merge when the rebase finishes). :func:`auto_merge_blocker` states that up front, from
the facts :func:`checkout_state` gathers and the pure :func:`merge_blocker` weighs; the same
check refuses the merge itself. A refused merge leaves the work on the branches: exit 3.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runtime.errors import ConfigError, MergeError
from runtime.git.conflicts import MergeCheck, SafeGit, check_commits, check_merge, conflict_matrix
from runtime.git.safe_git import MainRepo, check_branch_name
from runtime.models import Conflict, MergeInfo, SessionResult, SessionStatus

__all__ = [
    "CheckoutState",
    "MergeCheck",
    "auto_merge_blocker",
    "check_merge",
    "checkout_state",
    "conflict_matrix",
    "merge_branches",
    "resolve_target",
    "merge_blocker",
    "merge_lock",
    "missed_merge_reason",
]

log = logging.getLogger(__name__)

Strategy = Literal["review", "auto", "none"]


def merge_branches(results: list[SessionResult], strategy: Strategy, repo: MainRepo,
                   target: str | None = None, run_id: str = "") -> str | None:
    """Fill ``merge`` of every succeeded session in ``results``; return the target (None for
    ``none`` or when nothing succeeded).

    * ``none``: nothing is checked; every ``merge.status`` stays ``not_attempted``.
    * ``review``: each branch is checked against ``target`` (``clean`` or ``conflicts``) and
      against every other succeeded branch; nothing is merged. Conflicts with another branch
      carry ``with_branch``; conflicts with the target have ``with_branch=None``.
    * ``auto``: branches are merged one at a time in the order given, each checked against the
      target as it is after the previous merges. A clean one becomes a merge commit
      (``merged``); a branch the target already contains is ``merged`` with no new commit; a
      conflicting one is left on its branch as ``conflicts``. In directory mode the merged
      files are written into the folder, and a session whose files changed in the folder
      meanwhile is ``conflicts``.

    Raises :class:`MergeError` if git fails, a branch or the target does not exist, or (auto)
    the target is checked out with uncommitted tracked changes or in a linked worktree; in
    those cases nothing is changed. Merges that landed before an error stay, and their
    sessions say so.
    """
    if strategy not in ("review", "auto", "none"):
        raise MergeError(f"unknown merge strategy {strategy!r}: use review, auto or none")
    if strategy == "none":
        return None
    target = resolve_target(repo, target)
    todo = [s for s in results if s.status == SessionStatus.SUCCEEDED]
    if not todo:
        return None
    if strategy == "review":
        _review(repo, todo, target)
    else:
        _auto(repo, todo, target, run_id)
    return target


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


def auto_merge_blocker(repo: MainRepo | str | Path, target: str | None) -> str | None:
    """Why ``merge = "auto"`` into ``target`` would be refused now, or None if it would go ahead.

    Call it before a run starts to warn the user (the work would stay on the branches, exit 3);
    the merge itself checks again at the end. ``target`` None: the checked-out branch.
    """
    main = repo if isinstance(repo, MainRepo) else MainRepo(repo)
    if target is not None:
        try:
            check_branch_name(target)
        except ConfigError as exc:
            return str(exc)
    return merge_blocker(checkout_state(main, target))


def missed_merge_reason(warnings: list[str], now: str | None, before: str | None) -> str:
    """Why an automatic merge left work on the branches, for a run that did not say. Pure.

    In order: the merge's own error among the run's ``warnings`` (``merge: ...``), the blocker
    found ``now`` (after the run), the one found ``before`` it started.
    """
    for warning in warnings:
        if warning.startswith("merge: "):
            return warning.removeprefix("merge: ")
    return now or before or "the automatic merge did not run"


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


@contextmanager
def merge_lock(repo: MainRepo) -> Iterator[None]:
    """Hold the repository's merge lock (blocking): one automatic merge at a time."""
    path = repo.state_dir / "merge.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
    except OSError as exc:
        raise MergeError(f"cannot open the merge lock {path}: {exc}") from exc
    # flock locks the open file description, so two threads of one process exclude each other
    # as well as two processes do; the kernel drops it if the process dies.
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def resolve_target(repo: MainRepo, target: str | None) -> str:
    if target is None:
        target = repo.current_branch()
        if target is None:
            raise MergeError(
                f"{repo.root} has a detached HEAD: name the branch to merge into with --target"
            )
    check_branch_name(target)
    if repo.branch_head(target) is None:
        raise MergeError(f"target branch {target!r} does not exist in {repo.root}")
    return target


def _review(repo: MainRepo, sessions: list[SessionResult], target: str) -> None:
    git = SafeGit(repo)
    target_head = git.commit(target)
    for session in sessions:
        result = check_commits(git, target_head, git.commit(session.branch))
        session.merge = MergeInfo(
            status="clean" if result.clean else "conflicts", conflicts=list(result.conflicts)
        )
    by_branch = {s.branch: s for s in sessions}
    for (first, second), conflicts in conflict_matrix(repo, list(by_branch)).items():
        if not conflicts:
            continue
        # The matrix speaks from the first branch's side; mirror it for the second.
        mirrored = [
            Conflict(path=c.path, kind=c.kind, ours_lines=c.theirs_lines,
                     theirs_lines=c.ours_lines, with_branch=first)
            for c in conflicts
        ]
        for session, found in ((by_branch[first], conflicts), (by_branch[second], mirrored)):
            session.merge = MergeInfo(
                status="conflicts", conflicts=[*session.merge.conflicts, *found]
            )


def ready_to_move(git: SafeGit, repo: MainRepo, target: str) -> CheckoutState:
    """Under the merge lock: finish an interrupted checkout update, then refuse (MergeError) a
    target that may not move now (dirty checkout, detached, a rebase or merge in progress)."""
    _finish_interrupted_checkout(git)
    state = checkout_state(repo, target)
    refused = merge_blocker(state)
    if refused is not None:
        raise MergeError(refused)
    return state


def _auto(repo: MainRepo, sessions: list[SessionResult], target: str, run_id: str) -> None:
    git = SafeGit(repo)
    ref = f"refs/heads/{target}"
    with merge_lock(repo):
        worktree = ready_to_move(git, repo, target).checked_out
        for session in sessions:
            head = git.commit(ref)
            branch_head = git.commit(session.branch)
            if git.is_ancestor(branch_head, head):
                # Already home (an earlier merge, or a fast-forward): keep what merged it.
                session.merge = MergeInfo(status="merged", merge_commit=session.merge.merge_commit)
                continue
            result = check_commits(git, head, branch_head)
            if not result.clean or result.tree is None:
                session.merge = MergeInfo(status="conflicts", conflicts=list(result.conflicts))
                continue
            message = f"agentrt: merge session {session.id} (task {session.task_id}"
            message += f", run {run_id})" if run_id else ")"
            message += f"\n\nBranch: {session.branch}\n"
            commit = git.run("commit-tree", result.tree, "-p", head, "-p", branch_head,
                             input=message).stdout.strip()
            clashes = advance_target(git, ref, head, commit, worktree)
            if clashes:
                session.merge = MergeInfo(status="conflicts", conflicts=clashes)
                continue
            session.merge = MergeInfo(status="merged", merge_commit=commit)


def advance_target(git: SafeGit, ref: str, old: str, new: str,
                   worktree: Path | None) -> list[Conflict]:
    """Move the target ``ref`` from ``old`` to ``new``, with its checkout (or, in directory
    mode, its folder) following. Returns the folder's paths that changed underneath (then
    nothing moved); raises MergeError if the checkout cannot follow."""
    if git.repo.folder is not None:
        from runtime.git.directory_mode import CHANGED_IN_FOLDER, advance_folder

        with _signals_deferred():
            paths = advance_folder(git.repo, ref, old, new, git.config)
        return [Conflict(path=p, kind=CHANGED_IN_FOLDER) for p in paths]
    _advance(git, ref, old, new, worktree)
    return []


def _advance(git: SafeGit, ref: str, old: str, new: str, worktree: Path | None) -> None:
    """Move ``ref`` from ``old`` to ``new`` and, if it is checked out, the tree with it."""
    if worktree is not None:
        # Dry run first: if the checkout would fail (a local edit since the start, an untracked
        # file in the way) nothing has moved yet.
        proc = _read_tree(git, worktree, old, new, dry_run=True)
        if proc.returncode != 0:
            raise MergeError(
                f"cannot update the checkout in {worktree} to the merge: {proc.stderr.strip()}"
                " (commit, stash or move those files, or merge into another target with --target)"
            )
    # Ctrl-C between moving the branch and updating its checkout would leave them apart; the
    # signals wait (git children inherit the mask, so a terminal's SIGINT spares them too).
    pending = _pending_file(git)
    with _signals_deferred():
        if worktree is not None:
            # A SIGKILL between the two steps below cannot be deferred: leave a note so the
            # next merge finishes moving the checkout before anything else.
            pending.parent.mkdir(parents=True, exist_ok=True)
            pending.write_text(json.dumps({"ref": ref, "old": old, "new": new,
                                           "worktree": str(worktree)}))
        git.run("update-ref", "-m", "agentrt: merge", ref, new, old)
        if worktree is None:
            return
        proc = _read_tree(git, worktree, old, new, dry_run=False)
        if proc.returncode == 0:
            pending.unlink()
            return
        # Put the branch back so the checkout and its branch agree again.
        undo = git.run("update-ref", "-m", "agentrt: undo merge", ref, old, new, check=False)
        if undo.returncode == 0:
            pending.unlink()
    state = "the branch was put back" if undo.returncode == 0 else (
        f"the branch could not be put back ({undo.stderr.strip()})"
    )
    raise MergeError(f"cannot update the checkout in {worktree}: {proc.stderr.strip()}; {state}")


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for this thread (and the git it starts) until the block ends."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _pending_file(git: SafeGit) -> Path:
    return git.repo.state_dir / "merge-checkout-pending.json"


def _finish_interrupted_checkout(git: SafeGit) -> None:
    """Complete a checkout update an earlier merge was killed in the middle of."""
    pending = _pending_file(git)
    if not pending.exists():
        return
    try:
        note = json.loads(pending.read_text())
        ref, old, new, worktree = note["ref"], note["old"], note["new"], Path(note["worktree"])
    except (OSError, ValueError, KeyError, TypeError):
        pending.unlink(missing_ok=True)
        return
    current = git.run("rev-parse", "--verify", "--quiet", ref, check=False).stdout.strip()
    if current == new:
        proc = _read_tree(git, worktree, old, new, dry_run=False)
        if proc.returncode != 0:
            raise MergeError(
                f"an earlier merge was interrupted after moving {ref} to {new[:10]} but before "
                f"updating the checkout in {worktree}: {proc.stderr.strip()}; finish it with "
                f"`git -C {worktree} read-tree -m -u {old} {new}` and merge again")
    pending.unlink(missing_ok=True)


def _read_tree(
    git: SafeGit, worktree: Path, old: str, new: str, *, dry_run: bool
) -> subprocess.CompletedProcess[str]:
    args = ["read-tree", "-m", "-u", *(["-n"] if dry_run else []), old, new]
    return git.run(*args, work_tree=worktree, check=False)
