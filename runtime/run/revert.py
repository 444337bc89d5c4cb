"""Take one agent's work back out of the target: revert its session's merge commit.

``agentrt revert SESSION`` makes one commit on the target that undoes the merge commit
``agentrt merge`` (or a run with ``merge = "auto"``) made for that session; ``agentrt revert
RUN`` does so for every merged session of the run, newest merge first, one commit each. It is
as safe as a merge (:mod:`runtime.git.merge`):

* the revert is computed in the object database: ``git merge-tree --write-tree`` of the target
  and a throw-away commit holding the merge's first parent's tree on top of the merge, i.e. a
  three-way merge with the merge commit as base (what ``git revert -m 1`` computes), so no
  working tree or index is touched;
* every revert commit is made first; the target then moves once, ``update-ref <new> <old>``
  (compare-and-swap), under the merge lock; a checked-out target's files follow only when its
  checkout is clean (``read-tree -m -u``), in directory mode the folder's files are written;
* if any revert conflicts (later work changed the same lines) nothing moves:
  :class:`RevertConflictError` lists the paths (the CLI exits 3).

The state database records each revert (an event ``reverted`` on the session, a line in the
session's and the run's warnings), so ``agentrt report`` shows it. A session whose merge was
reverted stays ``merged`` in git's sense: its branch is contained in the target, so merging it
again does nothing; ``git revert <revert commit>`` brings the work back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runtime import paths
from runtime.errors import ConfigError, MergeError, NotFoundError
from runtime.git.conflicts import SafeGit, check_commits
from runtime.git.merge import merge_lock, ready_to_move
from runtime.git.safe_git import MainRepo
from runtime.git.target_move import advance_target
from runtime.models import Conflict, SessionResult
from runtime.state.schema import SessionRow

if TYPE_CHECKING:
    from runtime.run.session import IsolatedAgentSession
    from runtime.state.store import Store

REVERTED = "reverted"


@dataclass(frozen=True)
class Reverted:
    """One session whose merge commit was reverted on ``target`` by ``revert_commit``."""

    session_id: str
    task_id: str
    run_id: str
    branch: str
    target: str
    merge_commit: str
    revert_commit: str


class RevertConflictError(MergeError):
    """A revert would conflict with later work on the target; nothing was changed.

    ``conflicts`` maps the session id (``folder`` for files the folder changed underneath, in
    directory mode) to its conflicting paths."""

    def __init__(self, message: str, conflicts: dict[str, list[Conflict]]) -> None:
        super().__init__(message)
        self.conflicts = conflicts


def revert_session(
    session_or_run: str | SessionResult | IsolatedAgentSession,
    repo: str | os.PathLike[str] | MainRepo | None = None,
    *,
    target: str | None = None,
) -> list[Reverted]:
    """Revert a merged session's merge commit on its run's target; return what was reverted.

    ``session_or_run`` is a session (an id or unique prefix, a :class:`SessionResult`, or an
    :class:`~runtime.run.session.IsolatedAgentSession`) or a run id (every merged session of the
    run, newest merge first, one commit each). ``repo`` defaults to the session's repository,
    else the current directory. ``target`` defaults to the run's target.

    Raises :class:`RevertConflictError` (nothing changed) when a revert conflicts with later
    work; :class:`MergeError` when the session was not merged by a commit of its own, was
    already reverted, its merge is not on the target, or the target's checkout is dirty;
    :class:`NotFoundError` when nothing matches.
    """
    main = _repo(session_or_run, repo)
    from runtime.state.store import Store

    path = paths.state_db(main.state_dir)
    if not path.exists():
        raise NotFoundError(f"no agentrt runs in {main.root} yet")
    with Store(path) as store:
        rows = _resolve(store, session_or_run)
        return _revert(main, store, rows, target)


def _repo(value: object, repo: str | os.PathLike[str] | MainRepo | None) -> MainRepo:
    if isinstance(repo, MainRepo):
        return repo
    if repo is not None:
        if not isinstance(repo, str | os.PathLike):
            raise ConfigError(f"repo must be a path or a MainRepo, not {type(repo).__name__}")
        return MainRepo(Path(repo))
    own = getattr(value, "repo", None)
    return own if isinstance(own, MainRepo) else MainRepo(".")


def _resolve(store: Store, value: object) -> list[SessionRow]:
    """The stored sessions ``value`` names: one session, or every session of a run."""
    result = value if isinstance(value, SessionResult) else getattr(value, "result", None)
    if isinstance(result, SessionResult):
        return [store.get_session(result.id)]
    if not isinstance(value, str):
        raise ConfigError("revert_session takes a session or run id, a SessionResult or an "
                          f"IsolatedAgentSession, not {type(value).__name__}")
    if value == "latest":
        latest = store.latest_run()
        if latest is None:
            raise NotFoundError("no runs recorded yet")
        return store.list_sessions(latest.id)
    session = run = None
    errors: list[str] = []
    try:
        session = store.find_session(value)
    except NotFoundError as exc:
        errors.append(str(exc))
    try:
        run = store.find_run(value)
    except NotFoundError as exc:
        errors.append(str(exc))
    if session is not None and run is not None:
        raise NotFoundError(f"'{value}' names session {session.id} and run {run.id}: give "
                            "more characters")
    if session is not None:
        return [session]
    if run is not None:
        return store.list_sessions(run.id)
    raise NotFoundError("; ".join(errors))


def _revert(main: MainRepo, store: Store, rows: list[SessionRow],
            target: str | None) -> list[Reverted]:
    single = len({r.run_id for r in rows}) == 1 and len(rows) == 1
    merged = [r for r in rows if r.result.merge.status == "merged" and r.result.merge.merge_commit]
    if single and not merged:
        row = rows[0]
        why = ("it was merged without a commit of its own (the target already contained it)"
               if row.result.merge.status == "merged" else
               f"its merge status is {row.result.merge.status}")
        raise MergeError(f"session {row.id} has no merge commit to revert: {why}")
    already = {e.session_id for r in {row.run_id for row in rows}
               for e in store.events(run_id=r) if e.kind == REVERTED}
    if single and merged and merged[0].id in already:
        raise MergeError(f"session {merged[0].id} was already reverted")
    merged = [r for r in merged if r.id not in already]
    if not merged:
        raise MergeError("nothing to revert: no session of the run has a merge commit that was "
                         "not reverted yet")
    runs = {r.run_id: store.find_run(r.run_id) for r in merged}
    targets = {target or runs[r.run_id].target or main.current_branch() for r in merged}
    if len(targets) != 1 or None in targets:
        raise MergeError("cannot tell which branch to revert on: pass --target")
    into = str(targets.pop())
    ref = f"refs/heads/{into}"
    git = SafeGit(main)
    with merge_lock(main):
        state = ready_to_move(git, main, into)
        old = git.commit(ref)
        order = _first_parent_order(git, old)
        for row in merged:
            if row.result.merge.merge_commit not in order:
                raise MergeError(f"session {row.id}'s merge commit "
                                 f"{str(row.result.merge.merge_commit)[:10]} is not on {into}")
        # Newest merge first: later merges may build on earlier ones.
        merged.sort(key=lambda r: order[str(r.result.merge.merge_commit)])
        head, done = old, []
        for row in merged:
            commit = _revert_commit(git, head, row, into)
            done.append(Reverted(row.id, row.task_id, row.run_id, row.branch, into,
                                 str(row.result.merge.merge_commit), commit))
            head = commit
        clashes = advance_target(git, ref, old, head, state.checked_out)
        if clashes:
            raise RevertConflictError(
                "the folder changed underneath in " + ", ".join(c.path for c in clashes)
                + ": nothing was reverted", {"folder": clashes})
    _record(store, done)
    return done


def _first_parent_order(git: SafeGit, head: str) -> dict[str, int]:
    out = git.run("rev-list", "--first-parent", head).stdout.split()
    return {commit: index for index, commit in enumerate(out)}


def _revert_commit(git: SafeGit, head: str, row: SessionRow, target: str) -> str:
    merge_commit = str(row.result.merge.merge_commit)
    first_parent = git.commit(f"{merge_commit}^1")
    # A commit holding the pre-merge tree on top of the merge: merging it into the target is
    # a three-way merge with the merge commit as base, which is what reverting it means.
    undo = git.run("commit-tree", f"{first_parent}^{{tree}}", "-p", merge_commit,
                   input="agentrt: revert (temporary)\n").stdout.strip()
    check = check_commits(git, head, undo)
    if not check.clean or check.tree is None:
        paths = ", ".join(sorted({c.path for c in check.conflicts}))
        raise RevertConflictError(
            f"reverting session {row.id} conflicts with later work on {target} in {paths}: "
            "nothing was reverted", {row.id: list(check.conflicts)})
    message = (f"agentrt: revert session {row.id} (task {row.task_id}, run {row.run_id})\n\n"
               f"This reverts the merge commit {merge_commit} of branch {row.branch}.\n\n"
               f"Reverts: {merge_commit}\n")
    return git.run("commit-tree", check.tree, "-p", head, input=message).stdout.strip()


def _record(store: Store, done: list[Reverted]) -> None:
    for item in done:
        note = (f"revert: session {item.session_id} (task {item.task_id}): merge "
                f"{item.merge_commit[:10]} reverted by {item.revert_commit[:10]} on "
                f"{item.target}")
        store.add_event(item.run_id, REVERTED, note, session_id=item.session_id)
        row = store.get_session(item.session_id)
        result = row.result
        result.warnings.append(note)
        store.upsert_session(result, item.run_id)
        run = store.find_run(item.run_id)
        store.finish_run(run.id, run.status, warnings=[*run.warnings, note],
                         finished_at=run.finished_at)
