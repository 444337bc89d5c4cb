"""``agentrt rm``: forget sessions whose work is done with (their branch, saved log, refused
bundles and records), refusing to drop work that exists nowhere else.

:func:`plan_removal` decides from facts (pure but for reading git and the state database): a
live session is never removed (stop it first); a session whose work is still kept in a volume
is never removed here (``agentrt recover`` brings it home, ``agentrt discard`` drops it); a
session whose branch carries commits the target does not contain is *unmerged* and removed only
with ``force``. :func:`remove` then carries the plan out.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field

from runtime import paths
from runtime.errors import AgentRuntimeError, ConfigError
from runtime.git.safe_git import MainRepo
from runtime.git.session_work import delete_branch, is_merged, worktree_of
from runtime.models import WorkState
from runtime.state.store import SessionRow, Store


@dataclass
class Removal:
    """What ``agentrt rm`` would remove, and what it refuses to."""

    sessions: list[SessionRow] = field(default_factory=list)
    unmerged: list[SessionRow] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    """Session id -> why it cannot be removed at all (live, work kept in a volume)."""


def plan_removal(repo: MainRepo, store: Store, rows: list[SessionRow],
                 target: str | None) -> Removal:
    """Sort ``rows`` into removable, unmerged (removable with force) and refused."""
    plan = Removal()
    for row in rows:
        result = row.result
        if not row.status.is_final:
            plan.refused[row.id] = f"it is {row.status.value}: `agentrt stop {row.id}` first"
            continue
        if result.work is WorkState.KEPT:
            plan.refused[row.id] = (f"its work is kept in a volume: `agentrt recover {row.id}` "
                                    f"brings it home, `agentrt discard {row.id}` drops it")
            continue
        plan.sessions.append(row)
        head = repo.branch_head(row.branch) if row.branch else None
        into = target or store.find_run(row.run_id).target
        if head and head != result.base_commit and not (into and is_merged(repo, head, into)):
            plan.unmerged.append(row)
    return plan


def remove(repo: MainRepo, store: Store, plan: Removal, *, force: bool = False) -> list[str]:
    """Carry ``plan`` out; return the ids removed. ConfigError (nothing removed) if it holds
    unmerged work and not ``force``, or refused sessions."""
    if plan.refused:
        raise ConfigError("; ".join(f"{sid}: {why}" for sid, why in plan.refused.items()))
    if plan.unmerged and not force:
        raise ConfigError("not merged into the target, so its branch is the only copy: "
                          + ", ".join(f"{r.id} ({r.branch})" for r in plan.unmerged)
                          + "; merge it, or pass --force to drop it")
    removed = []
    going = {row.id for row in plan.sessions}
    # A branch `agentrt continue` shares with a session that stays is that session's too.
    shared = {r.branch for r in store.list_sessions() if r.id not in going}
    for row in plan.sessions:
        if row.branch and row.branch not in shared:
            delete_branch(repo, row.branch)
            drop_carried_state(repo, row.branch)
        paths.log_path(repo.state_dir, row.id).unlink(missing_ok=True)
        shutil.rmtree(paths.harvest_dir(repo.state_dir, row.id), ignore_errors=True)
        store.delete_session(row.id)
        removed.append(row.id)
    return removed


def drop_carried_state(repo: MainRepo, branch: str) -> None:
    """Remove the state a branch's sessions kept for ``agentrt continue``
    (:mod:`runtime.engine.carry`); best effort: an engine that does not answer keeps it."""
    from runtime.engine.carry import carry_name, remove_carry
    from runtime.engine.discovery import get_client

    with contextlib.suppress(AgentRuntimeError):
        remove_carry(get_client(), carry_name(str(repo.root), branch))


def delete_merged_branches(repo: MainRepo, store: Store) -> list[str]:
    """Delete the branch of every finished session whose work its run's target contains (the
    merge commit keeps it; ``agentrt revert`` needs only that); return the branches deleted.
    A branch checked out in a worktree, or with commits the target lacks, stays."""
    deleted = []
    targets = {run.id: run.target for run in store.list_runs()}
    for row in store.list_sessions():
        head = repo.branch_head(row.branch) if row.branch and row.status.is_final else None
        into = targets.get(row.run_id)
        if head is None or head == row.result.base_commit or not into:
            continue
        if is_merged(repo, head, into) and worktree_of(repo, row.branch) is None:
            delete_branch(repo, row.branch)
            drop_carried_state(repo, row.branch)
            deleted.append(row.branch)
    return deleted
