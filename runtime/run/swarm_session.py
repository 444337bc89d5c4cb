"""A session on Docker Swarm: the same session, its parts on a node agentrt chose.

:class:`SwarmSession` is an :class:`~runtime.run.session.IsolatedAgentSession` whose tree is a
:class:`~runtime.git.node_tree.NodeTree` (a loop volume made on the node, the base fetched
from the run's exchange, the work harvested there and pushed back through it) and whose agent
is a :class:`~runtime.engine.swarm_agent.SwarmAgent` (a one-shot service pinned to the node).
Everything else (branch, marker, manifest, classification, bundle checks, clean-up) is the
session's own. The manager's API reaches no container on a worker, so :meth:`SwarmSession.run`
watches the service's task instead of Docker events, and reads how the agent ended from the
entry point's report (:func:`~runtime.engine.swarm_agent.parse_end_stats`).

:class:`SwarmPlacement` picks each session's node from the nodes' capacity and what the run's
own sessions reserve (:func:`runtime.engine.swarm.place`), waiting for room when every node is
full; a task that fits no node at all was refused in preflight (:func:`check_fits`).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Sequence
from typing import Any

from runtime.config import Task
from runtime.engine.container import ContainerPlan
from runtime.engine.engine_streams import EngineStream
from runtime.engine.labels import LABEL_REPO, LABEL_RUN
from runtime.engine.swarm import Need, SwarmNode, SwarmPlacement, need_of
from runtime.engine.swarm_agent import EndStats, SwarmAgent, TaskView, parse_end_stats
from runtime.engine.swarm_service import node_status
from runtime.errors import AgentRuntimeError, ConfigError, EngineError, SessionError
from runtime.git.exchange import Exchange
from runtime.git.node_tree import NodeTree
from runtime.git.session_tree import SessionTree
from runtime.models import SessionResult, SessionStatus, WorkState, utcnow
from runtime.run.engine_watch import ENGINE_LOST
from runtime.run.resilience import crash_point
from runtime.run.session import IsolatedAgentSession
from runtime.run.session_end import DISK_FULL_MARGIN
from runtime.state.classify import EndFacts, classify

POLL_S = 0.5
FAST_POLL_S = 0.1
END_FAST_S = 5.0
END_MARK = b"agentrt-stats rc="
NODE_CHECK_S = 2.0
# How long the end of a session waits for the followed output to catch up.
FOLLOW_DRAIN_S = 3.0


def check_swarm_tasks(tasks: Sequence[Task], database_strategy: str, runtime: str,
                      networks: dict[str, str]) -> None:
    """Pure: refuse (ConfigError, exit 2) what sessions on Swarm cannot do yet."""
    if database_strategy == "shared":
        raise ConfigError("[run] field database_strategy: 'shared' is not supported with "
                          "engine = \"swarm\" yet")
    if runtime != "runc":
        raise ConfigError(f"[run] field runtime: {runtime!r}: a Swarm service runs under its "
                          "node's default runtime (Docker API 1.41 cannot choose another)")
    for task in tasks:
        if task.secrets:
            raise ConfigError(f"task {task.id!r}: field secrets: sessions on Docker Swarm "
                              "cannot receive secrets yet")
        if networks.get(task.id, "none") != "none":
            raise ConfigError(f"task {task.id!r}: field network: sessions on Docker Swarm have "
                              "no network (\"none\" only)")


class SwarmSession(IsolatedAgentSession):
    """One agent session as a service on a Swarm node."""

    def __init__(self, task: Task, config: Any, *, node: SwarmNode, exchange: Exchange,
                 api_version: str, **kwargs: Any) -> None:
        super().__init__(task, config, **kwargs)
        self.node = node
        self.exchange = exchange
        self.api_version = api_version
        self.result.node = node.hostname
        self._node_lost = False
        self._engine_lost = False
        self._follow_lock = threading.Lock()
        self._follow_stop = threading.Event()
        self._follow_stream: EngineStream | None = None
        self._followed = hashlib.sha256()
        self._followed_bytes = 0
        # Set when the entry point's report goes by in the followed output: the task is
        # about to end, so _watch_task polls it quickly for a moment (an agent that prints
        # the mark itself only makes its own session poll faster for END_FAST_S).
        self._end_hint = threading.Event()

    # -- where the parts are ------------------------------------------------------------------

    def _volumes_on_engine(self) -> bool:
        return True

    def _make_tree(self, on_engine: bool, uid: int, gid: int) -> SessionTree:
        # The volume and the checkout by one helper on the node (tree.checkout is then done).
        tree = NodeTree.create_checked_out(
            self.client, self.exchange, self.node.id, self.session_id, self.limits.disk_mb,
            uid, gid, {LABEL_REPO: str(self.repo.root), LABEL_RUN: self.run_id}, self.repo,
            self.branch, self.base_commit, self.session_dir)
        if self._marker is not None:  # what gc needs to find the volume on its node
            self._marker.engine_volume = tree.volume.name
            self._marker.node_id = self.node.id
            self._marker.volume_root = tree.volume.root
            self._marker.write(self.session_dir)
        return tree

    def _create_container(self, plan: ContainerPlan) -> SwarmAgent:
        return SwarmAgent(self.client, plan, self.node.id, self.api_version)

    def _start_log_keeper(self) -> None:
        # The service's output is followed once it exists (_follow_output) and completed from
        # the service's whole log when its task ends (_complete_output).
        self._open_log_keeper()

    def _follow_output(self, agent: SwarmAgent) -> None:
        """Write the service's output to the saved log as it arrives (`agentrt logs -f`)."""
        keeper = self._log_keeper
        if keeper is None:
            return

        def pump() -> None:
            tail = b""
            with contextlib.suppress(Exception):
                stream = agent.follow_logs()
                if stream is None:
                    return
                with self._follow_lock:
                    self._follow_stream = stream
                    if self._follow_stop.is_set():  # the session ended meanwhile
                        stream.close()
                for chunk in stream:
                    with self._follow_lock:
                        if self._follow_stop.is_set():
                            return
                        keeper.write(chunk)
                        self._followed.update(chunk)
                        self._followed_bytes += len(chunk)
                    if END_MARK in tail + chunk:
                        self._end_hint.set()
                    tail = chunk[-len(END_MARK):]

        threading.Thread(target=pump, name=f"agentrt-log-{self.session_id}",
                         daemon=True).start()

    def _complete_output(self, output: bytes | None) -> None:
        """Stop following (the stream is closed); append what the follower had not written
        yet (its writing is a prefix of the service's whole log, checked by hash), or say it
        could not be. ``output`` None: the node or the engine was lost, the log unreadable."""
        deadline = time.monotonic() + FOLLOW_DRAIN_S
        seen = -1
        while output is not None and time.monotonic() < deadline and \
                seen != self._followed_bytes < len(output):
            seen = self._followed_bytes
            time.sleep(0.3)
        with self._follow_lock:
            self._follow_stop.set()
            if self._follow_stream is not None:
                self._follow_stream.close()
            done = self._followed_bytes
            prefix = output is not None and \
                hashlib.sha256(output[:done]).hexdigest() == self._followed.hexdigest()
        keeper = self._log_keeper
        if keeper is None:
            return
        if output is None:
            lost = f"node {self.node.hostname}" if self._node_lost else "the Swarm manager"
            keeper.note(f"{lost} was lost: the saved log holds the output followed until then")
        elif prefix:
            keeper.write(output[done:])
        else:
            keeper.note("the output as followed and the service's log differ; the saved log "
                        "holds what was followed")

    # -- the run --------------------------------------------------------------------------------

    def run(self, command: Sequence[str] | None = None) -> SessionResult:
        """Create the service, watch its task to the end, classify, bring the work home."""
        agent = self.container
        if not isinstance(agent, SwarmAgent) or self.tree is None:
            raise SessionError("session not prepared: use it as a context manager")
        if command is not None or self._needs_command:
            raise ConfigError(f"session {self.session_id}: on Swarm the command comes from "
                              "the task")
        if self._cancel.is_set():
            self.result.status = SessionStatus.CANCELLED
            self._finish()
            return self.result
        deadline = time.time() + self.limits.time_seconds
        self.result.started_at = utcnow()
        self.result.status = SessionStatus.RUNNING
        self._record(deadline=deadline)
        self._start_log_keeper()
        self._started = True
        try:
            agent.start()
        except AgentRuntimeError as exc:
            self.result.status = SessionStatus.CRASHED
            self.result.reason = str(exc)
            self._finish()
            return self.result
        self._event("started", f"service {agent.id} on node {self.node.hostname}")
        self._follow_output(agent)
        crash_point("started")
        view, stopped_for = self._watch_task(agent, deadline)
        # A lost node's logs never come (a paused one's would be waited for, for good).
        output = None if self._node_lost or self._engine_lost else agent.logs()
        self._complete_output(output)
        self._classify_end(view, stopped_for,
                           parse_end_stats((output or b"").decode(errors="replace")))
        self._finish()
        return self.result

    def _watch_task(self, agent: SwarmAgent, deadline: float) -> tuple[TaskView | None, str]:
        """Poll the task until it ends; stop it at the deadline or on cancel; notice a lost
        node. Returns the last view and why agentrt stopped it ("", "timeout", "cancel")."""
        stopped_for = ""
        stop_sent = False
        next_node_check = 0.0
        backstop = deadline + self.stop_grace_seconds + 120
        view: TaskView | None = None
        fast_until = 0.0
        while True:
            with contextlib.suppress(EngineError):
                current = agent.task()
                if current is None and stop_sent:
                    # Scaled to zero, the manager removes the stopped task's record.
                    return view, stopped_for
                view = current or view
            if view is not None and view.ended:
                return view, stopped_for
            now = time.time()
            # `agentrt stop` from another process is read from the state DB with the node
            # check (every 2 s), not on every poll.
            asked = self._cancel.is_set() or (now >= next_node_check and self._stop_requested())
            if not stopped_for and asked:
                stopped_for = "cancel"
            elif not stopped_for and now >= deadline:
                stopped_for = "timeout"
            if stopped_for and not stop_sent:
                stop_sent = True
                with contextlib.suppress(EngineError):
                    agent.stop(self.stop_grace_seconds)
            if ENGINE_LOST.is_set():  # the manager stopped answering (run/engine_watch.py)
                self._engine_lost = True
                return view, stopped_for
            if now >= next_node_check:
                next_node_check = now + NODE_CHECK_S
                if self._node_down():
                    self._node_lost = True
                    return view, stopped_for
            if now > backstop:
                agent.kill()
                return view, stopped_for or "timeout"
            if time.monotonic() < fast_until:
                time.sleep(FAST_POLL_S)
            elif self._end_hint.wait(POLL_S):
                self._end_hint.clear()
                fast_until = time.monotonic() + END_FAST_S

    def _node_down(self) -> bool:
        return node_status(self.client, self.node.id) not in ("ready", "")

    def _classify_end(self, view: TaskView | None, stopped_for: str,
                      stats: EndStats | None) -> None:
        self.result.finished_at = utcnow()
        if self._node_lost:
            self.result.status = SessionStatus.CRASHED
            self.result.reason = f"node lost: {self.node.hostname} went down during the session"
            return
        if self._engine_lost:
            self.result.status, self.result.reason = classify(EndFacts(engine_lost=True),
                                                              self.limits)
            return
        code = view.exit_code if view is not None else None
        if code is None and stats is not None:
            code = stats.exit_code
        self.result.exit_code = code
        tree = self.tree
        if isinstance(tree, NodeTree) and stats is not None:
            tree.record_usage(stats.used_bytes, stats.free_bytes)
        oom = bool(stats and stats.oom_kills)
        low_disk = bool(stats and stats.free_bytes is not None and code not in (0, None)
                        and stats.free_bytes < DISK_FULL_MARGIN)
        engine_error = None
        if view is not None and view.state in ("rejected", "orphaned", "remove") and \
                not stopped_for:
            engine_error = f"the service's task ended {view.state}: {view.detail}"
        facts = EndFacts(cancelled=stopped_for == "cancel", timed_out=stopped_for == "timeout",
                         oom=oom, exit_code=code, volume_full=low_disk,
                         vanished=view is None, engine_error=engine_error)
        self.result.status, self.result.reason = classify(facts, self.limits)
        if stats is not None:
            if stats.peak_memory_bytes is not None:
                self.result.peak_memory_bytes = stats.peak_memory_bytes
            if oom:
                self.result.peak_memory_bytes = max(self.result.peak_memory_bytes,
                                                    self.limits.memory_mb * 1024 * 1024)
            if stats.cpu_seconds is not None:
                self.result.cpu_seconds = round(stats.cpu_seconds, 3)
            if stats.used_bytes is not None:
                self.result.disk_used_bytes = stats.used_bytes

    def _keep_volume(self) -> None:
        # The work is not home: the node helper that harvested lets the volume go, kept.
        if isinstance(self.tree, NodeTree):
            self.tree.keep()
        super()._keep_volume()

    def close(self, snapshot_work: bool = True) -> None:
        """As on one engine; then no node helper is left holding the volume (it is kept)."""
        try:
            super().close(snapshot_work)
        finally:
            if isinstance(self.tree, NodeTree):
                self.tree.keep()

    def _bring_home(self) -> None:
        if self._node_lost and not self._harvested:
            # Its volume is on a node that is gone: nothing can be read until it is back.
            self._harvested = True
            self.result.work = WorkState.KEPT
            self.result.head_commit = self.repo.branch_head(self.branch)
            self.result.warnings.append(
                f"node {self.node.hostname} was lost: the session's volume stays there; "
                "`agentrt gc` on the manager retries once the node is back")
            return
        super()._bring_home()


