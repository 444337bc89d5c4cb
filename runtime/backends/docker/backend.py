"""The Docker backend: every session of a run on one engine, watched by one supervisor.

:class:`DockerBackend` puts a session's volume on this machine's disk (a loop-mounted ext4
image, or a soft limit; from the run's seed checkout when asked) when the engine shares it,
and on the engine's host otherwise (Colima's VM, a remote ``DOCKER_HOST``, Docker-in-Docker:
:class:`~runtime.backends.docker.trees.EngineTree`, every file operation by the API). Its agent
is a container; the run's :class:`~runtime.backends.docker.supervisor.Supervisor` follows its
events, deadline and usage, and :meth:`DockerRun.wait` turns what it saw, and the engine's
record of the container, into one :class:`~runtime.state.classify.EndFacts`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

import docker

from runtime.backends.base import (
    DISK_FULL_MARGIN,
    AgentStart,
    Placement,
    SessionTree,
    TreeRequest,
)
from runtime.backends.docker.disk_sharing import engine_shares_disk, volume_on_engine
from runtime.backends.docker.supervisor import ENGINE_TIMEOUT_S, Supervisor, Watch
from runtime.backends.docker.trees import EngineTree, HostTree
from runtime.config import ResourceLimits, Task
from runtime.engine.container import AgentContainer, AgentRunner, ContainerPlan, OutputStream
from runtime.engine.engine_watch import ENGINE_LOST
from runtime.engine.resilience import engine_retry
from runtime.engine.volumes import default_mode
from runtime.errors import AgentRuntimeError, EngineError, SessionError
from runtime.state.classify import EndFacts, own_deadline_ended
from runtime.state.log_keeper import LogKeeper
from runtime.state.session_facts import SessionMarker, engine_times

log = logging.getLogger(__name__)

# How long the end of a session waits for its output to be read to the end.
LOG_DRAIN_SECONDS = 120
# The same, when the engine was lost (the stream is what is left of it).
LOST_ENGINE_DRAIN_SECONDS = 2


class _Output:
    """A created container's output, attached before it starts, pumped into the saved log."""

    def __init__(self, container: AgentContainer, keeper: LogKeeper, session_id: str) -> None:
        self.stream: OutputStream | None = None
        self.thread: threading.Thread | None = None
        self.keeper = keeper
        try:
            stream = self.stream = container.attach_output()
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

        self.thread = threading.Thread(target=pump, name=f"agentrt-log-{session_id}",
                                       daemon=True)
        self.thread.start()

    def drain(self, engine_gone: bool) -> None:
        """Wait for the stream to end with the container (not long when the engine is gone)."""
        if self.thread is None:
            return
        # A container given up with its engine: its stream may never end; do not wait.
        self.thread.join(timeout=LOST_ENGINE_DRAIN_SECONDS if engine_gone else LOG_DRAIN_SECONDS)
        if self.thread.is_alive():
            if self.stream is not None:  # the reader stops, it is not left blocked
                self.stream.close()
            self.keeper.note("the rest of the output was not read in time")


class DockerRun:
    """A session's container as the run's supervisor watches it."""

    def __init__(self, supervisor: Supervisor, watch: Watch, start: AgentStart,
                 output: _Output | None) -> None:
        self._supervisor = supervisor
        self.watch = watch
        self._start = start
        self._output = output
        self.what = f"container {start.runner.id[:12]} started"

    def start(self) -> None:
        try:
            self._start.runner.start()
        except AgentRuntimeError:
            if self._output is not None and self._output.stream is not None:
                self._output.stream.close()
            raise
        self._supervisor.started(self.watch)

    def stop(self, reason: str, grace_seconds: int | None = None) -> None:
        self._supervisor.stop(self.watch, reason=reason, grace_seconds=grace_seconds)

    def usage(self) -> tuple[int, float, int] | None:
        watch = self.watch
        return watch.memory_bytes, watch.cpu_seconds, watch.disk_used_bytes

    def ended(self) -> bool:
        return self.watch.exited.is_set()

    def wait(self) -> EndFacts:
        watch, start = self.watch, self._start
        # Generous backstop only: the deadline thread stops the container at the deadline.
        limit = start.limits.time_seconds + start.grace_seconds + 120
        if not watch.exited.wait(timeout=limit):
            self._supervisor.reconcile(watch)
            if not watch.exited.is_set():
                watch.record(timed_out=True)
                start.runner.kill()
                watch.exited.wait(timeout=30)
        return watch_end_facts(watch, start.runner, start.tree, start.limits,
                               cancelled=start.cancelled.is_set() or start.stop_requested())

    def end_output(self) -> None:
        if self._output is not None:
            self._output.drain(self.watch.engine_gone)

    def unreachable(self, session_id: str) -> str | None:
        if not ENGINE_LOST.is_set():
            return None
        # The engine stopped answering: a harvest (a container) would only wait for it.
        return (f"work not brought home yet: the engine was lost; the volume is kept: run "
                f"`agentrt recover {session_id}` once an engine answers")

    def close(self) -> None:
        self._supervisor.unwatch(self.watch)


