"""IsolatedAgentSession: one agent's branch, volume, working tree, database and container.

Use it as a context manager::

    with IsolatedAgentSession(task, config, repo="~/src/app") as session:
        result = session.run()

``__enter__`` creates everything (undoing what was made if any step fails); ``run`` starts the
container, waits for it through the supervisor, classifies how it ended and brings the work
home onto the session's branch; ``__exit__`` always snapshots what is left and releases every
resource (container, database, volume, loop device) unless ``cleanup_on_complete`` is false.
The branch always stays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import docker
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from runtime import paths
from runtime.config import ResourceLimits, RunConfig, Task, secret_values
from runtime.databases.sqlite import SQLITE_NAME, SessionDatabase, SqliteDatabase, create_sqlite
from runtime.engine.container import (
    DB_MOUNT,
    AgentContainer,
    AgentRunner,
    ContainerPlan,
    OutputStream,
    ended_at_deadline,
)
from runtime.engine.disk_sharing import engine_shares_disk, volume_on_engine
from runtime.engine.labels import LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_REPO, LABEL_RUN
from runtime.engine.volumes import DiskLimitMode, Volume, default_mode, volumes_root
from runtime.errors import AgentRuntimeError, ConfigError, EngineError, SessionError
from runtime.git.directory_mode import open_repo
from runtime.git.harvest import HarvestPlan, bring_work_home
from runtime.git.object_store import ensure_store, remove_run_stores
from runtime.git.safe_git import MainRepo
from runtime.git.session_tree import EngineTree, HostTree, SessionTree
from runtime.git.workspace import create_branch, new_session_id
from runtime.models import LiveStat, Manifest, SessionResult, SessionStatus, WorkState, utcnow
from runtime.presets import resolve_command, resolve_env, resolve_image, resolve_secrets
from runtime.run.api_args import as_command, as_limits, as_repo, as_run_config, session_task
from runtime.run.classify import EndFacts, classify
from runtime.run.supervisor import Supervisor, Watch
from runtime.run.usage import usage_from_log
from runtime.state.liveness import process_start_time
from runtime.state.log_keeper import LogKeeper
from runtime.state.recovery import SessionMarker, engine_times, import_policy

if TYPE_CHECKING:
    from runtime.engine.egress import RunEgress
    from runtime.engine.services import SessionServices
    from runtime.run.environments import EnvImage
    from runtime.state.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")

AGENT_UID = 1000
STOP_REQUESTED = "stop_requested"
DISK_FULL_MARGIN = 1024 * 1024


ENGINE_WAIT_SECONDS = 60
# How long the end of a session waits for its output to be read to the end.
LOG_DRAIN_SECONDS = 120


CRASH_POINT_ENV = "AGENTRT_CRASH_AT"


def crash_point(name: str) -> None:
    """Die here (SIGKILL, like a power cut) when ``AGENTRT_CRASH_AT`` names this step.

    Only the crash-recovery tests set it; every step of a session's set-up and end has one.
    """
    if os.environ.get(CRASH_POINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _engine_retry(action: Callable[[], T]) -> T:
    """Run ``action``, retrying while the engine is unreachable (a dockerd restart)."""
    retrying = Retrying(retry=retry_if_exception_type(EngineError), reraise=True,
                        stop=stop_after_delay(ENGINE_WAIT_SECONDS), wait=wait_fixed(1))
    return retrying(action)


def secret_env(task: Task) -> dict[str, str]:
    """The values of ``task``'s secrets from agentrt's environment; ConfigError if one is unset."""
    missing = [name for name in task.secrets if name not in os.environ]
    if missing:
        raise ConfigError(f"task {task.id!r}: field secrets: {missing[0]} is not set in the "
                          "environment; export it or remove it from the task")
    return {name: os.environ[name] for name in task.secrets}


# Environment entries that are credentials even though the task did not name them.
HIDDEN_DATABASE_ENV = ("AGENT_DATABASE_URL",)


def agent_ids() -> tuple[int, int]:
    """The uid:gid agents run as: the host user's own (so files stay usable), or 1000 for root."""
    uid = os.getuid()
    return (uid, os.getgid()) if uid != 0 else (AGENT_UID, AGENT_UID)


def new_run_id() -> str:
    """A fresh run id, sortable by time."""
    return time.strftime("r%Y%m%d-%H%M%S-") + os.urandom(2).hex()


