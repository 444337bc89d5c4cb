"""A session's parts beside its tree and its agent: its environment image, its place behind the
run's egress proxy, its per-session services and its database; made in ``prepare``, released in
``close``.

:class:`SessionParts` is owned by :class:`~runtime.run.session.IsolatedAgentSession` (one each);
everything it makes it holds itself, and it is told everything else at construction.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.config import RunConfig, Task
from runtime.databases.sqlite import SQLITE_NAME, SessionDatabase, SqliteDatabase, create_sqlite
from runtime.engine.container import DB_MOUNT
from runtime.engine.labels import LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_REPO, LABEL_RUN
from runtime.engine.types import EngineClient
from runtime.git.safe_git import MainRepo
from runtime.state.liveness import process_start_time

if TYPE_CHECKING:
    from runtime.engine.egress import RunEgress
    from runtime.engine.services import SessionServices
    from runtime.run.environments import EnvImage

log = logging.getLogger(__name__)


class SessionParts:
    """The environment, egress, services and database of one session."""

    def __init__(self, task: Task, config: RunConfig, repo: MainRepo, run_id: str,
                 session_id: str, client: Callable[[], EngineClient], *,
                 egress: RunEgress | None = None) -> None:
        self.task = task
        self.config = config
        self.repo = repo
        self.run_id = run_id
        self.session_id = session_id
        self._client = client
        # network = "allowlist": the run's egress proxies (the session makes its own if none).
        self.egress = egress
        self._own_egress = False
        self.services: SessionServices | None = None
        self.database: SessionDatabase | None = None

    def owner_labels(self) -> dict[str, str]:
        """The labels that tie what this session starts to its repository and its owner
        (``agentrt gc`` removes it once the owner is gone)."""
        return {LABEL_REPO: str(self.repo.root), LABEL_OWNER_PID: str(os.getpid()),
                LABEL_OWNER_START: str(process_start_time(os.getpid()) or "")}

    def build_environment(self, base_commit: str) -> EnvImage | None:
        """The task's environment image, built now (a session run without the coordinator,
        which builds them in preflight); None when the task has none."""
        if self.config.environment_for(self.task) is None:
            return None
        from runtime.run.environments import prepare_environments

        built = prepare_environments(self._client(), self.repo, base_commit, self.config,
                                     [self.task])
        return built[self.task.id]

    def join_egress(self, env: dict[str, str], own_network: str | None) -> str:
        """Put the session behind its run's egress proxy; add the proxy variables to ``env``
        and return the network its container joins (runtime/engine/egress.py)."""
        from runtime.engine.egress import RunEgress

        if self.egress is None:
            self.egress = RunEgress(self._client(), self.run_id, labels=self.owner_labels())
            self._own_egress = True
        allow, networks = self.config.egress_for(self.task)
        network, proxy = self.egress.open_session(self.session_id, allow, networks,
                                                  join=own_network)
        env.update(proxy)
        return network

    def start_services(self) -> SessionServices | None:
        """Start ``[[run.services]]`` on the session's own internal network (healthy first)."""
        if not self.config.services:
            return None
        from runtime.engine.services import start_services

        self.services = start_services(
            self._client(), self.config.services, self.session_id,
            {LABEL_RUN: self.run_id, **self.owner_labels()})
        return self.services

    def make_database(self, host_db_dir: Path | None, uid: int, gid: int) -> SessionDatabase:
        """The session's database: a role and database on the run's PostgreSQL server, or a
        SQLite file in the volume (made here when the volume is on this disk)."""
        if self.config.database_strategy == "shared":
            from runtime.databases.postgres import create_shared_database

            self.database = create_shared_database(
                self.config, self.session_id, self.run_id, client=self._client(),
                labels=self.owner_labels())
        elif host_db_dir is None:
            # On the engine's side: SQLite creates the file on the agent's first use.
            self.database = SqliteDatabase(Path(DB_MOUNT) / SQLITE_NAME,
                                           {"AGENT_DB": f"{DB_MOUNT}/{SQLITE_NAME}"})
        else:
            self.database = create_sqlite(host_db_dir, uid, gid)
        return self.database

    def stop_services(self) -> None:
        if self.services is not None:
            self.services.remove()
            self.services = None

    def drop_database(self) -> None:
        if self.database is not None:
            self.database.drop()

    def leave_egress(self) -> None:
        if self.egress is not None:
            self.egress.close_session(self.session_id)
            if self._own_egress:
                self.egress.close()

    def stop_database_server(self) -> None:
        """A session on its own (no coordinator) started the run's PostgreSQL server for
        itself: remove it, with its network, once the session's database is dropped."""
        if self.config.database_strategy == "shared" and not self.config.database_url:
            from runtime.databases.postgres import stop_shared_server

            stop_shared_server(self.run_id, self._client())
