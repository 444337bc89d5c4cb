"""The Docker Swarm backend: a session's parts on a node agentrt chose.

With :class:`SwarmBackend` a session's tree is a
:class:`~runtime.backends.swarm.node_tree.NodeTree` (a loop volume made on the node, the base
fetched from the run's exchange, the work harvested there and pushed back through it) and its
agent a :class:`~runtime.backends.swarm.agent.SwarmAgent` (a one-shot service pinned to the
node). Everything else (branch, marker, manifest, classification, bundle checks, clean-up) is
the session's own. The manager's API reaches no container on a worker, so :class:`SwarmRun`
watches the service's task instead of Docker events, and reads how the agent ended from the
entry point's report (:func:`~runtime.backends.swarm.agent.parse_end_stats`): one
:class:`~runtime.state.classify.EndFacts`, a lost node included.

:class:`SwarmPlacement` (:meth:`SwarmBackend.place`) picks each session's node from the nodes'
capacity and what the run's own sessions reserve (:func:`runtime.backends.swarm.nodes.place`),
waiting for room when every node is full; a task that fits no node at all was refused in
preflight (:func:`check_fits`).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import docker

from runtime.backends.base import (
    DISK_FULL_MARGIN,
    AgentStart,
    Placement,
    SessionTree,
    TreeRequest,
)
from runtime.backends.swarm.agent import EndStats, SwarmAgent, TaskView, parse_end_stats
from runtime.backends.swarm.exchange import Exchange
from runtime.backends.swarm.node_tree import NodeTree
from runtime.backends.swarm.nodes import Need, SwarmNode, SwarmPlacement, need_of
from runtime.backends.swarm.service import node_status
from runtime.config import ResourceLimits, Task
from runtime.engine.container import AgentRunner, ContainerPlan
from runtime.engine.engine_streams import EngineStream
from runtime.engine.engine_watch import ENGINE_LOST
from runtime.errors import ConfigError, EngineError, SessionError
from runtime.state.classify import EndFacts
from runtime.state.log_keeper import LogKeeper
from runtime.state.session_facts import SessionMarker

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
        if networks.get(task.id, "none") != "none":
            raise ConfigError(f"task {task.id!r}: field network: sessions on Docker Swarm have "
                              "no network (\"none\" only)")


class SwarmRun:
    """A session's service as the backend watches it: its task polled to the end, stopped at
    the deadline or on cancel, its node checked; its output followed into the saved log."""

    def __init__(self, client: docker.DockerClient, node: SwarmNode,
                 start: AgentStart) -> None:
        if not isinstance(start.runner, SwarmAgent):
            raise ConfigError(f"session {start.session_id}: not a service of this Swarm")
        self.client = client
        self.node = node
        self.agent: SwarmAgent = start.runner
        self._start = start
        self._node_lost = False
        self._engine_lost = False
        self._ended = False
        self._stop_asked = threading.Event()
        self._follow_lock = threading.Lock()
        self._follow_stop = threading.Event()
        self._follow_stream: EngineStream | None = None
        self._followed = hashlib.sha256()
        self._followed_bytes = 0
        # Set when the entry point's report goes by in the followed output: the task is
        # about to end, so _watch_task polls it quickly for a moment (an agent that prints
        # the mark itself only makes its own session poll faster for END_FAST_S).
        self._end_hint = threading.Event()
        self.what = f"service {start.runner.id} on node {node.hostname}"

    def start(self) -> None:
        self.agent.start()
        self._follow_output()

    def stop(self, reason: str, grace_seconds: int | None = None) -> None:
        """The watch loop stops the service within a poll (see :meth:`_watch_task`)."""
        self._stop_asked.set()

    def usage(self) -> tuple[int, float, int] | None:
        """Not read while it runs (a reading would be a helper task on the node)."""
        return None

    def ended(self) -> bool:
        return False

    def end_output(self) -> None:
        """Completed by :meth:`wait` from the service's whole log."""

    def unreachable(self, session_id: str) -> str | None:
        if not self._node_lost:
            return None
        # Its volume is on a node that is gone: nothing can be read until it is back.
        return (f"node {self.node.hostname} was lost: the session's volume stays there; "
                "`agentrt gc` on the manager retries once the node is back")

    def close(self) -> None:
        """Nothing to let go: the service is removed with the session's runner."""

    def _follow_output(self) -> None:
        """Write the service's output to the saved log as it arrives (`agentrt logs -f`)."""
        keeper = self._start.log
        if keeper is None:
            return
        agent = self.agent

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

        threading.Thread(target=pump, name=f"agentrt-log-{self._start.session_id}",
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
        keeper = self._start.log
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

    def wait(self) -> EndFacts:
        """Watch the task to its end; complete the saved output; how it ended."""
        view, stopped_for = self._watch_task()
        # A lost node's logs never come (a paused one's would be waited for, for good).
        output = None if self._node_lost or self._engine_lost else self.agent.logs()
        self._complete_output(output)
        return task_end_facts(view, stopped_for,
                              parse_end_stats((output or b"").decode(errors="replace")),
                              node_lost=self._node_lost, engine_lost=self._engine_lost,
                              tree=self._start.tree)

    def _watch_task(self) -> tuple[TaskView | None, str]:
        """Poll the task until it ends; stop it at the deadline or on cancel; notice a lost
        node. Returns the last view and why agentrt stopped it ("", "timeout", "cancel")."""
        start, agent = self._start, self.agent
        deadline = start.deadline
        stopped_for = ""
        stop_sent = False
        next_node_check = 0.0
        backstop = deadline + start.grace_seconds + 120
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
            asked = start.cancelled.is_set() or self._stop_asked.is_set() or (
                now >= next_node_check and start.stop_requested())
            if not stopped_for and asked:
                stopped_for = "cancel"
            elif not stopped_for and now >= deadline:
                stopped_for = "timeout"
            if stopped_for and not stop_sent:
                stop_sent = True
                with contextlib.suppress(EngineError):
                    agent.stop(start.grace_seconds)
            if ENGINE_LOST.is_set():  # the manager stopped answering (engine/engine_watch.py)
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


def task_end_facts(view: TaskView | None, stopped_for: str, stats: EndStats | None, *,
                   node_lost: bool, engine_lost: bool = False,
                   tree: SessionTree | None = None) -> EndFacts:
    """How a session's service ended, in the classifier's vocabulary: the task's last view,
    why agentrt stopped it (``""``, ``"timeout"``, ``"cancel"``), the entry point's report,
    and whether its node (or the manager) was lost. Pure but for recording the volume's usage
    on ``tree``."""
    if node_lost or engine_lost:
        # Nothing more is known of a node that is gone than why agentrt had stopped it.
        return EndFacts(cancelled=stopped_for == "cancel", timed_out=stopped_for == "timeout",
                        node_lost=node_lost, engine_lost=engine_lost)
    code = view.exit_code if view is not None else None
    if code is None and stats is not None:
        code = stats.exit_code
    if isinstance(tree, NodeTree) and stats is not None:
        tree.record_usage(stats.used_bytes, stats.free_bytes)
    low_disk = bool(stats and stats.free_bytes is not None and code not in (0, None)
                    and stats.free_bytes < DISK_FULL_MARGIN)
    engine_error = None
    if view is not None and view.state in ("rejected", "orphaned", "remove") and \
            not stopped_for:
        engine_error = f"the service's task ended {view.state}: {view.detail}"
    return EndFacts(cancelled=stopped_for == "cancel", timed_out=stopped_for == "timeout",
                    oom=bool(stats and stats.oom_kills), exit_code=code, volume_full=low_disk,
                    vanished=view is None, engine_error=engine_error,
                    peak_memory_bytes=stats.peak_memory_bytes if stats else None,
                    cpu_seconds=stats.cpu_seconds if stats else None,
                    disk_used_bytes=stats.used_bytes if stats else None)


_closing: list[threading.Thread] = []


def wait_for_exchanges(timeout: float | None = None) -> bool:
    """Wait until the exchanges this process's runs are removing are gone (see
    :meth:`SwarmBackend.close`); whether they all were within ``timeout`` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for thread in list(_closing):
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    _closing[:] = [t for t in _closing if t.is_alive()]
    return not _closing


class SwarmBackend:
    """Sessions as services of the Swarm the engine manages: the manager's API version, the
    placement of sessions on nodes and the run's exchange.

    The exchange starts in the background (:meth:`Exchange.begin`) while the run and its first
    sessions get ready; :meth:`close` removes it in the background too (its network goes only
    once the task left it), in a thread that is not a daemon, so the process does not exit
    before the exchange and its network are gone; :meth:`wait_closed` and
    :func:`wait_for_exchanges` wait for that; a failure is logged, not in the run's report
    (``agentrt gc`` finds whatever is left by label).
    """

    name = "swarm"
    prepares_ahead = False  # placement decides where a volume goes
    reads_live_trees = False
    shares_disk = False

    def __init__(self, client: Any, run_id: str) -> None:
        from runtime.backends.swarm.nodes import list_nodes, swarm_status
        from runtime.backends.swarm.service import require_api

        self.client = client
        self.api_version = str(client.api.api_version)
        require_api(self.api_version)
        status = swarm_status(client)
        self.placement = SwarmPlacement(list_nodes(client))
        self.exchange = Exchange.begin(client, run_id, status.node_id)
        self._closing: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Trees made and not yet given a runner (where a session's Docker secret waits).
        self._trees: dict[str, NodeTree] = {}

    @staticmethod
    def preflight(client: Any, tasks: Sequence[Task], config: Any) -> None:
        """Refuse, before anything starts, what cannot run on this Swarm (ConfigError): the
        settings Swarm cannot express, tasks that fit no node, and nodes not set up for
        agentrt (:func:`~runtime.backends.swarm.node_checks.require_nodes_set_up`: one probe
        service per node, so this adds to every Swarm run's start)."""
        from runtime.backends.swarm.node_checks import require_nodes_set_up
        from runtime.backends.swarm.nodes import check_fits, list_nodes, swarm_status
        from runtime.backends.swarm.service import require_api
        from runtime.presets import resolve_image

        if config.services or any(config.environment_for(t) for t in tasks):
            raise ConfigError("[run] field engine: environments and services are not "
                              "supported with engine = \"swarm\" yet (their images are "
                              "built on this engine only); use engine = \"docker\"")
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
        # Last, as it costs a helper service per node: each node's set-up and images.
        try:
            require_nodes_set_up(client, nodes, {resolve_image(t, config.image) for t in tasks})
        except EngineError as exc:
            raise ConfigError(f"[run] field engine: swarm: the nodes could not be checked: "
                              f"{exc}") from None

    def place(self, task: Task, limits: ResourceLimits,
              cancelled: threading.Event) -> Placement | None:
        """The node placement picks for ``task`` (None: cancelled while waiting for room);
        give it back with :meth:`release` when the session is over."""
        need = need_of(task.id, limits.memory_mb, limits.cpu_percent)
        node = self.placement.acquire(need, cancelled)
        if node is None:
            return None
        return Placement(node=node.hostname, held=(node, need))

    def release(self, placement: Placement) -> None:
        """The session is over: its node has room again."""
        node, need = self._held(placement)
        self.placement.release(node, need)

    @staticmethod
    def _held(placement: Placement) -> tuple[SwarmNode, Need]:
        node, need = placement.held
        return node, need

    def make_tree(self, request: TreeRequest, placement: Placement,
                  marker: SessionMarker | None) -> SessionTree:
        """The volume and the checkout by one helper on the node (``checkout`` is then done)."""
        node, _ = self._held(placement)
        tree = NodeTree.create_checked_out(
            self.client, self.exchange, node.id, request.session_id, request.disk_mb,
            request.uid, request.gid, dict(request.labels), request.repo, request.branch,
            request.base_commit, request.session_dir)
        if marker is not None:  # what gc needs to find the volume on its node
            marker.engine_volume = tree.volume.name
            marker.node_id = node.id
            marker.volume_root = tree.volume.root
            marker.write(request.session_dir)
        # Its secrets, if any, become a Docker secret labelled like the volume (gc finds it).
        tree.run_id = request.run_id
        tree.secret_labels = dict(request.labels)
        with self._lock:
            self._trees[request.session_id] = tree
        return tree

    def create_runner(self, plan: ContainerPlan, placement: Placement) -> AgentRunner:
        """The agent as a one-shot service pinned to the node (created, not started)."""
        node, _ = self._held(placement)
        with self._lock:
            tree = self._trees.pop(plan.session_id, None)
        secret = tree.take_secret() if tree is not None else None
        if plan.secrets_mount is not None and secret is None:
            raise SessionError(f"session {plan.session_id}: its secrets were not made a "
                               "Docker secret")
        return SwarmAgent(self.client, plan, node.id, self.api_version, secret)

    def stand_by(self, runner: AgentRunner, log: LogKeeper) -> None:
        """Nothing ahead: the service's output is followed once it exists."""

    def watch(self, start: AgentStart) -> SwarmRun:
        """The service watched through its task (:class:`SwarmRun`)."""
        runner = start.runner
        node_id = runner.node_id if isinstance(runner, SwarmAgent) else ""
        node = next((n for n in self.placement.nodes if n.id == node_id), None)
        if node is None:
            raise ConfigError(f"session {start.session_id}: its service is on no node of "
                              "this Swarm")
        return SwarmRun(self.client, node, start)

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