def watch_end_facts(watch: Watch, runner: AgentRunner, tree: SessionTree,
                    limits: ResourceLimits, *, cancelled: bool) -> EndFacts:
    """How a watched container ended: what the supervisor saw, completed by the engine's
    record of it (asked again while a restarting engine comes back)."""
    try:
        # A container given up (the engine stopped answering) is not asked about again.
        found = None if watch.engine_gone else engine_retry(runner.inspect)
        state = found or {}
    except EngineError:
        # The engine went away while (or right after) the container ended.
        watch.record(engine_interrupted=True)
        state = {}
    st = state.get("State", {})
    code = watch.exit_code if watch.exit_code is not None else st.get("ExitCode")
    exit_code = int(code) if code is not None else None
    low_disk = tree.mode == "loop" and exit_code not in (0, None) and \
        tree.free_bytes() < DISK_FULL_MARGIN
    started, finished = engine_times(st)
    disk_used = None
    with contextlib.suppress(OSError):
        # A volume on a lost engine is not measured (that would wait for the engine).
        disk_used = (watch.disk_used_bytes if watch.engine_gone and tree.on_engine
                     else tree.used_bytes())
    return EndFacts(
        cancelled=watch.cancelled or cancelled,
        timed_out=watch.timed_out, stop_failed=watch.stop_failed,
        own_deadline=own_deadline_ended(exit_code, started, finished, limits.time_seconds,
                                        watch.stop_sent_at, watch.stop_failed),
        disk_exceeded=watch.disk_exceeded,
        engine_lost=watch.engine_interrupted, vanished=watch.vanished or not state,
        oom=watch.oom_seen or bool(st.get("OOMKilled")), exit_code=exit_code,
        volume_full=low_disk, external_kill=watch.external_kill, stopping=watch.stopping,
        engine_error=str(st["Error"]) if st.get("Error") else None,
        started_at=started, finished_at=finished, peak_memory_bytes=watch.peak_memory_bytes,
        cpu_seconds=watch.cpu_seconds, disk_used_bytes=disk_used,
        disk_filled=watch.disk_filled, warnings=tuple(watch.error_lines()),
        stop_unconfirmed=watch.engine_gone)


