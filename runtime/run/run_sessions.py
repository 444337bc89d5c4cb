"""Making a run's sessions: the arguments every session of the run shares, the session of a
task (from the run's seed checkout when it starts from the run's base), the warm pool that
prepares waiting tasks ahead, and taking a session from it.

:class:`RunSessions` is a mixin of :class:`~runtime.run.coordinator.AgentCoordinator`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import docker

from runtime.config import RunConfig, Task
from runtime.errors import AgentRuntimeError
from runtime.git.safe_git import MainRepo
from runtime.git.workspace import prepare_base
from runtime.models import SessionResult
from runtime.run.continuation import Continuation, adopt
from runtime.run.dep_notes import write_dep_notes
from runtime.run.session import IsolatedAgentSession
from runtime.run.warm_pool import WarmPool, pool_size

if TYPE_CHECKING:
    from runtime.engine.egress import RunEgress
    from runtime.run.environments import EnvImage
    from runtime.run.supervisor import Supervisor
    from runtime.run.swarm_session import SwarmRun
    from runtime.state.store import Store


class RunSessions:
    """The sessions of one run, made alike; some prepared ahead."""

    if TYPE_CHECKING:
        config: RunConfig
        repo: MainRepo
        run_id: str
        supervisor: Supervisor | None
        store: Store | None
        egress: RunEgress | None
        stop_grace_seconds: int
        _env_images: dict[str, EnvImage]
        _seeded: bool
        _pool: WarmPool | None
        _swarm: SwarmRun | None
        _base_commit: str
        _task_base: dict[str, str]
        continuations: dict[str, Continuation]

        @property
        def client(self) -> docker.DockerClient: ...

    def _ahead(self, task_id: str) -> IsolatedAgentSession | None:
        """The task's session prepared ahead by the pool, now in the state database; or None."""
        session = self._pool.take(task_id) if self._pool is not None else None
        if session is not None and self.store is not None:
            session.attach_store(self.store)
        return session

    def _session_args(self, task: Task, base_commit: str,
                      results: dict[str, SessionResult]) -> dict[str, Any]:
        """What every session of this run is made with (its start: the base with its
        dependencies' branches merged in)."""
        start = prepare_base(self.repo, base_commit, [
            (results[d].branch, results[d].head_commit or "") for d in task.deps
        ])
        return dict(repo=self.repo, run_id=self.run_id, base_commit=start, client=self.client,
                    supervisor=self.supervisor, store=self.store,
                    stop_grace_seconds=self.stop_grace_seconds,
                    environment=self._env_images.get(task.id))

    def _new_session(self, task: Task, base_commit: str, results: dict[str, SessionResult],
                     store: Store | None) -> IsolatedAgentSession:
        """A session of this engine for ``task`` (recorded in ``store`` when it prepares)."""
        args = {**self._session_args(task, base_commit, results), "store": store}
        # The seed holds the run's base: a task starting from its dependencies' work (a base
        # of its own) checks out directly.
        seeded = self._seeded and args["base_commit"] == self._base_commit
        session = IsolatedAgentSession(task, self.config, egress=self.egress, seeded=seeded,
                                       **args)
        if task.id in self.continuations:  # `agentrt continue`: the branch's next session
            adopt(session, self.continuations[task.id])
        notes = write_dep_notes(self.repo, self.run_id, task.id, [results[d] for d in task.deps])
        if notes is not None:
            session.extra_mounts = (notes,)
        return session

    def _warm_pool(self, by_id: Mapping[str, Task], base_commit: str,
                   results: dict[str, SessionResult]) -> WarmPool | None:
        """The pool preparing waiting tasks ahead (runtime/run/warm_pool.py), if any;
        ``by_id``: the run's tasks, those added later included."""
        size = pool_size(self.config, len(by_id), on_swarm=self._swarm is not None)
        if size == 0:
            return None

        def make(task_id: str) -> IsolatedAgentSession | None:
            try:
                return self._new_session(by_id[task_id],
                                         self._task_base.get(task_id) or base_commit, results,
                                         store=None)
            except AgentRuntimeError:  # e.g. its dependencies conflict: found when it starts
                return None

        return WarmPool(size, make)
