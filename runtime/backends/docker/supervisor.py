"""The host-side supervisor: Docker events, absolute deadlines and resource sampling.

One :class:`Supervisor` watches every container of a run:

* an *events* thread follows the engine's event stream (``die``, ``oom``, ``kill``,
  ``destroy``) filtered by the run's label — no sleep-polling for exits. When the stream breaks
  (dockerd restarted) it reconnects and reconciles each watched container by inspecting it;
* a *deadline* thread sleeps until the earliest absolute deadline and stops that container
  (SIGTERM, then SIGKILL after the grace);
* a *sampler* thread reads cgroup counters (memory, peak, CPU, OOM kills) and volume usage once
  a second and enforces soft disk limits.

A failure while handling one session is caught, recorded on that session's watch, and never
reaches the threads that serve the others.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors

from runtime.engine.cgroups import CgroupReading, ContainerCgroup, engine_stats_reading
from runtime.engine.container import AgentContainer
from runtime.engine.engine_watch import CANCEL_PROBE_S, ENGINE_LOST, EngineWatch
from runtime.engine.labels import LABEL_RUN
from runtime.errors import EngineUnreachableError

log = logging.getLogger(__name__)

SAMPLE_INTERVAL = 0.5
RECONCILE_EVERY = 30
# A loop volume with less than this free has been filled (ext4 keeps a few blocks back).
FULL_DISK_MARGIN = 1024 * 1024
#: How long the engine may stop answering before its sessions are given up (``[run]
#: engine_timeout`` overrides it).
ENGINE_TIMEOUT_S = 60.0
#: After a cancel's grace, how long to wait for the engine to say the container stopped.
CANCEL_SLACK_S = 5.0
#: How long closing waits for its threads in all (one stuck in a call to a lost engine is
#: left behind: it is a daemon, and its call ends with that call's own timeout).
CLOSE_WAIT_S = 5.0
LOST_CLOSE_WAIT_S = 0.5


@dataclass
class Watch:
    """What the supervisor knows about one running container."""

    session_id: str
    container: AgentContainer
    deadline: float
    grace_seconds: int
    disk_limit_bytes: int = 0
    disk_usage: Callable[[], int] | None = None
    soft_disk: bool = False
    # Free bytes on the session's (loop) volume; sampled to notice a disk that filled up even
    # when the agent deleted its files again before exiting.
    disk_free: Callable[[], int] | None = None
    disk_filled: bool = False
    exited: threading.Event = field(default_factory=threading.Event)
    exit_code: int | None = None
    oom_seen: bool = False
    vanished: bool = False
    timed_out: bool = False
    disk_exceeded: bool = False
    cancelled: bool = False
    stopping: bool = False
    # agentrt's stop did not reach the engine (refused, or no engine to answer).
    stop_failed: bool = False
    # When agentrt first asked the engine to stop it (host clock, epoch seconds).
    stop_sent_at: float | None = None
    external_kill: bool = False
    engine_interrupted: bool = False
    # The engine stopped answering (or would not take a stop on cancel): agentrt gave the
    # container up; nothing more is asked of the engine about it.
    engine_gone: bool = False
    # The engine confirmed agentrt's stop (the container has stopped).
    stop_delivered: bool = False
    cgroup: ContainerCgroup | None = None
    # The engine's cgroup files are not on this host (a VM, a remote engine): its stats API.
    engine_stats: bool = False
    peak_memory_bytes: int = 0
    memory_bytes: int = 0
    cpu_seconds: float = 0.0
    disk_used_bytes: int = 0
    errors: list[str] = field(default_factory=list)
    # How many times each error in ``errors`` was seen (a failing sampler repeats itself).
    error_counts: dict[str, int] = field(default_factory=dict)
    on_sample: Callable[[Watch, int], None] | None = None
    _facts_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def note(self, error: str) -> bool:
        """Count ``error``; True the first time it is seen (only then is it worth logging)."""
        with self._facts_lock:
            seen = self.error_counts.get(error, 0)
            self.error_counts[error] = seen + 1
            if not seen:
                self.errors.append(error)
            return not seen

    def error_lines(self) -> list[str]:
        """The errors seen, once each, in order, with how often when more than once."""
        with self._facts_lock:
            return [e if self.error_counts.get(e, 1) == 1 else
                    f"{e} (seen {self.error_counts[e]} times)" for e in self.errors]

    def record(self, *, exit_code: int | None = None, **seen: bool) -> None:
        """Record what a thread saw about the end, under the watch's lock.

        The supervisor's event, deadline and sampler threads and the session all report here:
        a fact, once seen, stays seen (``timed_out``, ``cancelled``, ``oom_seen``, ...); the exit
        code is kept from the first report that has one. :func:`runtime.state.classify.classify`
        decides from them with a fixed precedence, so who noticed first never matters.
        """
        with self._facts_lock:
            if exit_code is not None and self.exit_code is None:
                self.exit_code = exit_code
            for name, value in seen.items():
                if name not in _FACTS:
                    raise AttributeError(f"not a fact of a session's end: {name}")
                if value:
                    setattr(self, name, True)


_FACTS = frozenset({"oom_seen", "vanished", "timed_out", "disk_exceeded", "cancelled", "stopping",
                    "external_kill", "engine_interrupted", "disk_filled", "stop_failed"})


class Supervisor:
    """Watches the containers of one run; thread-safe; use as a context manager."""

    def __init__(self, client: docker.DockerClient, run_id: str,
                 sample_interval: float = SAMPLE_INTERVAL,
                 engine_timeout: float = ENGINE_TIMEOUT_S) -> None:
        self.client = client
        self._engine_watch = EngineWatch(client, engine_timeout, self._engine_lost)
        self.run_id = run_id
        self.sample_interval = sample_interval
        self._watches: dict[str, Watch] = {}
        self._lock = threading.Lock()
        self._deadlines: list[tuple[float, str]] = []
        self._deadline_cv = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._events_ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stream: object | None = None
        self.fault_injector: Callable[[str, str], None] | None = None

    def __enter__(self) -> Supervisor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the events, deadline and sampler threads; return once events are followed."""
        for target, name in ((self._events_loop, "events"), (self._deadline_loop, "deadlines"),
                             (self._sample_loop, "sampler")):
            thread = threading.Thread(target=target, name=f"agentrt-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._engine_watch.start()
        self._events_ready.wait(timeout=30)

    def close(self) -> None:
        """Stop the threads (containers are left to their sessions)."""
        self._closing.set()
        self._engine_watch.close()
        with self._deadline_cv:
            self._deadline_cv.notify_all()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()  # type: ignore[attr-defined]
        wait = LOST_CLOSE_WAIT_S if ENGINE_LOST.is_set() else CLOSE_WAIT_S
        deadline = time.monotonic() + wait
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    # -- registration -----------------------------------------------------------------------

    def watch(self, watch: Watch) -> Watch:
        """Follow ``watch.container``: register before starting it so no event is missed."""
        with self._deadline_cv:
            self._watches[watch.container.id] = watch
            heapq.heappush(self._deadlines, (watch.deadline, watch.container.id))
            self._deadline_cv.notify_all()
        return watch

    def started(self, watch: Watch) -> None:
        """Call right after the container started: find its cgroup by the container's id
        (an early exit is an event like any other), else by one look at the container, which
        also catches an early exit."""
        cgroup = ContainerCgroup.for_container(watch.container.id)
        if cgroup is not None:
            watch.cgroup = cgroup
            self._guard(watch, "sample", lambda: self._sample(watch))
            return

        def locate() -> None:
            state = watch.container.inspect()
            pid = int(((state or {}).get("State") or {}).get("Pid") or 0)
            watch.cgroup = ContainerCgroup.for_pid(pid, watch.container.id)
            self._apply_state(watch, state)

        if not self._guard(watch, "locate cgroup", locate):
            self.reconcile(watch)
        self._guard(watch, "sample", lambda: self._sample(watch))

    def unwatch(self, watch: Watch) -> None:
        """Forget a container (after it exited)."""
        with self._lock:
            self._watches.pop(watch.container.id, None)

    def stop(self, watch: Watch, *, reason: str, grace_seconds: int | None = None) -> None:
        """Stop a container on purpose (``timeout``, ``cancel``, ``disk``); SIGTERM then SIGKILL."""
        if reason == "timeout":
            watch.record(timed_out=True)
        elif reason == "cancel":
            watch.record(cancelled=True)
        elif reason == "disk":
            watch.record(disk_exceeded=True)
        watch.record(stopping=True)
        if watch.stop_sent_at is None:
            watch.stop_sent_at = time.time()
        grace = watch.grace_seconds if grace_seconds is None else grace_seconds
        if reason == "cancel":
            # A person is waiting: an engine that neither confirms nor refuses the stop, and
            # answers nothing else either, is not waited for past the grace and a few seconds;
            # one that does not even answer a ping (frozen, gone) not past CANCEL_PROBE_S.
            self._after(grace + CANCEL_SLACK_S, watch)
            self._probe(watch)
        unreachable: list[bool] = []

        def stop() -> None:
            try:
                watch.container.stop(grace)
            except EngineUnreachableError:
                unreachable.append(True)
                raise

        if self._guard(watch, f"stop ({reason})", stop):
            watch.stop_delivered = True
        else:
            watch.record(stop_failed=True)
            if reason == "cancel" and unreachable:  # no engine to wait for: give up now
                self._give_up(watch)

    def _after(self, delay: float, watch: Watch) -> None:
        """In ``delay`` seconds: give ``watch`` up if the engine is silent, else look again
        each second until its container has ended (a slow engine is still an engine)."""
        def check() -> None:
            if watch.exited.is_set() or watch.stop_delivered or self._closing.is_set():
                return
            if self._engine_watch.silence() > self._engine_watch.interval + CANCEL_SLACK_S:
                self._give_up(watch)
            else:
                self._after(1.0, watch)

        timer = threading.Timer(delay, check)
        timer.daemon = True
        timer.start()

    def _probe(self, watch: Watch) -> None:
        """Ping the engine now; give ``watch`` up if nothing answered within CANCEL_PROBE_S."""
        asked = time.monotonic()
        self._engine_watch.ping_now()

        def check() -> None:
            if watch.exited.is_set() or self._closing.is_set() or \
                    self._engine_watch.answered_since(asked):
                return
            log.error("session %s: the Docker engine did not answer within %.0f s of the stop: "
                      "given up, its work kept", watch.session_id, CANCEL_PROBE_S)
            self._give_up(watch)

        timer = threading.Timer(CANCEL_PROBE_S, check)
        timer.daemon = True
        timer.start()

    def _give_up(self, watch: Watch) -> None:
        """Stop waiting for a container the engine says nothing more about; the retry helpers
        stop waiting for that engine too."""
        if not watch.exited.is_set():
            self._engine_watch.declare_lost()
            watch.engine_gone = True
            watch.record(engine_interrupted=True)
            watch.exited.set()

    def _engine_lost(self) -> None:
        """The engine stopped answering for ``engine_timeout``: give every container up."""
        for watch in self._snapshot():
            self._give_up(watch)

    # -- threads ----------------------------------------------------------------------------

    def _guard(self, watch: Watch, what: str, action: Callable[[], object]) -> bool:
        try:
            if self.fault_injector is not None:
                self.fault_injector(watch.session_id, what)
            action()
            return True
        except Exception as exc:  # noqa: BLE001 - contained to the one session it concerns
            if watch.note(f"{what}: {exc}"):  # counted, not repeated, after the first
                log.warning("session %s: %s failed: %s", watch.session_id, what, exc)
            return False

    def _events_loop(self) -> None:
        since: int | None = None
        backoff = 0.5
        last_break = ""
        while not self._closing.is_set():
            try:
                stream = self.client.events(
                    decode=True, since=since,
                    filters={"type": "container", "label": f"{LABEL_RUN}={self.run_id}"},
                )
                self._stream = stream
                self._events_ready.set()
                # After (re)connecting, anything may have happened while we were away.
                for watch in self._snapshot():
                    if since is not None and not watch.exited.is_set():
                        watch.record(engine_interrupted=True)
                    self.reconcile(watch)
                backoff = 0.5
                for event in stream:
                    self._engine_watch.answered()
                    since = int(event.get("time", time.time()))
                    self._on_event(event)
                    if self._closing.is_set():
                        return
            except Exception as exc:  # noqa: BLE001 - any break of the stream: reconnect
                if self._closing.is_set():
                    return
                if str(exc) != last_break:  # once per kind of break, not once per retry
                    log.warning("docker event stream broke (%s); reconnecting", exc)
                    last_break = str(exc)
            if since is None:
                since = int(time.time())
            self._events_ready.set()
            self._closing.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _on_event(self, event: dict[str, object]) -> None:
        action = str(event.get("Action") or event.get("status") or "")
        cid = str(event.get("id") or "")
        with self._lock:
            watch = self._watches.get(cid)
        if watch is None:
            return
        attrs = event.get("Actor", {})
        attributes = attrs.get("Attributes", {}) if isinstance(attrs, dict) else {}

        def handle() -> None:
            if action == "oom":
                watch.record(oom_seen=True)
                # The cgroup may still be there: its own high-water mark beats any sample.
                self._final_sample(watch)
            elif action == "kill":
                if not watch.stopping:
                    watch.record(external_kill=True)
            elif action == "die":
                code = attributes.get("exitCode")
                watch.record(exit_code=int(code) if code is not None else None)
                self._final_sample(watch)
                watch.exited.set()
            elif action == "destroy":
                watch.record(vanished=not watch.exited.is_set())
                watch.exited.set()

        if not self._guard(watch, f"event {action}", handle):
            # The event is lost to the failure; ask the engine directly instead.
            self.reconcile(watch)

    def reconcile(self, watch: Watch) -> None:
        """Ask the engine how ``watch``'s container is, in case an event was missed."""
        self._guard(watch, "reconcile",
                    lambda: self._apply_state(watch, watch.container.inspect()))

    @staticmethod
    def _apply_state(watch: Watch, state: dict[str, Any] | None) -> None:
        """What the engine's record of the container says: gone, OOM-killed, exited."""
        if state is None:
            watch.record(vanished=not watch.exited.is_set())
            watch.exited.set()
            return
        st = state.get("State", {})
        if st.get("OOMKilled"):
            watch.record(oom_seen=True)
        if st.get("Status") in ("exited", "dead"):
            watch.record(exit_code=int(st.get("ExitCode", -1)))
            watch.exited.set()

    def _deadline_loop(self) -> None:
        while not self._closing.is_set():
            with self._deadline_cv:
                while self._deadlines and self._deadlines[0][1] not in self._watches:
                    heapq.heappop(self._deadlines)
                if not self._deadlines:
                    self._deadline_cv.wait()
                    continue
                when, cid = self._deadlines[0]
                delay = when - time.time()
                if delay > 0:
                    self._deadline_cv.wait(timeout=delay)
                    continue
                heapq.heappop(self._deadlines)
                watch = self._watches.get(cid)
            if watch is not None and not watch.exited.is_set():
                threading.Thread(
                    target=self.stop, args=(watch,), kwargs={"reason": "timeout"},
                    name=f"agentrt-timeout-{watch.session_id}", daemon=True,
                ).start()

    def _snapshot(self) -> list[Watch]:
        with self._lock:
            return list(self._watches.values())

    def _sample(self, watch: Watch) -> None:
        self._sample_cgroup(watch)
        if watch.disk_free is not None and watch.disk_free() < FULL_DISK_MARGIN:
            watch.record(disk_filled=True)
        if watch.disk_usage is not None:
            watch.disk_used_bytes = watch.disk_usage()
            if (watch.soft_disk and watch.disk_limit_bytes
                    and watch.disk_used_bytes > watch.disk_limit_bytes
                    and not watch.stopping):
                watch.record(stopping=True)  # one stop, not one per sample while it takes effect
                threading.Thread(target=self.stop, args=(watch,), kwargs={"reason": "disk"},
                                 daemon=True).start()

    def _sample_cgroup(self, watch: Watch) -> None:
        reading: CgroupReading | None = None
        if watch.cgroup is not None:
            reading = watch.cgroup.read()
        elif watch.engine_stats:
            stats = self.client.api.stats(watch.container.id, stream=False, one_shot=True)
            reading = engine_stats_reading(stats)
        if reading is not None:
            if reading.memory_bytes is not None:
                watch.memory_bytes = reading.memory_bytes
            if reading.peak_memory_bytes is not None:
                watch.peak_memory_bytes = max(watch.peak_memory_bytes, reading.peak_memory_bytes)
            elif reading.memory_bytes is not None:
                watch.peak_memory_bytes = max(watch.peak_memory_bytes, reading.memory_bytes)
            if reading.cpu_seconds is not None:
                watch.cpu_seconds = max(watch.cpu_seconds, reading.cpu_seconds)
            if reading.oom_kills:
                watch.record(oom_seen=True)

    def _final_sample(self, watch: Watch) -> None:
        # The cgroup disappears with the container: read it once more at "die". Only the
        # cgroup: measuring the disk (a tree walk in soft mode) would hold up the event stream.
        with contextlib.suppress(Exception):
            self._sample_cgroup(watch)

    def _sample_loop(self) -> None:
        tick = 0
        while not self._closing.wait(self.sample_interval):
            tick += 1
            for watch in self._snapshot():
                if watch.exited.is_set():
                    continue
                self._guard(watch, "sample", lambda w=watch: self._sample(w))  # type: ignore[misc]
                if tick % RECONCILE_EVERY == 0:
                    # A safety net only: exits are learnt from events, this catches a lost one.
                    self.reconcile(watch)
                if watch.on_sample is not None:
                    self._guard(watch, "on_sample",
                                lambda w=watch, t=tick: w.on_sample(w, t))  # type: ignore[misc]