class DockerBackend:
    """Sessions on one Docker engine (see the module's docstring)."""

    name = "docker"
    prepares_ahead = True
    reads_live_trees = True

    def __init__(self, client: docker.DockerClient, run_id: str, probe_dir: Path, *,
                 engine_timeout: float = ENGINE_TIMEOUT_S) -> None:
        self.client = client
        self.run_id = run_id
        self._probe_dir = probe_dir
        self._engine_timeout = engine_timeout
        self._supervisor: Supervisor | None = None
        self._lock = threading.Lock()
        self._attached: dict[str, _Output] = {}

    @property
    def shares_disk(self) -> bool:
        """Whether the engine sees this machine's disk (asked once per engine)."""
        return engine_shares_disk(self.client, self._probe_dir)

    def place(self, task: Task, limits: ResourceLimits,
              cancelled: threading.Event) -> Placement | None:
        """One engine: admission was checked for the whole run in preflight."""
        return Placement()

    def release(self, placement: Placement) -> None:
        """Nothing is reserved."""

    def make_tree(self, request: TreeRequest, placement: Placement,
                  marker: SessionMarker | None) -> SessionTree:
        """The volume, on the engine's host or on this one (with the run's object store)."""
        from runtime.engine.engine_volumes import engine_volume_mode
        from runtime.git.object_store import ensure_store

        # On the engine's host always when the engine does not share this disk; also when
        # this host can only give a soft limit (not root, macOS) but the engine can give a
        # hard one (Colima's VM). An explicit disk_mode pins the volume to this host (tests,
        # and users who ask), as does the design's named session.
        on_engine = volume_on_engine(
            self.shares_disk, request.disk_mode or default_mode(),
            lambda: engine_volume_mode(self.client),
            engine_side_allowed=request.disk_mode is None and not request.on_this_host)
        if on_engine:
            tree: SessionTree = EngineTree.create(
                self.client, request.session_id, request.disk_mb, request.uid, request.gid,
                labels=dict(request.labels))
            if marker is not None:
                marker.engine_volume = tree.volume.name  # type: ignore[attr-defined]
                marker.write(request.session_dir)
            return tree
        store = ensure_store(request.repo, request.run_id, request.base_commit)
        return HostTree.create(request.session_dir, request.disk_mb, request.uid, request.gid,
                               store, request.disk_mode, seed=self._seed(request, store))

    def _seed(self, request: TreeRequest, store: Path) -> Path | None:
        """The run's seed checkout for this session's volume (runtime/git/seed_image.py), when
        asked for and the volume is a loop volume; None otherwise, or when the seed cannot be
        built (the session then checks out on its own)."""
        if not request.seeded or (request.disk_mode or default_mode()) != "loop":
            return None
        from runtime.git.seed_image import ensure_seed

        try:
            return ensure_seed(request.repo, request.run_id, request.base_commit,
                               request.disk_mb, request.uid, request.gid, store)
        except AgentRuntimeError as exc:
            log.warning("session %s: no seed checkout (%s); checking out directly",
                        request.session_id, exc)
            return None

    def create_runner(self, plan: ContainerPlan, placement: Placement) -> AgentRunner:
        """Create (not start) the agent's container for ``plan``."""
        return AgentContainer.create(self.client, plan)

    def stand_by(self, runner: AgentRunner, log: LogKeeper) -> None:
        """Attach to the created container's output now, so that starting it is all that is
        left; once."""
        if isinstance(runner, AgentContainer) and runner.id not in self._attached:
            self._attached[runner.id] = _Output(runner, log, runner.id[:12])

    def _supervisor_now(self) -> Supervisor:
        with self._lock:
            if self._supervisor is None:
                self._supervisor = Supervisor(self.client, self.run_id,
                                              engine_timeout=self._engine_timeout).__enter__()
            return self._supervisor

    def watch(self, start: AgentStart) -> DockerRun:
        """Have the supervisor watch the container (deadline, events, usage) and its output
        followed; :meth:`DockerRun.start` starts it."""
        runner, tree = start.runner, start.tree
        if not isinstance(runner, AgentContainer):
            raise SessionError(f"session {start.session_id}: not a container of this engine")
        supervisor = self._supervisor_now()
        on_sample = start.on_sample

        def sampled(watch: Watch, tick: int) -> None:
            # Every other sample (about once a second) is plenty for the report's curves.
            if on_sample is not None and tick % 2 == 0:
                on_sample(watch.memory_bytes, watch.cpu_seconds, watch.disk_used_bytes)

        watch = supervisor.watch(Watch(
            session_id=start.session_id, container=runner, deadline=start.deadline,
            grace_seconds=start.grace_seconds, disk_limit_bytes=tree.limit_bytes,
            disk_usage=None if tree.on_engine else tree.used_bytes,
            soft_disk=tree.usage_walker is not None,
            disk_free=tree.free_bytes if tree.mode == "loop" and not tree.on_engine else None,
            engine_stats=tree.on_engine, on_sample=sampled,
        ))
        output = self._attached.pop(runner.id, None)
        if output is None and start.log is not None:
            output = _Output(runner, start.log, start.session_id)
        return DockerRun(supervisor, watch, start, output)

    def close(self) -> None:
        """Stop the run's supervisor."""
        with self._lock:
            supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.close()