_closing: list[threading.Thread] = []


def wait_for_exchanges(timeout: float | None = None) -> bool:
    """Wait until the exchanges this process's runs are removing are gone (see
    :meth:`SwarmRun.close`); whether they all were within ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for thread in list(_closing):
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    _closing[:] = [t for t in _closing if t.is_alive()]
    return not _closing


class SwarmRun:
    """A run's Swarm side: the manager's API version, the placement and the exchange.

    The exchange starts in the background (:meth:`Exchange.begin`) while the run and its first
    sessions get ready; :meth:`close` removes it in the background too (its network goes only
    once the task left it), in a thread that is not a daemon, so the process does not exit
    before the exchange and its network are gone; :meth:`wait_closed` and
    :func:`wait_for_exchanges` wait for that; a failure is logged, not in the run's report
    (``agentrt gc`` finds whatever is left by label).
    """

    def __init__(self, client: Any, run_id: str) -> None:
        from runtime.engine.swarm import list_nodes, swarm_status
        from runtime.engine.swarm_service import require_api

        self.client = client
        self.api_version = str(client.api.api_version)
        require_api(self.api_version)
        status = swarm_status(client)
        self.placement = SwarmPlacement(list_nodes(client))
        self.exchange = Exchange.begin(client, run_id, status.node_id)
        self._closing: threading.Thread | None = None

    @staticmethod
    def preflight(client: Any, tasks: Sequence[Task], config: Any) -> None:
        """Refuse, before anything starts, what cannot run on this Swarm (ConfigError)."""
        from runtime.engine.swarm import check_fits, list_nodes, swarm_status
        from runtime.engine.swarm_service import require_api

        check_swarm_tasks(tasks, config.database_strategy, config.runtime,
                          {t.id: config.network_for(t) for t in tasks})
        try:
            require_api(str(client.api.api_version))
            swarm_status(client)
            nodes = list_nodes(client)
        except EngineError as exc:
            raise ConfigError(f"[run] field engine: swarm: {exc}") from None
        needs = []
        for task in tasks:
            limits = config.limits_for(task)
            needs.append(need_of(task.id, limits.memory_mb, limits.cpu_percent))
        check_fits(needs, nodes)

    def session(self, task: Task, config: Any, cancelled: threading.Event,
                **kwargs: Any) -> tuple[SwarmSession, Need] | None:
        """A session of ``task`` on the node placement picks (None: cancelled while waiting);
        give the Need back with :meth:`release` when the session is over."""
        limits = config.limits_for(task)
        need = need_of(task.id, limits.memory_mb, limits.cpu_percent)
        node = self.placement.acquire(need, cancelled)
        if node is None:
            return None
        try:
            session = SwarmSession(task, config, node=node, exchange=self.exchange,
                                   api_version=self.api_version, **kwargs)
        except BaseException:
            self.placement.release(node, need)
            raise
        return session, need

    def release(self, session: SwarmSession, need: Need) -> None:
        """The session is over: its node has room again."""
        self.placement.release(session.node, need)

    def close(self) -> None:
        """Start removing the exchange (see the class docstring); returns at once."""
        if self._closing is None:
            self._closing = self.exchange.stop_in_background()
            _closing.append(self._closing)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Wait until :meth:`close`'s removal ended; whether it did within ``timeout``."""
        if self._closing is None:
            return True
        self._closing.join(timeout)
        return not self._closing.is_alive()
