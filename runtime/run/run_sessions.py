"""Making a run's sessions: the arguments every session of the run shares, the session of a
task (from the run's seed checkout when it starts from the run's base), the warm pool that
prepares waiting tasks ahead, and taking a session from it.

:class:`RunSessions` is made by :class:`~runtime.run.coordinator.AgentCoordinator` when a run
starts, with everything it needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from runtime.config import RunConfig, Task
from runtime.engine.types import EngineClient
from runtime.errors import AgentRuntimeError
from runtime.git.safe_git import MainRepo
from runtime.git.workspace import prepare_base
from runtime.models import SessionResult, SessionStatus
from runtime.run.continuation import Continuation, adopt
from runtime.run.dep_notes import write_dep_notes
from runtime.run.session import IsolatedAgentSession
from runtime.run.warm_pool import WarmPool, pool_size

if TYPE_CHECKING:
    from runtime.backends.base import Backend, Placement
    from runtime.engine.egress import RunEgress
    from runtime.run.environments import EnvImage
    from runtime.state.store import Store


class RunSessions:
    """The sessions of one run, made alike; some prepared ahead (:attr:`pool`)."""

    def __init__(self, config: RunConfig, repo: MainRepo, run_id: str,
                 client: EngineClient, backend: Backend, *, store: Store | None,
                 egress: RunEgress | None, stop_grace_seconds: int,
                 env_images: Mapping[str, EnvImage], seeded: bool, base_commit: str,
                 task_base: Mapping[str, str],
                 continuations: Mapping[str, Continuation] | None = None) -> None:
        self.config = config
        self.repo = repo
        self.run_id = run_id
        self.client = client
        self.backend = backend
        self.store = store
        self.egress = egress
        self.stop_grace_seconds = stop_grace_seconds
        # The coordinator's own mappings: tasks added while the run goes appear here too.
        self._env_images = env_images
        self._task_base = task_base
        self._seeded = seeded
        self._base_commit = base_commit
        # `agentrt continue` (runtime/run/continuation.py): task id → the session it continues.
        self._continuations: Mapping[str, Continuation] = continuations or {}
        self.pool: WarmPool | None = None

    def ahead(self, task_id: str) -> IsolatedAgentSession | None:
        """The task's session prepared ahead by the pool, its row now the task's; or None."""
        session = self.pool.take(task_id) if self.pool is not None else None
        if session is not None:
            session.take()
        return session

    def new_session(self, task: Task, base_commit: str, results: dict[str, SessionResult],
                    store: Store | None,
                    placement: Placement | None = None) -> IsolatedAgentSession:
        """A session for ``task`` (recorded in ``store`` when it prepares), where
        ``placement`` says (None: it places itself when it prepares). Its start: the base
        with its dependencies' branches merged in."""
        start = prepare_base(self.repo, base_commit, [
            (results[d].branch, results[d].head_commit or "") for d in task.deps
        ])
        # The seed holds the run's base: a task starting from its dependencies' work (a base
        # of its own) checks out directly.
        seeded = self._seeded and start == self._base_commit
        session = IsolatedAgentSession(
            task, self.config, repo=self.repo, run_id=self.run_id, base_commit=start,
            client=self.client, backend=self.backend, placement=placement, store=store,
            stop_grace_seconds=self.stop_grace_seconds, egress=self.egress,
            environment=self._env_images.get(task.id), seeded=seeded)
        if task.id in self._continuations:  # `agentrt continue`: the branch's next session
            adopt(session, self._continuations[task.id])
        notes = write_dep_notes(self.repo, self.run_id, task.id, [results[d] for d in task.deps])
        if notes is not None:
            session.extra_mounts = (notes,)
        return session

    def start_pool(self, by_id: Mapping[str, Task], base_commit: str,
                   results: dict[str, SessionResult]) -> WarmPool | None:
        """The pool preparing waiting tasks ahead (runtime/run/warm_pool.py), if any;
        ``by_id``: the run's tasks, those added later included."""
        size = pool_size(self.config, len(by_id), prepares_ahead=self.backend.prepares_ahead)
        if size == 0:
            return None

        def make(task_id: str) -> IsolatedAgentSession | None:
            try:
                session = self.new_session(by_id[task_id],
                                           self._task_base.get(task_id) or base_commit,
                                           results, store=self.store)
            except AgentRuntimeError:  # e.g. its dependencies conflict: found when it starts
                return None
            # Recorded as it prepares, before its branch exists: `ps` shows it, and `gc`
            # removes its branch, volume and row if this process dies first.
            session.result.status = SessionStatus.PREPARED
            return session

        self.pool = WarmPool(size, make)
        return self.pool
