"""IsolatedAgentSession: one agent's branch, volume, working tree, database and container.

Use it as a context manager::

    with IsolatedAgentSession(task, config, repo="~/src/app") as session:
        result = session.run()

``__enter__`` creates everything (undoing what was made if any step fails); ``run`` starts the
agent, waits for it through its backend, classifies how it ended and brings the work
home onto the session's branch; ``__exit__`` always snapshots what is left and releases every
resource (container, database, volume, loop device) unless ``cleanup_on_complete`` is false.
The branch always stays.

The lifecycle reads top to bottom here: ``prepare`` (placement, branch, marker, volume and
checkout by its backend, database, container) -> ``run`` (start, supervise, one
:class:`~runtime.state.classify.EndFacts`, classify) -> ``_finish`` (saved log, harvest, import)
-> ``close`` (release). Where it runs is its :class:`~runtime.backends.base.Backend`'s business
(:mod:`runtime.backends`); its other parts (environment, egress, services, database) are a
:class:`~runtime.run.session_parts.SessionParts` it owns, its saved output a
:class:`~runtime.run.session_logs.SessionLog`; how an end is recorded is
:func:`~runtime.run.session_end.record_end`. Merging is the run's
(:mod:`runtime.run.merging`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime import paths
from runtime.backends.base import AgentRun, AgentStart, Backend, Placement, SessionTree, TreeRequest
from runtime.config import ResourceLimits, RunConfig, Task, secret_values
from runtime.databases.sqlite import SessionDatabase, SqliteDatabase
from runtime.engine.container import AgentRunner, ContainerPlan
from runtime.engine.engine_watch import ENGINE_LOST
from runtime.engine.labels import LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_REPO, LABEL_RUN
from runtime.engine.resilience import crash_point, engine_retry
from runtime.engine.types import EngineClient, Mount
from runtime.engine.volumes import DiskLimitMode, Volume, volumes_root
from runtime.errors import AgentRuntimeError, ConfigError, EngineError, NotFoundError, SessionError
from runtime.git.directory_mode import open_repo
from runtime.git.harvest import HarvestPlan
from runtime.git.object_store import remove_run_stores
from runtime.git.safe_git import MainRepo
from runtime.git.work_home import bring_work_home
from runtime.git.workspace import create_branch, new_session_id
from runtime.models import LiveStat, Manifest, SessionResult, SessionStatus, WorkState, utcnow
from runtime.presets import resolve_command, resolve_env, resolve_image, resolve_secrets
from runtime.run.api_args import as_command, as_limits, as_repo, as_run_config, session_task
from runtime.run.identity import HIDDEN_DATABASE_ENV, agent_ids, new_run_id, secret_env
from runtime.run.session_end import record_end, stop_requested
from runtime.run.session_logs import SessionLog
from runtime.run.session_parts import SessionParts
from runtime.run.usage import usage_from_log
from runtime.state.liveness import process_start_time
from runtime.state.session_facts import SessionMarker, import_policy
from runtime.version import agentrt_version

if TYPE_CHECKING:
    from runtime.engine.egress import RunEgress
    from runtime.engine.services import SessionServices
    from runtime.run.continuation import Continuation
    from runtime.run.environments import EnvImage
    from runtime.state.store import Store

log = logging.getLogger(__name__)


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
        client: EngineClient | None = None,
        backend: Backend | None = None,
        placement: Placement | None = None,
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
        # Where it runs (runtime/backends/): the run's, or one of its own from [run] engine;
        # where in it: the coordinator's placement, or the session's own (given back at close).
        self._own_backend = backend is None
        self._backend = backend
        self.placement = placement
        # The volume and working tree: on this host, or where the engine is when it does not
        # share agentrt's disk (a VM, a remote host, dind; every file operation by the API).
        self.tree: SessionTree | None = None
        self.container: AgentRunner | None = None
        self.agent: AgentRun | None = None
        self._marker: SessionMarker | None = None
        self._checked_out = False
        self._started = False
        self._harvested = False
        # Host code was handed the working tree (``workspace``): what it wrote comes home
        # at the end even if no container ran; ``_host_error`` is what the with block raised.
        self._workspace_lent = False
        self._host_error: BaseException | None = None
        self._cancel = threading.Event()
        self.result = SessionResult(
            id=self.session_id, task_id=task.id, branch=self.branch, image=self.image,
            base_commit=self.base_commit, node=placement.node if placement else None,
        )
        # Its environment, egress, services and database; its saved output.
        self.parts = SessionParts(task, self.config, self.repo, self.run_id, self.session_id,
                                  lambda: self.client, egress=egress)
        # Redacted with the secrets' *values* (this process has them; a viewer may not).
        self.log = SessionLog(paths.log_path(self.repo.state_dir, self.session_id),
                              list(secret_values(task.secrets).values()), self.result)

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
    def client(self) -> EngineClient:
        """The Docker client (the shared one unless given)."""
        if self._client is None:
            from runtime.engine.discovery import get_client

            self._client = get_client()
        return self._client

    @property
    def backend(self) -> Backend:
        """Where the session runs (the run's backend, or its own from ``[run] engine``)."""
        if self._backend is None:
            from runtime.backends.registry import open_backend

            self._backend = open_backend(self.config, self.client, self.run_id, self.repo)
        return self._backend

    @property
    def database(self) -> SessionDatabase | None:
        """The session's database (None until prepared)."""
        return self.parts.database

    @property
    def services(self) -> SessionServices | None:
        """The session's ``[[run.services]]`` (None without any)."""
        return self.parts.services

    @property
    def log_path(self) -> Path:
        """Where the agent's output is kept after its container is gone."""
        return self.log.path

    @property
    def volume(self) -> Volume | None:
        """The session's volume on this host (None until prepared, or when it lives on the
        engine's host)."""
        return self.tree.host_volume if self.tree is not None else None

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
                   "Colima's, a remote DOCKER_HOST)" if not self.backend.shares_disk else
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

    def logs(self) -> bytes:
        """The saved output so far (secret values redacted; a flood's middle dropped)."""
        return self.log.read()

    def last_line(self, width: int = 60) -> str:
        """The agent's latest output line: secrets redacted, control characters dropped."""
        return self.log.last_line(width)

    def stand_by(self) -> None:
        """Attach to the created agent's output now (a session prepared ahead), so that
        starting it is all that is left."""
        keeper = self.log.open()
        if keeper is not None and self.container is not None:
            self.backend.stand_by(self.container, keeper)

    def disk_used(self) -> int:
        """Bytes used on the session's volume."""
        return self.tree.used_bytes() if self.tree else 0

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
            if self.environment is None:
                self.environment = self.parts.build_environment(self.base_commit)
                if self.environment is not None:
                    self.image = self.result.image = self.environment.ref
            self.result.image_digest, self.result.cli_version = image_facts(self.client,
                                                                            self.image)
            manifest = self.manifest()
            owner_start = process_start_time(os.getpid())
            self._record(
                manifest_json=manifest.model_dump_json(), volume_path=str(self.session_dir),
                owner_pid=os.getpid(), owner_start_time=owner_start,
            )
            placement = self._place()
            if self.continues is None:
                create_branch(self.repo, self.branch, self.base_commit)
            else:
                self.continues.check_branch(self.repo)
            crash_point("branch")
            # The marker comes first: from here on gc judges the session by its owner's pid
            # and start time, and it harvests only once the checkout is complete.
            self.session_dir.mkdir(parents=True, mode=0o711)
            self._marker = SessionMarker(
                self.session_id, self.run_id, self.branch, os.getpid(), owner_start,
                keep=not self.config.cleanup_on_complete, base_commit=self.base_commit,
                uid=uid, gid=gid)
            self._marker.write(self.session_dir)
            crash_point("marker")
            tree = self.tree = self.backend.make_tree(TreeRequest(
                repo=self.repo, session_id=self.session_id, run_id=self.run_id,
                branch=self.branch, base_commit=self.base_commit, session_dir=self.session_dir,
                disk_mb=self.limits.disk_mb, uid=uid, gid=gid,
                labels={LABEL_REPO: str(self.repo.root), LABEL_RUN: self.run_id},
                disk_mode=self.disk_mode, seeded=self.seeded, on_this_host=self._named,
            ), placement, self._marker)
            self.result.disk_limit_mode = tree.mode
            crash_point("volume")
            tree.checkout(self.repo, self.branch, self.base_commit, self.session_dir)
            crash_point("checkout")
            self._marker.checked_out = self._checked_out = True
            self._marker.write(self.session_dir)
            database = self.parts.make_database(tree.host_db_dir, uid, gid)
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
                **database.env,
            }
            # Credentials reach the agent through a file its entry point reads and deletes,
            # never through the container's configuration (visible to `docker inspect`).
            hidden = {**resolve_secrets(self.task, secret_env(self.task)),
                      **{k: env.pop(k) for k in HIDDEN_DATABASE_ENV if k in env}}
            network = getattr(database, "network", None) or self.network
            if self.network == "allowlist":
                network = self.parts.join_egress(env, getattr(database, "network", None))
            services = self.parts.start_services()
            if services is not None and network == "none":
                network = services.network  # the session's only network: its services'
            plan = ContainerPlan(
                session_id=self.session_id, run_id=self.run_id, image=self.image,
                command=resolve_command(self.task, resume=self.continues is not None),
                limits=self.limits,
                mounts=(*tree.agent_mounts(), *(() if tree.on_engine else self.extra_mounts)),
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

    def _place(self) -> Placement:
        """Where the backend puts the session (the coordinator's placement, if it gave one)."""
        if self.placement is None:
            placement = self.backend.place(self.task, self.limits, self._cancel)
            if placement is None:
                raise SessionError(f"session {self.session_id}: cancelled while waiting for "
                                   "room")
            self.placement = placement
            self.result.node = placement.node
        return self.placement

    def _create_container(self, plan: ContainerPlan) -> AgentRunner:
        """Create (not start) the agent's container or service for ``plan``, where placed."""
        return self.backend.create_runner(plan, self._place())

    def _stop_requested(self) -> bool:
        """True if `agentrt stop` asked for this session from another process."""
        return stop_requested(self.store, self.session_id)

    def cancel(self) -> None:
        """Stop the agent (SIGTERM, grace, SIGKILL); the session ends as ``cancelled``."""
        self._cancel.set()
        if self.agent is not None:
            self.agent.stop("cancel", grace_seconds=self.stop_grace_seconds)

    def run(self, command: Sequence[str] | None = None) -> SessionResult:
        """Start the agent, wait for it to end, classify, and bring the work home.

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
        # start: the backend follows its output, deadline and usage from here
        deadline = time.time() + self.limits.time_seconds
        agent = self.agent = self.backend.watch(AgentStart(
            session_id=self.session_id, runner=self.container, tree=self.tree,
            deadline=deadline, grace_seconds=self.stop_grace_seconds, limits=self.limits,
            log=self.log.open(), cancelled=self._cancel,
            stop_requested=self._stop_requested, on_sample=self._on_sample))
        self.result.started_at = utcnow()
        self.result.status = SessionStatus.RUNNING
        try:
            self._started = True
            agent.start()
            # Recorded once it runs: nothing stands between a free slot and the agent.
            self._record(deadline=deadline)
            self._event("started", agent.what)
        except AgentRuntimeError as exc:
            self.result.status = SessionStatus.CRASHED
            self.result.reason = str(exc)
            self._finish()
            return self.result
        crash_point("started")
        if self._cancel.is_set():
            agent.stop("cancel")
        # supervise -> end facts -> classify; then harvest, import (and, later, merge)
        record_end(self.result, agent.wait(), self.limits)
        self._finish()
        return self.result

    def _inspect_when_reachable(self) -> dict[str, Any] | None:
        """The agent's state (None: gone), waiting a while for a restarting engine."""
        return engine_retry(self.container.inspect) if self.container else None

    def _discard_secrets(self) -> None:
        # The entry point deletes the file as soon as it has read it; this covers a container
        # that never got that far.
        if self.tree is not None:
            self.tree.discard_secrets()

    def _finish(self) -> None:
        """The agent ended (or never started): its saved log and usage, then its work home
        (harvest, import), then the final record."""
        self._discard_secrets()
        if self.result.finished_at is None:
            self.result.finished_at = utcnow()
        if self.result.started_at:
            self.result.duration_s = max(0.0, round(
                (self.result.finished_at - self.result.started_at).total_seconds(), 3))
        self.log.finish(self.agent)
        if self.task.command is None:  # a preset's CLI: what it reported it used
            self.result.usage = usage_from_log(self.task.agent, self.log.path)
        crash_point("harvest")
        self._bring_home()
        crash_point("home")
        self._record()
        self._event("finished", f"{self.result.status.value}: {self.result.reason or ''}")

    def _bring_home(self) -> None:
        """Harvest the stopped session's tree in a container; import the verified bundle."""
        if self._harvested or self.tree is None or not self._checked_out:
            return
        self._harvested = True
        unreachable = self.agent.unreachable(self.session_id) if self._started and \
            self.agent is not None else None
        if unreachable:
            # Its engine or node is lost: a harvest would only wait for it; gc retries.
            self.result.work = WorkState.KEPT
            self.result.head_commit = self.repo.branch_head(self.branch)
            self.result.warnings.append(unreachable)
            return
        if not self._started and not self._workspace_lent:
            # Nobody worked in the tree: it is the checkout agentrt made.
            self.result.work = WorkState.HOME
            self.result.head_commit = self.repo.branch_head(self.branch)
            return
        uid, gid = agent_ids()
        plan = HarvestPlan(
            session_id=self.session_id, base_commit=self.base_commit,
            mounts=tuple(self.tree.harvest_mounts()), store=self.tree.store, uid=uid, gid=gid,
            memory_mb=self.limits.memory_mb, scratch_mb=self.limits.disk_mb,
            runtime=self.config.runtime,
            labels={LABEL_OWNER_PID: str(os.getpid()),
                    LABEL_OWNER_START: str(process_start_time(os.getpid()) or ""),
                    LABEL_REPO: str(self.repo.root)})
        tree = self.tree
        outcome = bring_work_home(
            self.client, self.repo, plan, branch=self.branch,
            policy=import_policy(self.config, self.task.secrets, self.limits.disk_mb),
            harvester=lambda plan, dest, limit: tree.harvest(self.client, plan, dest, limit))
        self.result.work = outcome.state
        self.result.head_commit = outcome.head
        self.result.warnings.extend(outcome.warnings)
        if outcome.state is not WorkState.HOME:
            log.error("session %s: %s", self.session_id, "; ".join(outcome.warnings))

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

    def _on_sample(self, memory_bytes: int, cpu_seconds: float, disk_bytes: int) -> None:
        if self.store is not None:
            self.store.add_sample(self.session_id, memory_bytes, cpu_seconds, disk_bytes)

    def stats(self, last_line: str = "") -> LiveStat | None:
        """What this session uses now against its limits, while it runs (else None)."""
        usage = self.agent.usage() if self.agent is not None else None
        if usage is None or self.result.status is not SessionStatus.RUNNING:
            return None
        memory, cpu, disk = usage
        return LiveStat(memory_bytes=memory, cpu_seconds=cpu, disk_bytes=disk,
                        limits=self.limits, last_line=last_line)

    def close(self, snapshot_work: bool = True) -> None:
        """Stop the container, save the work, release resources; safe to call twice."""
        self._discard_secrets()
        ended = self.agent is not None and self.agent.ended()
        # A container that never started has nothing to stop (a session prepared ahead).
        if self.container is not None and self._started and not ended:
            with contextlib.suppress(EngineError):
                info = self._inspect_when_reachable() or {}
                if info.get("State", {}).get("Running"):
                    self.container.stop(self.stop_grace_seconds)
        if snapshot_work:
            self._bring_home()
            if not self.result.status.is_final:
                self._end_without_container()
                self._record()
        if self.agent is not None:
            self.agent.close()
        try:
            self._release(snapshot_work)
        finally:
            self._leave_backend()

    def _leave_backend(self) -> None:
        """Nothing of the backend's holds the volume any more; the placement is given back;
        a backend of the session's own is closed."""
        if self.tree is not None:
            self.tree.let_go()
        if self.placement is not None and self._backend is not None:
            placement, self.placement = self.placement, None
            self._backend.release(placement)
        if self._own_backend and self._backend is not None:
            backend, self._backend = self._backend, None
            backend.close()

    def _release(self, snapshot_work: bool) -> None:
        """Release (unless kept) its container, services, database, egress and volume."""
        if not self.config.cleanup_on_complete and snapshot_work:
            return
        errors: list[str] = []
        # Nothing is deleted until it is safely home: a failed harvest keeps the volume.
        keep_volume = snapshot_work and self.result.work is WorkState.KEPT
        steps = [self._remove_container, self.parts.stop_services, self.parts.drop_database,
                 self.parts.leave_egress]
        if self._own_run:  # nobody else will: the run is this session's alone
            steps.append(self.parts.stop_database_server)
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

    def _delete_unused_branch(self) -> None:
        # A session that never started leaves no half-made branch behind.
        if self.continues is not None:  # the branch is the continued session's: it stays
            return
        with contextlib.suppress(AgentRuntimeError):
            if self.repo.branch_head(self.branch) == self.base_commit:
                self.repo.git("update-ref", "-d", f"refs/heads/{self.branch}", self.base_commit)

    def take(self) -> None:
        """A session prepared ahead (recorded ``prepared``, runtime/run/warm_pool.py) is now
        its task's: its row says ``pending`` until it starts."""
        self.result.status = SessionStatus.PENDING
        self._record()

    def discard(self) -> None:
        """Release a prepared session that will never run, its untouched branch, and its
        ``prepared`` row (it never was a task's session: the record forgets it)."""
        self.close(snapshot_work=False)
        self._delete_unused_branch()
        if self.store is not None and self.result.status is SessionStatus.PREPARED:
            try:
                self.store.delete_session(self.session_id)
            except NotFoundError:
                pass
            except AgentRuntimeError as exc:  # gc forgets it once this process is gone
                log.warning("state store: %s", exc)

    def _keep_volume(self) -> None:
        if self.tree is not None:
            self.tree.keep()
        if self._marker is not None:
            self._marker.work_kept = True
            self._marker.write(self.session_dir)

    def _remove_container(self) -> None:
        # An engine declared lost is not waited for: gc removes the container (by its labels).
        if self.container is not None and not ENGINE_LOST.is_set():
            engine_retry(self.container.remove)

    def _remove_volume(self) -> None:
        if self.tree is not None:
            self.tree.remove()
            shutil.rmtree(self.session_dir, ignore_errors=True)
        elif self.session_dir.exists():
            from runtime.engine.volumes import found_volume

            found_volume(self.session_dir).remove()
