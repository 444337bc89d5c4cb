"""Docker Swarm: the nodes a manager sees, and where a session's reservation fits (issue #13).

agentrt talks to one engine, a Swarm *manager*: it lists the nodes (:func:`list_nodes`), and
places each session on one of them itself (:func:`place`) with a ``node.id==<id>`` constraint,
rather than leaving it to the Swarm scheduler, because the session's volume must already exist
on that node before its service starts. A session reserves exactly what it is limited to
(memory and CPU: reservation = limit), so a node never holds more sessions than it can run at
their limits. :func:`check_fits` is the admission rule before a run: every task must fit on at
least one node.

:mod:`runtime.backends.swarm.service` makes the session's service spec and runs one-shot helper
services; :mod:`runtime.backends.swarm.volumes` makes session volumes on a node;
:mod:`runtime.backends.swarm.images` carries images to nodes without a registry.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import docker
import docker.errors

from runtime.engine.discovery import engine_errors, engine_info
from runtime.engine.labels import LABEL_SESSION
from runtime.errors import ConfigError, EngineError

NodeRole = Literal["manager", "worker"]
#: Task states in which a task holds its node's resources (Swarm's own accounting).
HOLDING_STATES = frozenset({"new", "pending", "assigned", "accepted", "preparing", "ready",
                            "starting", "running"})


@dataclass(frozen=True)
class SwarmNode:
    """One Swarm node as the manager reports it."""

    id: str
    hostname: str
    role: NodeRole
    state: str  # ready, down, unknown, disconnected
    availability: str  # active, pause, drain
    nano_cpus: int
    memory_bytes: int

    @property
    def schedulable(self) -> bool:
        """Ready and active: a new task may go there."""
        return self.state == "ready" and self.availability == "active"


@dataclass(frozen=True)
class Need:
    """What a session reserves on its node: memory in bytes and CPU in nano-CPUs (10⁹ = one
    core). ``name`` names it in errors (the task id)."""

    name: str
    memory_bytes: int
    nano_cpus: int

    @classmethod
    def of_limits(cls, name: str, memory_mb: int, cpu_percent: int) -> Need:
        """From a task's limits (``cpu_percent`` 100 = one core)."""
        return cls(name, memory_mb * 1024 * 1024, cpu_percent * 10_000_000)


@dataclass(frozen=True)
class Reserved:
    """What is already reserved on one node."""

    memory_bytes: int = 0
    nano_cpus: int = 0

    def __add__(self, other: Reserved) -> Reserved:
        return Reserved(self.memory_bytes + other.memory_bytes, self.nano_cpus + other.nano_cpus)


@dataclass(frozen=True)
class SwarmStatus:
    """This engine's Swarm membership: it is a manager of swarm ``cluster_id``."""

    node_id: str
    cluster_id: str
    managers: int
    nodes: int


def node_from_attrs(attrs: Mapping[str, Any]) -> SwarmNode:
    """A :class:`SwarmNode` from the API's node document."""
    spec = attrs.get("Spec") or {}
    description = attrs.get("Description") or {}
    resources = description.get("Resources") or {}
    role = str(spec.get("Role", "worker"))
    return SwarmNode(
        id=str(attrs.get("ID", "")),
        hostname=str(description.get("Hostname", "")),
        role="manager" if role == "manager" else "worker",
        state=str((attrs.get("Status") or {}).get("State", "unknown")),
        availability=str(spec.get("Availability", "active")),
        nano_cpus=int(resources.get("NanoCPUs", 0)),
        memory_bytes=int(resources.get("MemoryBytes", 0)),
    )


def swarm_status(client: docker.DockerClient) -> SwarmStatus:
    """This engine's place in a Swarm; EngineError unless it is a Swarm manager."""
    swarm = engine_info(client).get("Swarm") or {}
    state = str(swarm.get("LocalNodeState", "inactive"))
    if state != "active":
        raise EngineError(f"the engine is not part of a Docker Swarm (swarm state: {state}): "
                          "run `docker swarm init` on it, or point agentrt at a manager")
    if not swarm.get("ControlAvailable"):
        raise EngineError(
            f"the engine is a Swarm worker (node {swarm.get('NodeID', '?')}), not a manager: "
            "agentrt must talk to a manager (`docker node ls` works there)")
    cluster = swarm.get("Cluster") or {}
    return SwarmStatus(node_id=str(swarm.get("NodeID", "")), cluster_id=str(cluster.get("ID", "")),
                       managers=int(swarm.get("Managers") or 0), nodes=int(swarm.get("Nodes") or 0))


def list_nodes(client: docker.DockerClient) -> list[SwarmNode]:
    """Every node of the Swarm, by host name; EngineError if this engine is not a manager."""
    with engine_errors("list the Swarm's nodes"):
        try:
            found = client.nodes.list()
        except docker.errors.APIError as exc:
            if exc.status_code == 503:  # "This node is not a swarm manager."
                swarm_status(client)
            raise
    return sorted((node_from_attrs(n.attrs) for n in found), key=lambda n: (n.hostname, n.id))