class IsolatedAgentSession:
    """One agent session; a context manager that always gives its resources back."""

    def __init__(
        self,
        task: Task | str | Mapping[str, Any],
        config: RunConfig | Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        repo: str | os.PathLike[str] | MainRepo | None = None,
        base_workspace: str | os.PathLike[str] | None = None,
        limits: ResourceLimits | Mapping[str, Any] | None = None,
        run_id: str | None = None,
        base_commit: str | None = None,
        client: docker.DockerClient | None = None,
        supervisor: Supervisor | None = None,
        store: Store | None = None,
        disk_mode: DiskLimitMode | None = None,
        stop_grace_seconds: int = 10,
        egress: RunEgress | None = None,
        environment: EnvImage | None = None,
    ) -> None:
        # The design's form: IsolatedAgentSession("fix-parser", Path("~/src/app"), limits=...)
        # or base_workspace=...; the typed form: IsolatedAgentSession(task, config, repo=...).
        if isinstance(config, str | os.PathLike):
            if base_workspace is not None:
                raise ConfigError("give the repository once: as the second argument or as "
                                  "base_workspace=")
            config, base_workspace = None, config
        if repo is not None and base_workspace is not None:
            raise ConfigError("give the repository once: repo= or base_workspace=")
        where = as_repo(repo if repo is not None else base_workspace or ".",
                        "repo" if base_workspace is None else "base_workspace")
        self.task, self._needs_command = session_task(task)
        task = self.task
        self.config = as_run_config(config)
        if limits is not None:
            self.config = self.config.model_copy(update={"resource_limits": as_limits(limits)})
        self.repo = where if isinstance(where, MainRepo) else open_repo(
            where, self.config.isolation_strategy)
        self._own_run = run_id is None
        self.run_id = run_id or new_run_id()
        self._plan: ContainerPlan | None = None
        self.limits: ResourceLimits = self.config.limits_for(task)
        # An environment (docs/environments.md) gives the image; the coordinator builds it in
        # preflight, a session on its own builds it in prepare().
        self.environment = environment
        self.image = environment.ref if environment else resolve_image(task, self.config.image)
        self.services: SessionServices | None = None
        self.network = self.config.network_for(task)
        self.base_commit = base_commit or self.repo.rev_parse(self.config.base)
        self.session_id, self.branch = new_session_id(task.id)
        self.session_dir = (volumes_root(self.repo.state_dir, self.config.volumes_dir)
                            / "sessions" / self.session_id)
        self.stop_grace_seconds = stop_grace_seconds
        self.disk_mode = disk_mode
        self.store = store
        self._client = client
        self._own_supervisor = supervisor is None
        self._supervisor = supervisor
        # network = "allowlist": the run's egress proxies (the session makes its own if none).
        self._egress = egress
        self._own_egress = False
        # The volume and working tree: on this host, or where the engine is when it does not
        # share agentrt's disk (a VM, a remote host, dind; every file operation by the API).
        self.tree: SessionTree | None = None
        self.database: SessionDatabase | None = None
        self.container: AgentRunner | None = None
        self.watch: Watch | None = None
        self._marker: SessionMarker | None = None
        self._checked_out = False
        self._started = False
        self._harvested = False
        self._cancel = threading.Event()
        self._log_keeper: LogKeeper | None = None
        self._log_stream: OutputStream | None = None
        self._log_thread: threading.Thread | None = None
        self.result = SessionResult(
            id=self.session_id, task_id=task.id, branch=self.branch, image=self.image,
            base_commit=self.base_commit,
        )

    # -- context manager --------------------------------------------------------------------

    def __enter__(self) -> IsolatedAgentSession:
        self.prepare()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> docker.DockerClient:
        """The Docker client (the shared one unless given)."""
        if self._client is None:
            from runtime.engine.discovery import get_client

            self._client = get_client()
        return self._client

    @property
    def volume(self) -> Volume | None:
        """The session's volume on this host (None until prepared, or when it lives on the
        engine's host)."""
        return self.tree.volume if isinstance(self.tree, HostTree) else None

    @property
    def workspace(self) -> Path:
        """The session's working tree on the host (mounted at /workspace in its container)."""
        if self.tree is None:
            raise SessionError("session not prepared: use it as a context manager")
        if self.volume is None:
            raise SessionError(f"session {self.session_id}: the working tree is on the "
                               "engine's host, not this one")
        return self.volume.workspace

    @property
    def db_path(self) -> Path | None:
        """The session's SQLite file on the host (``AGENT_DB`` inside), or None with the
        shared (PostgreSQL) strategy, whose database is named by ``AGENT_DATABASE_URL``, or
        when the volume is on the engine's host."""
        if self.tree is None:
            raise SessionError("session not prepared: use it as a context manager")
        return self.database.host_path if isinstance(self.database, SqliteDatabase) else None

    def _record(self, **resources: Any) -> None:
        if self.store is not None:
            try:
                self.store.upsert_session(self.result, self.run_id, **resources)
            except AgentRuntimeError as exc:  # the run goes on; the record is best effort
                log.warning("state store: %s", exc)

    def _event(self, kind: str, message: str) -> None:
        if self.store is not None:
            with contextlib.suppress(AgentRuntimeError):
                self.store.add_event(self.run_id, kind, message, session_id=self.session_id)

    # -- lifecycle --------------------------------------------------------------------------

    def prepare(self) -> None:
        """Create branch, volume, working tree, database and container; undo on failure."""
        from runtime.engine.images import cli_version, image_digest

        uid, gid = agent_ids()
        try:
            self._build_environment()
            self.result.image_digest = image_digest(self.client, self.image)
            self.result.cli_version = cli_version(self.client, self.image)
            manifest = self.manifest()
            owner_start = process_start_time(os.getpid())
            self._record(
                manifest_json=manifest.model_dump_json(), volume_path=str(self.session_dir),
                owner_pid=os.getpid(), owner_start_time=owner_start,
            )
            create_branch(self.repo, self.branch, self.base_commit)
            crash_point("branch")
            on_engine = self._volumes_on_engine()
            # The marker comes first: from here on gc judges the session by its owner's pid
            # and start time, and it harvests only once the checkout is complete.
            self.session_dir.mkdir(parents=True, mode=0o711)
            self._marker = SessionMarker(
                self.session_id, self.run_id, self.branch, os.getpid(), owner_start,
                keep=not self.config.cleanup_on_complete, base_commit=self.base_commit,
                uid=uid, gid=gid)
            self._marker.write(self.session_dir)
            crash_point("marker")
            tree = self.tree = self._make_tree(on_engine, uid, gid)
            self.result.disk_limit_mode = tree.mode
            crash_point("volume")
            tree.checkout(self.repo, self.branch, self.base_commit, self.session_dir)
            crash_point("checkout")
            self._marker.checked_out = self._checked_out = True
            self._marker.write(self.session_dir)
            self.database = self._make_database(uid, gid)
            env = {
                **resolve_env(self.task),
                **self.task.env,
                "AGENT_TASK": self.task.prompt,
                "AGENT_TASK_ID": self.task.id,
                "AGENT_SESSION_ID": self.session_id,
                "AGENT_BRANCH": self.branch,
                "AGENT_RUN_ID": self.run_id,
                **self.database.env,
            }
            # Credentials reach the agent through a file its entry point reads and deletes,
            # never through the container's configuration (visible to `docker inspect`).
            hidden = {**resolve_secrets(self.task, secret_env(self.task)),
                      **{k: env.pop(k) for k in HIDDEN_DATABASE_ENV if k in env}}
            network = getattr(self.database, "network", None) or self.network
            if self.network == "allowlist":
                network = self._join_egress(env, getattr(self.database, "network", None))
            services = self._start_services()
            if services is not None and network == "none":
                network = services.network  # the session's only network: its services'
            plan = ContainerPlan(
                session_id=self.session_id, run_id=self.run_id, image=self.image,
                command=resolve_command(self.task), limits=self.limits,
                mounts=tuple(tree.agent_mounts()), uid=uid, gid=gid, network=network,
                runtime=self.config.runtime, env=env,
                secrets_mount=tree.secrets_mount(hidden) if hidden else None,
                grace_seconds=self.stop_grace_seconds,
                labels={LABEL_OWNER_PID: str(os.getpid()),
                        LABEL_OWNER_START: str(owner_start or ""),
                        LABEL_REPO: str(self.repo.root)},
            )
            self._plan = plan
            self.container = self._create_container(plan)
            if services is not None and network != services.network:
                services.connect(self.container.id)
            tree.deliver_secrets(self.client, self.container.id)
            crash_point("container")
            self._record(container_id=self.container.id, mount_path=tree.location)
        except BaseException:
            self.close(snapshot_work=False)
            self._delete_unused_branch()
            raise

    def _join_egress(self, env: dict[str, str], own_network: str | None) -> str:
        """Put the session behind its run's egress proxy; add the proxy variables to ``env``
        and return the network its container joins (runtime/engine/egress.py)."""
        from runtime.engine.egress import RunEgress

        if self._egress is None:
            self._egress = RunEgress(self.client, self.run_id,
                                     labels={LABEL_REPO: str(self.repo.root)})
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
            {LABEL_RUN: self.run_id, LABEL_REPO: str(self.repo.root),
             LABEL_OWNER_PID: str(os.getpid()),
             LABEL_OWNER_START: str(process_start_time(os.getpid()) or "")})
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

        return volume_on_engine(
            engine_shares_disk(self.client, self.repo.state_dir / "probe"),
            self.disk_mode or default_mode(), lambda: engine_volume_mode(self.client),
            # An explicit disk_mode pins the volume to this host (tests, and users who ask).
            engine_side_allowed=self.disk_mode is None)

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
                               self.disk_mode)

    def _create_container(self, plan: ContainerPlan) -> AgentRunner:
        """Create (not start) the agent's container for ``plan``."""
        return AgentContainer.create(self.client, plan)

    def _delete_unused_branch(self) -> None:
        # A session that never started leaves no half-made branch behind.
        with contextlib.suppress(AgentRuntimeError):
            if self.repo.branch_head(self.branch) == self.base_commit:
                self.repo.git("update-ref", "-d", f"refs/heads/{self.branch}", self.base_commit)

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
        )

    def _make_database(self, uid: int, gid: int) -> SessionDatabase:
        if self.config.database_strategy == "shared":
            from runtime.databases.postgres import create_shared_database

            return create_shared_database(self.config, self.session_id, self.run_id,
                                          client=self.client)
        db_dir = self.tree.host_db_dir if self.tree is not None else None
        if db_dir is None:
            # On the engine's side: SQLite creates the file on the agent's first use.
            return SqliteDatabase(Path(DB_MOUNT) / SQLITE_NAME,
                                  {"AGENT_DB": f"{DB_MOUNT}/{SQLITE_NAME}"})
        return create_sqlite(db_dir, uid, gid)

    def cancel(self) -> None:
        """Stop the container (SIGTERM, grace, SIGKILL); the session ends as ``cancelled``."""
        self._cancel.set()
        if self.watch is not None and self._supervisor is not None:
            self._supervisor.stop(self.watch, reason="cancel",
                                  grace_seconds=self.stop_grace_seconds)

    def run(self, command: Sequence[str] | None = None) -> SessionResult:
        """Start the container, wait for it to end, classify, and bring the work home.

        ``command`` (an argv) replaces the task's command for this run; a session made from
        an id string has none until it is given here."""
        if self.container is None or self.tree is None:
            raise SessionError("session not prepared: use it as a context manager")
        if command is not None:
            self._use_command(as_command(command))
        elif self._needs_command:
            raise ConfigError(f"session {self.session_id}: no command to run: give one, "
                              "session.run([\"sh\", \"-c\", \"...\"])")
        if self._cancel.is_set():
            self.result.status = SessionStatus.CANCELLED
            self._finish()
            return self.result
        if not isinstance(self.container, AgentContainer):
            raise SessionError(f"session {self.session_id}: not a container of this engine")
        supervisor = self._supervisor
        if supervisor is None:
            supervisor = self._supervisor = Supervisor(self.client, self.run_id).__enter__()
        tree = self.tree
        deadline = time.time() + self.limits.time_seconds
        self.watch = supervisor.watch(Watch(
            session_id=self.session_id, container=self.container, deadline=deadline,
            grace_seconds=self.stop_grace_seconds, disk_limit_bytes=tree.limit_bytes,
            disk_usage=None if tree.on_engine else tree.used_bytes,
            soft_disk=tree.usage_walker is not None,
            disk_free=tree.free_bytes if tree.mode == "loop" and not tree.on_engine else None,
            engine_stats=tree.on_engine, on_sample=self._on_sample,
        ))
        self.result.started_at = utcnow()
        self.result.status = SessionStatus.RUNNING
        self._record(deadline=deadline)
        self._event("started", f"container {self.container.id[:12]} started")
        self._start_log_keeper()
        try:
            self._started = True
            self.container.start()
        except AgentRuntimeError as exc:
            if self._log_stream is not None:
                self._log_stream.close()
            self.result.status = SessionStatus.CRASHED
            self.result.reason = str(exc)
            self._finish()
            return self.result
        supervisor.started(self.watch)
        crash_point("started")
        if self._cancel.is_set():
            supervisor.stop(self.watch, reason="cancel")
        # Generous backstop only: the deadline thread stops the container at the deadline.
        limit = self.limits.time_seconds + self.stop_grace_seconds + 120
        if not self.watch.exited.wait(timeout=limit):
            supervisor.reconcile(self.watch)
            if not self.watch.exited.is_set():
                self.watch.record(timed_out=True)
                self.container.kill()
                self.watch.exited.wait(timeout=30)
        self._classify(self.watch)
        self._finish()
        return self.result

    def _use_command(self, argv: list[str]) -> None:
        """Re-create the (not yet started) container to run ``argv`` instead."""
        if self._started or self._plan is None or self.container is None:
            raise SessionError(f"session {self.session_id} has already run")
        self.task = self.task.model_copy(update={"command": argv})
        self._needs_command = False
        plan = dataclasses.replace(self._plan, command=argv)
        _engine_retry(self.container.remove)
        self.container = None
        self.container = self._create_container(plan)
        self._plan = plan
        self._record(container_id=self.container.id,
                     manifest_json=self.manifest().model_dump_json())

    def _stop_requested(self) -> bool:
        """True if `agentrt stop` asked for this session from another process."""
        if self.store is None:
            return False
        try:
            return any(e.kind == STOP_REQUESTED for e in self.store.events(
                session_id=self.session_id))
        except AgentRuntimeError:
            return False

    def _on_sample(self, watch: Watch, tick: int) -> None:
        # Every other sample (about once a second) is plenty for the report's curves.
        if self.store is not None and tick % 2 == 0:
            self.store.add_sample(self.session_id, watch.memory_bytes, watch.cpu_seconds,
                                  watch.disk_used_bytes)

    def _inspect_when_reachable(self) -> dict[str, Any] | None:
        """The container's state (None: gone), waiting a while for a restarting engine."""
        return _engine_retry(self.container.inspect) if self.container else None

    def _classify(self, watch: Watch) -> None:
        try:
            state = self._inspect_when_reachable() or {}
        except EngineError:
            # The engine went away while (or right after) the container ended.
            watch.record(engine_interrupted=True)
            state = {}
        st = state.get("State", {})
        code = watch.exit_code if watch.exit_code is not None else st.get("ExitCode")
        self.result.exit_code = int(code) if code is not None else None
        oom = watch.oom_seen or bool(st.get("OOMKilled"))
        volume = self.tree
        low_disk = volume is not None and volume.mode == "loop" and \
            self.result.exit_code not in (0, None) and volume.free_bytes() < DISK_FULL_MARGIN
        started, finished = engine_times(st)
        # The container's own deadline (its entry point's timeout) ended it: agentrt was
        # paused or late, the engine's record still says so.
        own_deadline = not watch.timed_out and ended_at_deadline(
            self.result.exit_code, started, finished, self.limits.time_seconds)
        facts = EndFacts(
            cancelled=watch.cancelled or self._cancel.is_set() or self._stop_requested(),
            timed_out=watch.timed_out or own_deadline, disk_exceeded=watch.disk_exceeded,
            engine_lost=watch.engine_interrupted, vanished=watch.vanished or not state,
            oom=oom, exit_code=self.result.exit_code, volume_full=low_disk,
            external_kill=watch.external_kill, stopping=watch.stopping,
            engine_error=str(st["Error"]) if st.get("Error") else None)
        status, reason = classify(facts, self.limits)
        self.result.status = status
        self.result.reason = reason
        if status is SessionStatus.TIMED_OUT and own_deadline:
            self.result.warnings.append(
                "stopped by the container's own deadline (agentrt did not stop it in time)")
        if started is not None and finished is not None:
            # The engine's own clock: a paused supervisor does not stretch a session.
            self.result.started_at, self.result.finished_at = started, finished
        self.result.peak_memory_bytes = watch.peak_memory_bytes
        if oom:
            # The kernel OOM-kills only once the cgroup's usage reached its limit, however
            # fast the climb was for the samples: the peak is at least the limit.
            self.result.peak_memory_bytes = max(watch.peak_memory_bytes,
                                                self.limits.memory_mb * 1024 * 1024)
        if status is SessionStatus.SUCCEEDED and (low_disk or watch.disk_filled):
            self.result.warnings.append(
                f"the volume filled up to disk_mb={self.limits.disk_mb} during the session "
                "(writes failed with ENOSPC), although the agent exited 0")
        self.result.cpu_seconds = round(watch.cpu_seconds, 3)
        with contextlib.suppress(OSError):
            self.result.disk_used_bytes = (
                volume.used_bytes() if volume else watch.disk_used_bytes
            )
        self.result.warnings.extend(watch.errors)

    def _discard_secrets(self) -> None:
        # The entry point deletes the file as soon as it has read it; this covers a container
        # that never got that far.
        if self.tree is not None:
            self.tree.discard_secrets()

    def _finish(self) -> None:
        self._discard_secrets()
        if self.result.finished_at is None:
            self.result.finished_at = utcnow()
        if self.result.started_at:
            self.result.duration_s = round(
                (self.result.finished_at - self.result.started_at).total_seconds(), 3)
        self._save_logs()
        if self.task.command is None:  # a preset's CLI: what it reported it used
            self.result.usage = usage_from_log(self.task.agent, self.log_path)
        crash_point("harvest")
        self._bring_home()
        crash_point("home")
        self._record()
        self._event("finished", f"{self.result.status.value}: {self.result.reason or ''}")

    @property
    def log_path(self) -> Path:
        """Where the agent's output is kept after its container is gone."""
        return paths.log_path(self.repo.state_dir, self.session_id)

    def _open_log_keeper(self) -> LogKeeper | None:
        """The saved log: redacted with this process's secrets; first and last megabytes."""
        try:
            self._log_keeper = LogKeeper(self.log_path, self._secret_values())
        except OSError as exc:
            self.result.warnings.append(f"the output could not be saved: {exc}")
        return self._log_keeper

    def _start_log_keeper(self) -> None:
        """Attach to the container (before it starts) and write its output to the saved log."""
        if not isinstance(self.container, AgentContainer):
            return
        keeper = self._open_log_keeper()
        if keeper is None:
            return
        try:
            stream = self._log_stream = self.container.attach_output()
        except AgentRuntimeError as exc:
            keeper.note(f"could not attach to the output: {exc}")
            return

        def pump() -> None:
            try:
                for chunk in stream:
                    keeper.write(chunk)
            except Exception as exc:  # noqa: BLE001 - the engine went away: say so in the log
                keeper.note(f"the output stream broke: {exc}")
            finally:
                stream.close()

        self._log_thread = threading.Thread(target=pump, name=f"agentrt-log-{self.session_id}",
                                            daemon=True)
        self._log_thread.start()

    def _save_logs(self) -> None:
        """Finish the saved log (the stream ends with the container), or save it in one go."""
        if self._log_thread is not None:
            self._log_thread.join(timeout=LOG_DRAIN_SECONDS)
            if self._log_thread.is_alive() and self._log_keeper is not None:
                self._log_keeper.note("the rest of the output was not read in time")
        keeper = self._log_keeper
        if keeper is not None:
            keeper.close()
            if keeper.error:
                self.result.warnings.append(f"the output was not saved in full: {keeper.error}")

    def _secret_values(self) -> list[str]:
        return list(secret_values(self.task.secrets).values())

    def _bring_home(self) -> None:
        """Harvest the stopped session's tree in a container; import the verified bundle."""
        if self._harvested or self.tree is None or not self._checked_out:
            return
        self._harvested = True
        if not self._started:
            # The agent never ran: its tree is the checkout agentrt made.
            self.result.work = WorkState.HOME
            self.result.head_commit = self.repo.branch_head(self.branch)
            return
        uid, gid = agent_ids()
        plan = HarvestPlan(
            session_id=self.session_id, base_commit=self.base_commit,
            mounts=tuple(self.tree.harvest_mounts()), store=self.tree.store, uid=uid, gid=gid,
            memory_mb=self.limits.memory_mb, runtime=self.config.runtime,
            labels={LABEL_OWNER_PID: str(os.getpid()),
                    LABEL_OWNER_START: str(process_start_time(os.getpid()) or ""),
                    LABEL_REPO: str(self.repo.root)})
        tree = self.tree
        outcome = bring_work_home(
            self.client, self.repo, plan, branch=self.branch,
            policy=import_policy(self.config, self.task.secrets),
            harvester=lambda plan, dest, limit: tree.harvest(self.client, plan, dest, limit))
        self.result.work = outcome.state
        self.result.head_commit = outcome.head
        self.result.warnings.extend(outcome.warnings)
        if outcome.state is not WorkState.HOME:
            log.error("session %s: %s", self.session_id, "; ".join(outcome.warnings))

    def logs(self) -> bytes:
        """The saved output so far (secret values redacted; a flood's middle dropped)."""
        try:
            return self.log_path.read_bytes()
        except OSError:
            return b""

    def last_line(self, width: int = 60) -> str:
        """The agent's latest output line: secrets redacted, control characters dropped."""
        keeper = self._log_keeper
        if keeper is None:
            return ""
        data = keeper.recent(1024)
        lines = [ln for ln in data.decode(errors="replace").splitlines() if ln.strip()]
        text = "".join(ch for ch in (lines[-1] if lines else "") if ch.isprintable())
        return text if len(text) <= width else text[: width - 1] + "…"

    def stats(self, last_line: str = "") -> LiveStat | None:
        """What this session uses now against its limits, while it runs (else None)."""
        watch = self.watch
        if watch is None or self.result.status is not SessionStatus.RUNNING:
            return None
        return LiveStat(memory_bytes=watch.memory_bytes, cpu_seconds=watch.cpu_seconds,
                        disk_bytes=watch.disk_used_bytes, limits=self.limits,
                        last_line=last_line)

    def disk_used(self) -> int:
        """Bytes used on the session's volume."""
        return self.tree.used_bytes() if self.tree else 0

    def close(self, snapshot_work: bool = True) -> None:
        """Stop the container, save the work, release resources; safe to call twice."""
        self._discard_secrets()
        if self.container is not None:
            with contextlib.suppress(EngineError):
                info = self._inspect_when_reachable() or {}
                if info.get("State", {}).get("Running"):
                    self.container.stop(self.stop_grace_seconds)
        if snapshot_work:
            self._bring_home()
            if not self.result.status.is_final:
                self.result.status = SessionStatus.CRASHED
                self.result.reason = self.result.reason or "session ended before its container"
                self._record()
        if self.watch is not None and self._supervisor is not None:
            self._supervisor.unwatch(self.watch)
        if self._own_supervisor and self._supervisor is not None:
            self._supervisor.close()
        if not self.config.cleanup_on_complete and snapshot_work:
            return
        errors: list[str] = []
        # Nothing is deleted until it is safely home: a failed harvest keeps the volume.
        keep_volume = snapshot_work and self.result.work is WorkState.KEPT
        steps = [self._remove_container, self._stop_services, self._drop_database,
                 self._leave_egress]
        steps.append(self._keep_volume if keep_volume else self._remove_volume)
        for step in steps:
            try:
                step()
            except (AgentRuntimeError, OSError) as exc:
                errors.append(str(exc))
        if errors:
            self.result.warnings.extend(f"cleanup: {e}" for e in errors)
        if self._own_run and not keep_volume:
            remove_run_stores(self.repo, self.run_id)
        self._record()

    def _keep_volume(self) -> None:
        if self._marker is not None:
            self._marker.work_kept = True
            self._marker.write(self.session_dir)

    def _remove_container(self) -> None:
        if self.container is not None:
            _engine_retry(self.container.remove)

    def _drop_database(self) -> None:
        if self.database is not None:
            self.database.drop()

    def _remove_volume(self) -> None:
        if self.tree is not None:
            self.tree.remove()
            shutil.rmtree(self.session_dir, ignore_errors=True)
        elif self.session_dir.exists():
            from runtime.engine.volumes import open_volume

            open_volume(self.session_dir).remove()


