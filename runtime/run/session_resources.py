"""Making and releasing a session's parts: its environment image, egress proxy, services,
volume and working tree (here or on the engine's host), container, database and, when it never
started, its branch.

:class:`SessionResources` is a mixin of :class:`~runtime.run.session.IsolatedAgentSession`; the
Swarm session overrides :meth:`~SessionResources._volumes_on_engine`,
:meth:`~SessionResources._make_tree` and :meth:`~SessionResources._create_container`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker

from runtime.config import ResourceLimits, RunConfig, Task
from runtime.databases.sqlite import SQLITE_NAME, SessionDatabase, SqliteDatabase, create_sqlite
from runtime.engine.container import DB_MOUNT, AgentContainer, AgentRunner, ContainerPlan
from runtime.engine.disk_sharing import engine_shares_disk, volume_on_engine
from runtime.engine.labels import LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_REPO, LABEL_RUN
from runtime.engine.volumes import DiskLimitMode, Volume, default_mode
from runtime.errors import AgentRuntimeError, SessionError
from runtime.git.object_store import ensure_store
from runtime.git.safe_git import MainRepo
from runtime.git.session_tree import EngineTree, HostTree, SessionTree
from runtime.models import Manifest, SessionResult, utcnow
from runtime.run.engine_watch import ENGINE_LOST
from runtime.run.resilience import engine_retry
from runtime.state.liveness import process_start_time
from runtime.state.session_facts import SessionMarker
from runtime.version import agentrt_version

if TYPE_CHECKING:
    from runtime.engine.egress import RunEgress
    from runtime.engine.services import SessionServices
    from runtime.run.continuation import Continuation
    from runtime.run.environments import EnvImage
    from runtime.state.store import Store

log = logging.getLogger(__name__)


class SessionResources:
    """A session's parts: made in ``prepare``, released in ``close``."""

    if TYPE_CHECKING:
        task: Task
        config: RunConfig
        repo: MainRepo
        run_id: str
        session_id: str
        branch: str
        base_commit: str
        continues: Continuation | None
        session_dir: Path
        limits: ResourceLimits
        result: SessionResult
        image: str
        environment: EnvImage | None
        services: SessionServices | None
        disk_mode: DiskLimitMode | None
        tree: SessionTree | None
        database: SessionDatabase | None
        container: AgentRunner | None
        _egress: RunEgress | None
        _own_egress: bool
        network: str
        _marker: SessionMarker | None
        _named: bool
        _workspace_lent: bool
        _engine_shares_disk: bool
        seeded: bool
        store: Store | None

        @property
        def client(self) -> docker.DockerClient: ...
        def _record(self, **resources: Any) -> None: ...
        def close(self, snapshot_work: bool = True) -> None: ...

    @property
    def volume(self) -> Volume | None:
        """The session's volume on this host (None until prepared, or when it lives on the
        engine's host)."""
        return self.tree.volume if isinstance(self.tree, HostTree) else None

    @property
    def workspace(self) -> Path:
        """The session's working tree on the host (mounted at /workspace in its container).

        What code on this host writes there comes home onto the session's branch when the
        session exits, as an agent's work does, whether or not :meth:`run` was called.
        Raises SessionError when the tree lives on the engine's host, saying why and what to
        use instead."""
        if self.tree is None:
            raise SessionError("session not prepared: use it as a context manager")
        if self.volume is None:
            why = ("the Docker engine does not share this machine's disk (a VM such as "
                   "Colima's, a remote DOCKER_HOST)" if not self._engine_shares_disk else
                   "only the engine's host gives it a hard disk limit (disk_mode=\"soft\" "
                   "keeps it here)")
            raise SessionError(
                f"session {self.session_id}: its working tree is on the engine's host, not "
                f"this one, because {why}: code here cannot work in it; run the work inside "
                "the session instead (session.run([\"sh\", \"-c\", \"...\"]), or a task "
                "with an agent preset)")
        if not self._workspace_lent:
            self._workspace_lent = True
            if self.result.started_at is None:
                self.result.started_at = utcnow()
        return self.volume.workspace

    @property
    def db_path(self) -> Path | None:
        """The session's SQLite file on the host (``AGENT_DB`` inside), or None with the
        shared (PostgreSQL) strategy, whose database is named by ``AGENT_DATABASE_URL``, or
        when the volume is on the engine's host."""
        if self.tree is None:
            raise SessionError("session not prepared: use it as a context manager")
        return self.database.host_path if isinstance(self.database, SqliteDatabase) else None

    def manifest(self) -> Manifest:
        """What a replay needs: image digest, base commit, task, limits, egress policy and CLI
        version (never secret values)."""
        allow, networks = (self.config.egress_for(self.task) if self.network == "allowlist"
                           else ([], []))
        return Manifest(
            image=self.image, image_digest=self.result.image_digest,
            base_commit=self.base_commit, task=self.task.model_dump(mode="json"),
            limits=self.limits, network=self.network, runtime=self.config.runtime,
            database_strategy=self.config.database_strategy,
            env_keys=sorted([*self.task.env, *self.task.secrets]),
            cli_version=self.result.cli_version, egress_allow=allow, egress_networks=networks,
            environment_key=self.environment.key if self.environment else None,
            services=[s.model_dump(mode="json") for s in self.config.services],
            agentrt_version=agentrt_version(),
            continues=self.continues.parent if self.continues is not None else None,
        )

    def disk_used(self) -> int:
        """Bytes used on the session's volume."""
        return self.tree.used_bytes() if self.tree else 0

    def _join_egress(self, env: dict[str, str], own_network: str | None) -> str:
        """Put the session behind its run's egress proxy; add the proxy variables to ``env``
        and return the network its container joins (runtime/engine/egress.py)."""
        from runtime.engine.egress import RunEgress

        if self._egress is None:
            self._egress = RunEgress(self.client, self.run_id, labels=self._owner_labels())
            self._own_egress = True
        allow, networks = self.config.egress_for(self.task)
        network, proxy = self._egress.open_session(self.session_id, allow, networks,
                                                   join=own_network)
        env.update(proxy)
        return network

    def _build_environment(self) -> None:
        """A session run without the coordinator builds its own environment here."""
        if self.environment is not None or self.config.environment_for(self.task) is None:
            return
        from runtime.run.environments import prepare_environments

        built = prepare_environments(self.client, self.repo, self.base_commit, self.config,
                                     [self.task])
        self.environment = built[self.task.id]
        self.image = self.result.image = self.environment.ref

    def _start_services(self) -> SessionServices | None:
        """Start ``[[run.services]]`` on the session's own internal network (healthy first)."""
        if not self.config.services:
            return None
        from runtime.engine.services import start_services

        self.services = start_services(
            self.client, self.config.services, self.session_id,
            {LABEL_RUN: self.run_id, **self._owner_labels()})
        return self.services

    def _stop_services(self) -> None:
        if self.services is not None:
            self.services.remove()
            self.services = None

    def _leave_egress(self) -> None:
        if self._egress is not None:
            self._egress.close_session(self.session_id)
            if self._own_egress:
                self._egress.close()

    def _volumes_on_engine(self) -> bool:
        """Whether this session's volume is made on the engine's host: always when the engine
        does not share this disk; also when this host can only give a soft limit (not root,
        macOS) but the engine can give a hard one (Colima's VM)."""
        from runtime.engine.engine_volumes import engine_volume_mode

        self._engine_shares_disk = engine_shares_disk(self.client,
                                                      self.repo.state_dir / "probe")
        return volume_on_engine(
            self._engine_shares_disk, self.disk_mode or default_mode(),
            lambda: engine_volume_mode(self.client),
            # An explicit disk_mode pins the volume to this host (tests, and users who ask),
            # as does the design's named session, whose workspace code on this host uses.
            engine_side_allowed=self.disk_mode is None and not self._named)

    def _make_tree(self, on_engine: bool, uid: int, gid: int) -> SessionTree:
        """The volume, on the engine's host or on this one (with the run's object store)."""
        if on_engine:
            tree: SessionTree = EngineTree.create(
                self.client, self.session_id, self.limits.disk_mb, uid, gid,
                labels={LABEL_REPO: str(self.repo.root), LABEL_RUN: self.run_id})
            if self._marker is not None:
                self._marker.engine_volume = tree.volume.name  # type: ignore[attr-defined]
                self._marker.write(self.session_dir)
            return tree
        store = ensure_store(self.repo, self.run_id, self.base_commit)
        return HostTree.create(self.session_dir, self.limits.disk_mb, uid, gid, store,
                               self.disk_mode, seed=self._seed(store, uid, gid))

    def _seed(self, store: Path, uid: int, gid: int) -> Path | None:
        """The run's seed checkout for this session's volume (runtime/git/seed_image.py), when
        the coordinator asked for seeds and the volume is a loop volume; None otherwise, or
        when the seed cannot be built (the session then checks out on its own)."""
        if not self.seeded or (self.disk_mode or default_mode()) != "loop":
            return None
        from runtime.git.seed_image import ensure_seed

        try:
            return ensure_seed(self.repo, self.run_id, self.base_commit, self.limits.disk_mb,
                               uid, gid, store)
        except AgentRuntimeError as exc:
            log.warning("session %s: no seed checkout (%s); checking out directly",
                        self.session_id, exc)
            return None

    def _create_container(self, plan: ContainerPlan) -> AgentRunner:
        """Create (not start) the agent's container for ``plan``."""
        return AgentContainer.create(self.client, plan)

    def _delete_unused_branch(self) -> None:
        # A session that never started leaves no half-made branch behind.
        if self.continues is not None:  # the branch is the continued session's: it stays
            return
        with contextlib.suppress(AgentRuntimeError):
            if self.repo.branch_head(self.branch) == self.base_commit:
                self.repo.git("update-ref", "-d", f"refs/heads/{self.branch}", self.base_commit)

    def _make_database(self, uid: int, gid: int) -> SessionDatabase:
        if self.config.database_strategy == "shared":
            from runtime.databases.postgres import create_shared_database

            return create_shared_database(self.config, self.session_id, self.run_id,
                                          client=self.client, labels=self._owner_labels())
        db_dir = self.tree.host_db_dir if self.tree is not None else None
        if db_dir is None:
            # On the engine's side: SQLite creates the file on the agent's first use.
            return SqliteDatabase(Path(DB_MOUNT) / SQLITE_NAME,
                                  {"AGENT_DB": f"{DB_MOUNT}/{SQLITE_NAME}"})
        return create_sqlite(db_dir, uid, gid)

    def attach_store(self, store: Store) -> None:
        """Record a session prepared ahead without a store (runtime/run/warm_pool.py) in
        ``store``, as ``prepare`` would have, now that it is about to run."""
        self.store = store
        pid = os.getpid()
        self._record(
            manifest_json=self.manifest().model_dump_json(), volume_path=str(self.session_dir),
            owner_pid=pid, owner_start_time=process_start_time(pid),
            **({"container_id": self.container.id} if self.container else {}),
            **({"mount_path": self.tree.location} if self.tree else {}))

    def discard(self) -> None:
        """Release a prepared session that will never run, and its untouched branch."""
        self.close(snapshot_work=False)
        self._delete_unused_branch()

    def _keep_volume(self) -> None:
        if isinstance(self.tree, HostTree):
            self.tree.volume.sync()
        if self._marker is not None:
            self._marker.work_kept = True
            self._marker.write(self.session_dir)

    def _remove_container(self) -> None:
        # An engine declared lost is not waited for: gc removes the container (by its labels).
        if self.container is not None and not ENGINE_LOST.is_set():
            engine_retry(self.container.remove)

    def _owner_labels(self) -> dict[str, str]:
        """The labels that tie what this session starts to its repository and its owner
        (``agentrt gc`` removes it once the owner is gone)."""
        return {LABEL_REPO: str(self.repo.root), LABEL_OWNER_PID: str(os.getpid()),
                LABEL_OWNER_START: str(process_start_time(os.getpid()) or "")}

    def _drop_database(self) -> None:
        if self.database is not None:
            self.database.drop()

    def _stop_database_server(self) -> None:
        """A session on its own (no coordinator) started the run's PostgreSQL server for
        itself: remove it, with its network, once the session's database is dropped."""
        if self.config.database_strategy == "shared" and not self.config.database_url:
            from runtime.databases.postgres import stop_shared_server

            stop_shared_server(self.run_id, self.client)

    def _remove_volume(self) -> None:
        if self.tree is not None:
            self.tree.remove()
            shutil.rmtree(self.session_dir, ignore_errors=True)
        elif self.session_dir.exists():
            from runtime.engine.volumes import found_volume

            found_volume(self.session_dir).remove()


