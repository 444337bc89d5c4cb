"""``agentrt continue SESSION -p PROMPT``: a follow-up session of the same task on the same branch.

The new session (a new id, recorded as a child: ``continues`` in its state row, its JSON report
and its replay manifest) is a session of a new run made from the first one's run settings:
the same image, limits, network, allowlist, database strategy and preset. It differs in three
ways, all decided here:

* it starts from the branch's head, not the first run's base, and it works on the *same*
  branch: no branch is made, and its work comes home onto that branch by the usual
  compare-and-swap (a branch that moved in between is caught there);
* its private data directory (``/agentrt/db``: the SQLite file ``AGENT_DB`` and the agent
  CLI's conversation state) starts as a copy of what the branch's last session left, kept in
  the branch's carry volume (:mod:`runtime.engine.carry`);
* a preset that can resume runs its ``resume`` argv (``claude -p --continue``, ``codex exec
  resume --last``, ``aider --restore-chat-history``): the agent remembers its earlier turns.

Refused before anything starts (ConfigError, exit 2 on the command line): a session still
running, one whose branch is gone, whose work is not home (``kept``, ``refused``, ``lost``),
which never ran, or which another live session is already continuing; the ``shared``
(PostgreSQL) database strategy and Swarm runs (their databases and volumes are not carried).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runtime import paths
from runtime.config import RunConfig, Task
from runtime.errors import ConfigError, NotFoundError, VolumeError
from runtime.git.safe_git import MainRepo
from runtime.models import RunReport, WorkState
from runtime.state.store import SessionRow

if TYPE_CHECKING:
    from runtime.backends.base import SessionTree
    from runtime.engine.types import EngineClient, Mount
    from runtime.run.coordinator import AgentCoordinator, Listener
    from runtime.run.session import IsolatedAgentSession
    from runtime.state.store import Store

log = logging.getLogger(__name__)

#: Work states from which a branch holds everything its session did.
HOME_STATES = (WorkState.HOME, WorkState.FILES_ONLY, WorkState.NONE)


@dataclass(frozen=True)
class Continuation:
    """What makes a session the continuation of another: the branch it works on and the
    head it starts from, the session it continues, and the carry volume of its state."""

    parent: str
    branch: str
    head: str
    carry: str

    def check_branch(self, repo: MainRepo) -> None:
        """Before the session takes the branch: it must still be at :attr:`head`."""
        now = repo.branch_head(self.branch)
        if now != self.head:
            raise ConfigError(f"branch {self.branch} moved since the continuation was planned "
                              f"({self.head[:10]} → {(now or 'deleted')[:10]}): run "
                              f"`agentrt continue {self.parent}` again")


def continuation_problem(row: SessionRow, branch_head: str | None,
                         live_on_branch: Sequence[str]) -> str | None:
    """Why ``row`` cannot be continued now, or None (pure).

    ``branch_head``: its branch's head in the repository (None: deleted);
    ``live_on_branch``: ids of other sessions still pending or running on that branch."""
    result = row.result
    if not row.status.is_final:
        return (f"session {row.id} is still {row.status.value}: continue it once it ends "
                f"(`agentrt attach`/`agentrt logs -f {row.id}` meanwhile)")
    if live_on_branch:
        return (f"session {', '.join(live_on_branch)} is already working on {row.branch}: "
                "continue that one once it ends")
    if row.manifest is None or result.started_at is None:
        return f"session {row.id} never ran ({row.status.value}): nothing to continue"
    if branch_head is None:
        return (f"the branch {row.branch} of session {row.id} is gone (removed by `agentrt "
                "rm` or `gc --merged-branches`): nothing to continue from")
    if result.work not in HOME_STATES:
        hint = {WorkState.KEPT: f"`agentrt recover {row.id}` brings it home first",
                WorkState.REFUSED: "its bundle was refused; see `agentrt report`",
                }.get(result.work, "it can no longer be brought home")
        return f"the work of session {row.id} is not home ({result.work.value}): {hint}"
    return None


def plan_continuation(repo: MainRepo, store: Store, session: str, prompt: str, *,
                      merge: str | None = None) -> tuple[RunConfig, Task, Continuation]:
    """The run settings, the task and the :class:`Continuation` of a follow-up of
    ``session`` (an id or unique prefix) with ``prompt``. ConfigError: it cannot be
    continued (:func:`continuation_problem`); NotFoundError: no such session."""
    from runtime.engine.carry import carry_name

    if not prompt.strip():
        raise ConfigError("continue: give the follow-up prompt (-p PROMPT)")
    row = store.find_session(session)
    head = repo.branch_head(row.branch) if row.branch else None
    live = [r.id for r in store.list_sessions(include_finished=False)
            if r.branch == row.branch and r.id != row.id]
    problem = continuation_problem(row, head, live)
    if problem is not None or head is None or row.manifest is None:
        raise ConfigError(problem or f"session {row.id} cannot be continued")
    run = store.find_run(row.run_id)
    config = RunConfig.model_validate_json(run.config_json)
    if config.engine == "swarm":
        raise ConfigError(f"session {row.id} ran on a Swarm: continuing Swarm sessions is not "
                          "supported yet (its volume and state stay on its node)")
    if config.database_strategy == "shared":
        raise ConfigError(f"session {row.id} used the shared PostgreSQL database, whose "
                          "database goes with its run: continuing it is not supported yet")
    updates: dict[str, object] = {"base": head, "max_concurrent_agents": 1,
                                  "target": run.target, "merge": merge or run.merge}
    config = config.model_copy(update=updates)
    task = Task.model_validate(row.manifest.task)
    task = task.model_copy(update={"prompt": prompt, "deps": []})
    return config, task, Continuation(parent=row.id, branch=row.branch, head=head,
                                      carry=carry_name(str(repo.root), row.branch))


def continue_session(session: str, prompt: str, *,
                     repo: str | os.PathLike[str] | MainRepo = ".",
                     merge: str | None = None, listener: Listener | None = None,
                     client: EngineClient | None = None) -> RunReport:
    """Give the agent of ``session`` (an id or unique prefix) a follow-up ``prompt``: a new
    session of its task on its branch, from the branch's head, with its database and the
    agent's conversation kept (see the module docstring). Returns the new run's report (one
    session, whose ``continues`` names ``session``). ``merge`` overrides the first run's
    merge mode (review | auto | none).

    Raises ConfigError (nothing started) when it cannot be continued, NotFoundError when no
    session matches."""
    coordinator, task = continuation_run(session, prompt, repo=repo, merge=merge,
                                         listener=listener, client=client)
    return coordinator.run_agents([task])


def continuation_run(session: str, prompt: str, *,
                     repo: str | os.PathLike[str] | MainRepo = ".",
                     merge: str | None = None, listener: Listener | None = None,
                     client: EngineClient | None = None,
                     ) -> tuple[AgentCoordinator, Task]:
    """The checked (preflight done) coordinator of a continuation and its one task, not yet
    run: :func:`continue_session` without its last step, for a caller that watches it."""
    from runtime.run.coordinator import AgentCoordinator
    from runtime.state.store import Store

    main = repo if isinstance(repo, MainRepo) else MainRepo(Path(repo))
    path = paths.state_db(main.state_dir)
    if not path.exists():
        raise NotFoundError(f"no agentrt runs in {main.root} yet")
    with Store(path) as store:
        config, task, continuation = plan_continuation(main, store, session, prompt,
                                                       merge=merge)
    coordinator = AgentCoordinator(config=config, repo=main, listener=listener, client=client)
    coordinator.continuations[task.id] = continuation
    coordinator.preflight([task])
    return coordinator, task


def adopt(session: IsolatedAgentSession, continuation: Continuation) -> None:
    """Make the (not yet prepared) ``session`` the continuation: the branch and start it
    works from, and the record naming its parent."""
    session.continues = continuation
    session.branch = continuation.branch
    session.base_commit = continuation.head
    session.result.branch = continuation.branch
    session.result.base_commit = continuation.head
    session.result.continues = continuation.parent


def _data_mount(tree: SessionTree) -> Mount | None:
    from runtime.engine.container import DB_MOUNT

    return next((m for m in tree.agent_mounts() if m.get("Target") == DB_MOUNT), None)


def carry_labels(session: IsolatedAgentSession) -> dict[str, str]:
    """The labels of the carry volume ``session`` writes (and of its helpers)."""
    from runtime.engine.carry import LABEL_BRANCH
    from runtime.engine.labels import LABEL_REPO, LABEL_RUN, LABEL_SESSION

    return {LABEL_REPO: str(session.repo.root), LABEL_BRANCH: session.branch,
            LABEL_SESSION: session.session_id, LABEL_RUN: session.run_id}


def restore_state(session: IsolatedAgentSession) -> None:
    """Before a continuation's agent starts: its data directory as its parent left it. A carry
    that is missing (its parent kept its volume, or ran before agentrt kept state) is a
    warning: the agent starts with a fresh database and no conversation."""
    from runtime.engine.carry import restore_carry

    continuation, tree = session.continues, session.tree
    mount = _data_mount(tree) if tree is not None else None
    if continuation is None or mount is None:
        return
    try:
        restore_carry(session.client, continuation.carry, mount,
                      carry_labels(session))
    except VolumeError as exc:
        session.result.warnings.append(
            f"continued without the state of {continuation.parent}: {exc} (it left none, or "
            "kept its volume); the database and the agent's conversation start afresh")


def untouched(db_dir: Path) -> bool:
    """Whether a session's data directory on this host is as agentrt made it: only the empty
    SQLite file (one page: a table or a row makes it larger; the agent CLI's state is more
    entries). Reads the directory's listing and one ``lstat``, never a file."""
    from runtime.databases.sqlite import EMPTY_BYTES, SQLITE_NAME

    try:
        if os.listdir(db_dir) != [SQLITE_NAME]:
            return False
        info = (db_dir / SQLITE_NAME).lstat()
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size <= EMPTY_BYTES


def keep_state(session: IsolatedAgentSession) -> None:
    """When a session that ran releases its volume: its data directory into its branch's
    carry volume, for a later ``agentrt continue`` (not for a Swarm session, whose tree is
    on its node). A directory on this host that the agent left as it was made costs no
    helper: there is nothing to carry (most command tasks). On the engine's host the
    directory cannot be looked at without a helper (1-2 s), so there only an agent preset's
    state (its conversation, its database) is carried; a command task continued there starts
    with a fresh database."""
    from runtime.engine.carry import carry_name, save_carry

    tree = session.tree
    if tree is None or not tree.carries_state or not session.branch:
        return
    volume = tree.host_volume
    if volume is not None and untouched(volume.db_dir):
        return
    if volume is None and session.task.command is not None:
        return
    mount = _data_mount(tree)
    if mount is None:
        return
    save_carry(session.client, mount,
               carry_name(str(session.repo.root), session.branch), carry_labels(session))
