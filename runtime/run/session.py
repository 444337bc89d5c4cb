"""IsolatedAgentSession: one agent's branch, volume, working tree, database and container.

Use it as a context manager::

    with IsolatedAgentSession(task, config, repo="~/src/app") as session:
        result = session.run()

``__enter__`` creates everything (undoing what was made if any step fails); ``run`` starts the
container, waits for it through the supervisor, classifies how it ended and brings the work
home onto the session's branch; ``__exit__`` always snapshots what is left and releases every
resource (container, database, volume, loop device) unless ``cleanup_on_complete`` is false.
The branch always stays.

Its parts are made and released by :class:`~runtime.run.session_resources.SessionResources`, its
end is classified and finished by :class:`~runtime.run.session_end.SessionEnd`, and its output
is saved by :class:`~runtime.run.session_logs.SessionLogs`: mixins of this one class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import docker
from docker.types import Mount

from runtime.config import ResourceLimits, RunConfig, Task
from runtime.databases.sqlite import SessionDatabase
from runtime.engine.container import AgentContainer, AgentRunner, ContainerPlan, OutputStream
from runtime.engine.labels import LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_REPO
from runtime.engine.volumes import DiskLimitMode, volumes_root
from runtime.errors import AgentRuntimeError, ConfigError, EngineError, SessionError
from runtime.git.directory_mode import open_repo
from runtime.git.object_store import remove_run_stores
from runtime.git.safe_git import MainRepo
from runtime.git.session_tree import SessionTree
from runtime.git.workspace import create_branch, new_session_id
from runtime.models import LiveStat, SessionResult, SessionStatus, WorkState, utcnow
from runtime.presets import resolve_command, resolve_env, resolve_image, resolve_secrets
from runtime.run.api_args import as_command, as_limits, as_repo, as_run_config, session_task
from runtime.run.identity import HIDDEN_DATABASE_ENV, agent_ids, new_run_id, secret_env
from runtime.run.resilience import crash_point, engine_retry
from runtime.run.session_end import SessionEnd
from runtime.run.session_logs import SessionLogs
from runtime.run.session_resources import SessionResources
from runtime.run.supervisor import Supervisor, Watch
from runtime.state.liveness import process_start_time
from runtime.state.log_keeper import LogKeeper
from runtime.state.session_facts import SessionMarker

if TYPE_CHECKING:
    from runtime.engine.egress import RunEgress
    from runtime.engine.services import SessionServices
    from runtime.run.continuation import Continuation
    from runtime.run.environments import EnvImage
    from runtime.state.store import Store

log = logging.getLogger(__name__)


class IsolatedAgentSession(SessionResources, SessionEnd, SessionLogs):
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
        seeded: bool = False,
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
        # The design's form names the session: IsolatedAgentSession("fix-parser", ...) is
        # session "fix-parser" (its branch still gets a suffix), used by code on this host.
        self._named = isinstance(task, str)
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
        if self._named:
            self.session_id = task.id
        self.session_dir = (volumes_root(self.repo.state_dir, self.config.volumes_dir)
                            / "sessions" / self.session_id)
        self.stop_grace_seconds = stop_grace_seconds
        # `agentrt continue`: the session it continues, on that one's branch (set by
        # runtime.run.continuation.adopt before prepare).
        self.continues: Continuation | None = None
        self.disk_mode = disk_mode
        # Start from the run's seed checkout (the coordinator's choice for runs of several
        # sessions; runtime/git/seed_image.py).
        self.seeded = seeded
        # Read-only extras on this engine's host: its dependencies' notes (run/dep_notes.py).
        self.extra_mounts: tuple[Mount, ...] = ()
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
        # Host code was handed the working tree (``workspace``): what it wrote comes home
        # at the end even if no container ran; ``_host_error`` is what the with block raised.
        self._workspace_lent = False
        self._host_error: BaseException | None = None
        self._engine_shares_disk = True
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
        if self.container is None:  # not prepared ahead (runtime/run/warm_pool.py)
            self.prepare()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: object) -> None:
        self._host_error = exc
        self.close()

    @property
    def client(self) -> docker.DockerClient:
        """The Docker client (the shared one unless given)."""
        if self._client is None:
            from runtime.engine.discovery import get_client

            self._client = get_client()
        return self._client

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
        from runtime.engine.images import image_facts

        uid, gid = agent_ids()
        if self._named and self.session_dir.exists():
            # Before anything is made: undoing a failed start would remove the other's volume.
            raise ConfigError(
                f"session id {self.session_id!r} is in use in {self.repo.root} (a live "
                "session, or one whose volume was kept: see `agentrt gc`); give another id")
        try:
            self._build_environment()
            self.result.image_digest, self.result.cli_version = image_facts(self.client,
                                                                            self.image)
            manifest = self.manifest()
            owner_start = process_start_time(os.getpid())
            self._record(
                manifest_json=manifest.model_dump_json(), volume_path=str(self.session_dir),
                owner_pid=os.getpid(), owner_start_time=owner_start,
            )
            if self.continues is None:
                create_branch(self.repo, self.branch, self.base_commit)
            else:
                self.continues.check_branch(self.repo)
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
            if self.continues is not None:
                from runtime.run.continuation import restore_state

                restore_state(self)
            elif self.task.interactive:
                from runtime.run.agent_state import seed_tui_state

                seed_tui_state(self.task, tree.host_db_dir, uid, gid)
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
                command=resolve_command(self.task, resume=self.continues is not None),
                limits=self.limits,
                mounts=(*tree.agent_mounts(), *(() if on_engine else self.extra_mounts)),
                uid=uid, gid=gid, network=network,
                runtime=self.config.runtime, env=env,
                secrets_mount=tree.secrets_mount(hidden) if hidden else None,
                grace_seconds=self.stop_grace_seconds, tty=self.task.interactive,
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
        self._start_log_keeper()  # already attached when prepared ahead
        try:
            self._started = True
            self.container.start()
            # Recorded once it runs: nothing stands between a free slot and the agent.
            self._record(deadline=deadline)
            self._event("started", f"container {self.container.id[:12]} started")
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

    def _keep_state(self) -> None:
        from runtime.run.continuation import keep_state

        keep_state(self)

    def _end_without_container(self) -> None:
        """The status of a session closed before its container ran: the outcome of the host
        code that worked in its ``workspace`` (succeeded unless it raised), else crashed."""
        if self._workspace_lent and not self._started:
            error = self._host_error
            self.result.status = SessionStatus.SUCCEEDED if error is None else \
                SessionStatus.FAILED
            if error is not None:
                self.result.reason = (f"the code working in the session's workspace raised "
                                      f"{type(error).__name__}: {error}")
            self.result.finished_at = utcnow()
            if self.result.started_at is not None:
                self.result.duration_s = round(
                    (self.result.finished_at - self.result.started_at).total_seconds(), 3)
            return
        self.result.status = SessionStatus.CRASHED
        self.result.reason = self.result.reason or "session ended before its container"

    def _use_command(self, argv: list[str]) -> None:
        """Re-create the (not yet started) container to run ``argv`` instead."""
        if self._started or self._plan is None or self.container is None:
            raise SessionError(f"session {self.session_id} has already run")
        self.task = self.task.model_copy(update={"command": argv})
        self._needs_command = False
        plan = dataclasses.replace(self._plan, command=argv)
        engine_retry(self.container.remove)
        self.container = None
        self.container = self._create_container(plan)
        self._plan = plan
        self._record(container_id=self.container.id,
                     manifest_json=self.manifest().model_dump_json())

    def _on_sample(self, watch: Watch, tick: int) -> None:
        # Every other sample (about once a second) is plenty for the report's curves.
        if self.store is not None and tick % 2 == 0:
            self.store.add_sample(self.session_id, watch.memory_bytes, watch.cpu_seconds,
                                  watch.disk_used_bytes)

    def stats(self, last_line: str = "") -> LiveStat | None:
        """What this session uses now against its limits, while it runs (else None)."""
        watch = self.watch
        if watch is None or self.result.status is not SessionStatus.RUNNING:
            return None
        return LiveStat(memory_bytes=watch.memory_bytes, cpu_seconds=watch.cpu_seconds,
                        disk_bytes=watch.disk_used_bytes, limits=self.limits,
                        last_line=last_line)

    def close(self, snapshot_work: bool = True) -> None:
        """Stop the container, save the work, release resources; safe to call twice."""
        self._discard_secrets()
        ended = self.watch is not None and self.watch.exited.is_set()
        if self.container is not None and not ended:
            with contextlib.suppress(EngineError):
                info = self._inspect_when_reachable() or {}
                if info.get("State", {}).get("Running"):
                    self.container.stop(self.stop_grace_seconds)
        if snapshot_work:
            self._bring_home()
            if not self.result.status.is_final:
                self._end_without_container()
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
        if self._own_run:  # nobody else will: the run is this session's alone
            steps.append(self._stop_database_server)
        if self._started and not keep_volume:
            steps.append(self._keep_state)  # for `agentrt continue`, before the volume goes
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
