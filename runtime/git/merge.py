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

The facts and the rule of that check are :mod:`runtime.git.checkout_state`; moving the target
and its checkout together, :mod:`runtime.git.target_move`.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from runtime.config import MergeStrategy
from runtime.crash_points import crash_point
from runtime.errors import ConfigError, MergeError
from runtime.git.checkout_state import CheckoutState, checkout_state, merge_blocker
from runtime.git.conflicts import MergeCheck, SafeGit, check_commits, check_merge, conflict_matrix
from runtime.git.safe_git import MainRepo, check_branch_name
from runtime.git.target_move import advance_target, finish_interrupted_checkout
from runtime.models import (
    Conflict,
    GateResult,
    MergeInfo,
    SessionResult,
    SessionStatus,
    settle_merge,
)

__all__ = [
    "MergeCheck",
    "auto_merge_blocker",
    "check_merge",
    "conflict_matrix",
    "merge_branches",
    "resolve_target",
    "merge_lock",
    "missed_merge_reason",
]

log = logging.getLogger(__name__)

Landed = Callable[[SessionResult], None]

#: The merge gate (:mod:`runtime.run.merge_gate`): called with a session and the would-be merge
#: commit (the target with the session's work), under the merge lock and before the target
#: moves; returns its verdict, or None when this session has no gate.
Gate = Callable[[SessionResult, str], GateResult | None]


def merge_branches(results: list[SessionResult], strategy: MergeStrategy, repo: MainRepo,
                   target: str | None = None, run_id: str = "",
                   landed: Landed | None = None, gate: Gate | None = None) -> str | None:
    """Fill ``merge`` of every succeeded session in ``results``; return the target (None for
    ``none`` or when nothing succeeded).

    Whatever the strategy, a session whose work is off its branch (kept, refused, lost: see
    :func:`runtime.models.settle_merge`) is ``not_merged`` with the reason and is neither
    checked nor merged: its branch (often still at its base, so "contained" in the target)
    does not stand for its work. So is a session whose branch no longer carries its recorded
    ``head_commit`` (rewritten or reset since).

    * ``none``: nothing is checked; every other ``merge.status`` stays ``not_attempted``.
    * ``review``: each branch is checked against ``target`` (``clean`` or ``conflicts``) and
      against every other succeeded branch; nothing is merged. Conflicts with another branch
      carry ``with_branch``; conflicts with the target have ``with_branch=None``.
    * ``auto``: branches are merged one at a time in the order given, each checked against the
      target as it is after the previous merges. A clean one becomes a merge commit
      (``merged``); a branch whose session's work the target already contains is ``merged``
      with no new commit; a conflicting one is left on its branch as ``conflicts``. In
      directory mode the merged files are written into the folder, and a session whose files
      changed in the folder meanwhile is ``conflicts``. With a ``gate``, each clean merge
      commit is first handed to it, on top of the merges before it (a merge queue); a failing
      verdict leaves the work on its branch as ``gate_failed`` and the target where it was.

    Raises :class:`MergeError` if git fails, a branch or the target does not exist, or (auto)
    the target is checked out with uncommitted tracked changes or in a linked worktree; in
    those cases nothing is changed. Merges that landed before an error stay, and their
    sessions say so. ``landed`` is called with each session as its merge lands (``auto``),
    before the next is tried, so a record of it survives a kill in the middle of the merge.
    """
    if strategy not in ("review", "auto", "none"):
        raise MergeError(f"unknown merge strategy {strategy!r}: use review, auto or none")
    settle_merge(results)
    if strategy == "none":
        return None
    target = resolve_target(repo, target)
    todo = _branches_carrying_work(repo, [
        s for s in results
        if s.status == SessionStatus.SUCCEEDED and s.merge.status != "not_merged"])
    if not todo:
        return None
    if strategy == "review":
        _review(repo, todo, target)
    else:
        _auto(repo, todo, target, run_id, landed or (lambda session: None), gate)
    return target


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


def _branches_carrying_work(repo: MainRepo,
                            sessions: list[SessionResult]) -> list[SessionResult]:
    """The sessions whose branch still carries their recorded head commit; the others are
    marked ``not_merged`` (the branch was reset or rewritten: it no longer stands for them)."""
    if not any(s.head_commit for s in sessions):
        return sessions
    git = SafeGit(repo)
    carrying = []
    for session in sessions:
        head = session.head_commit
        if session.merge.status == "merged" and session.merge.merge_commit and \
                repo.branch_head(session.branch) is None:
            continue  # landed, then its branch was deleted (delete_merged_branches): stays merged
        if head and not _contains(git, session.branch, head):
            session.merge = MergeInfo(
                status="not_merged",
                reason=f"branch {session.branch} no longer carries the session's work "
                       f"({head[:10]}): it was reset or rewritten")
            continue
        carrying.append(session)
    return carrying


def _contains(git: SafeGit, branch: str, commit: str) -> bool:
    """True if ``branch``'s tip is or descends from ``commit`` (False if it is unknown)."""
    if git.run("cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode != 0:
        return False
    return git.is_ancestor(commit, git.commit(branch))


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
    finish_interrupted_checkout(git)
    state = checkout_state(repo, target)
    refused = merge_blocker(state)
    if refused is not None:
        raise MergeError(refused)
    return state


def _auto(repo: MainRepo, sessions: list[SessionResult], target: str, run_id: str,
          landed: Landed, gate: Gate | None) -> None:
    git = SafeGit(repo)
    ref = f"refs/heads/{target}"
    with merge_lock(repo):
        worktree = ready_to_move(git, repo, target).checked_out
        for session in sessions:
            head = git.commit(ref)
            branch_head = git.commit(session.branch)
            if git.is_ancestor(branch_head, head):
                # Already home (an earlier merge, or a fast-forward): keep what merged it.
                session.merge = MergeInfo(status="merged", merge_commit=session.merge.merge_commit,
                                          gate=session.merge.gate)
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
            verdict = gate(session, commit) if gate is not None else None
            if verdict is not None and verdict.verdict == "failed":
                session.merge = MergeInfo(status="gate_failed", gate=verdict)
                continue
            clashes = advance_target(git, ref, head, commit, worktree)
            if clashes:
                session.merge = MergeInfo(status="conflicts", conflicts=clashes, gate=verdict)
                continue
            session.merge = MergeInfo(status="merged", merge_commit=commit, gate=verdict)
            landed(session)
            crash_point("merge")