def reserved_by_sessions(client: docker.DockerClient) -> dict[str, Reserved]:
    """What agentrt's session services reserve on each node (by node id) right now: their
    tasks that hold resources (:data:`HOLDING_STATES`), found by the ``agentrt.session`` label."""
    with engine_errors("list agentrt's services"):
        services = client.services.list(filters={"label": LABEL_SESSION})
        tasks = [t for s in services for t in s.tasks()]
    return reserved_from_tasks(tasks)


def reserved_from_tasks(tasks: Iterable[Mapping[str, Any]]) -> dict[str, Reserved]:
    """Pure: sum the reservations of the tasks holding resources, by node id."""
    reserved: dict[str, Reserved] = {}
    for task in tasks:
        node = str(task.get("NodeID") or "")
        state = str((task.get("Status") or {}).get("State", ""))
        desired = str(task.get("DesiredState", "running"))
        if not node or state not in HOLDING_STATES or desired not in ("running", "ready"):
            continue
        held = ((task.get("Spec") or {}).get("Resources") or {}).get("Reservations") or {}
        reserved[node] = reserved.get(node, Reserved()) + Reserved(
            int(held.get("MemoryBytes") or 0), int(held.get("NanoCPUs") or 0))
    return reserved


def free_on(node: SwarmNode, reserved: Mapping[str, Reserved]) -> Reserved:
    """Pure: what is left on ``node`` after ``reserved`` (may be negative)."""
    held = reserved.get(node.id, Reserved())
    return Reserved(node.memory_bytes - held.memory_bytes, node.nano_cpus - held.nano_cpus)


def place(need: Need, nodes: Sequence[SwarmNode],
          reserved: Mapping[str, Reserved]) -> SwarmNode | None:
    """Pure: the ready and active node where ``need`` fits beside what is ``reserved`` there,
    the one with the most free memory (then free CPU, then host name); None if none fits."""
    fitting = []
    for node in nodes:
        free = free_on(node, reserved)
        if node.schedulable and need.memory_bytes <= free.memory_bytes \
                and need.nano_cpus <= free.nano_cpus:
            fitting.append((-free.memory_bytes, -free.nano_cpus, node.hostname, node.id, node))
    return min(fitting)[-1] if fitting else None


def _shown(node: SwarmNode) -> str:
    return (f"{node.hostname} ({node.memory_bytes // 2**20} MiB, "
            f"{node.nano_cpus / 1e9:g} CPUs)")


def check_fits(needs: Sequence[Need], nodes: Sequence[SwarmNode]) -> None:
    """Pure admission: ConfigError (exit 2) naming the first task that fits on no ready and
    active node even when that node is empty, and the biggest such node."""
    usable = [n for n in nodes if n.schedulable]
    if not usable:
        shown = ", ".join(f"{n.hostname} ({n.state}, {n.availability})" for n in nodes)
        raise ConfigError(f"no Swarm node is ready and active: {shown or 'no nodes'}")
    biggest = max(usable, key=lambda n: (n.memory_bytes, n.nano_cpus, n.hostname))
    for need in needs:
        if place(need, usable, {}) is None:
            raise ConfigError(
                f"task {need.name} needs {need.memory_bytes // 2**20} MiB and "
                f"{need.nano_cpus / 1e9:g} CPUs, which fit on no Swarm node; the biggest is "
                f"{_shown(biggest)}: lower the task's memory_mb or cpu_percent")


def need_of(task_id: str, memory_mb: int, cpu_percent: int) -> Need:
    """What a session reserves on its node."""
    return Need.of_limits(task_id, memory_mb, cpu_percent)


class SwarmPlacement:
    """The node of each session of a run: capacity minus the run's own reservations."""

    def __init__(self, nodes: Sequence[SwarmNode]) -> None:
        self.nodes = list(nodes)
        self._reserved: dict[str, Reserved] = {}
        self._room = threading.Condition()

    def acquire(self, need: Need, cancelled: threading.Event) -> SwarmNode | None:
        """The node for ``need``, reserved; waits while every node is full (None: cancelled)."""
        with self._room:
            while not cancelled.is_set():
                node = place(need, self.nodes, self._reserved)
                if node is not None:
                    self._reserved[node.id] = self._reserved.get(node.id, Reserved()) + \
                        Reserved(need.memory_bytes, need.nano_cpus)
                    return node
                self._room.wait(timeout=1.0)
        return None

    def release(self, node: SwarmNode, need: Need) -> None:
        """Give ``need``'s reservation on ``node`` back."""
        with self._room:
            held = self._reserved.get(node.id, Reserved())
            self._reserved[node.id] = Reserved(held.memory_bytes - need.memory_bytes,
                                               held.nano_cpus - need.nano_cpus)
            self._room.notify_all()
