"""The seam between a session and where it runs: the :class:`Backend` protocol and what it
hands back (:class:`SessionTree`, :class:`AgentRun`, one
:class:`~runtime.state.classify.EndFacts` per end).

A backend (:mod:`runtime.backends.docker`, :mod:`runtime.backends.swarm`) decides *where* a
session runs; :class:`~runtime.run.session.IsolatedAgentSession` holds one and never asks which
it has. :mod:`runtime.backends.registry` picks it from ``[run] engine``.
"""

from __future__ import annotations

import shlex
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import docker
from docker.types import Mount

from runtime.config import ResourceLimits, Task
from runtime.engine.container import AgentRunner, ContainerPlan
from runtime.engine.volumes import DiskLimitMode, Volume
from runtime.git.harvest import Harvest, HarvestPlan, run_harvest
from runtime.git.safe_git import MainRepo
from runtime.state.classify import EndFacts
from runtime.state.log_keeper import LogKeeper
from runtime.state.session_facts import SessionMarker


def secrets_text(values: Mapping[str, str]) -> bytes:
    """The secrets file the entry point sources: one ``export NAME='value'`` line each."""
    return "".join(f"export {name}={shlex.quote(value)}\n"
                   for name, value in values.items()).encode()


class SessionTree(ABC):
    """A session's volume and working tree, wherever the engine keeps them."""

    mode: DiskLimitMode
    limit_bytes: int
    #: True when the tree is on the engine's host: nothing of it is on agentrt's disk.
    on_engine: bool
    #: The run's object store the tree borrows from (a host path; bound into the session and
    #: its harvest at STORE_MOUNT), if any.
    store: Path | None = None
    #: Whether its data directory can be carried into the branch's next session on the same
    #: engine (`agentrt continue`, runtime/engine/carry.py): not a tree on a Swarm node.
    carries_state: bool = True

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the volume is, for the record (a path on agentrt's or the engine's host)."""

    @property
    def host_db_dir(self) -> Path | None:
        """The database directory on agentrt's host, or None when it is on the engine's."""
        return None

    @abstractmethod
    def checkout(self, repo: MainRepo, branch: str, commit: str, scratch: Path) -> None:
        """Make the working tree a repository on ``branch`` at ``commit``, owned by the agent.

        ``scratch`` is a directory of agentrt's own for a temporary file (the base bundle)."""

    @abstractmethod
    def agent_mounts(self) -> list[Mount]:
        """The session container's mounts: workspace, database directory, object store."""

    @abstractmethod
    def harvest_mounts(self) -> list[Mount]:
        """The harvest container's mounts: the workspace (and object store), read-only."""

    @abstractmethod
    def secrets_mount(self, values: Mapping[str, str]) -> Mount:
        """The mount at which the entry point finds the secrets file (written now, or by
        :meth:`deliver_secrets` once the container exists)."""

    @abstractmethod
    def deliver_secrets(self, client: docker.DockerClient, container_id: str) -> None:
        """Put the secrets file into the created (not started) container, where needed."""

    @abstractmethod
    def discard_secrets(self) -> None:
        """Delete a secrets file no entry point consumed (a container that never started)."""

    @abstractmethod
    def used_bytes(self) -> int:
        """Bytes in use on the volume."""

    @abstractmethod
    def free_bytes(self) -> int:
        """Bytes still free for the agent."""

    @property
    def usage_walker(self) -> Callable[[], int] | None:
        """A cheap host-side reading of usage for the supervisor's soft limit, if any."""
        return None

    def harvest(self, client: docker.DockerClient, plan: HarvestPlan, dest: Path,
                max_bytes: int) -> Harvest:
        """Run the harvest where the tree is (a container on ``client``'s engine)."""
        return run_harvest(client, plan, dest, max_bytes)

    @abstractmethod
    def remove(self) -> None:
        """Unmount and delete the volume; idempotent."""

    @property
    def host_volume(self) -> Volume | None:
        """The volume when it is on agentrt's own disk (host code may work in it), else None."""
        return None

    def keep(self) -> None:  # noqa: B027 - most trees have nothing to do
        """The work could not be brought home: the volume stays, for ``agentrt gc``."""

    def let_go(self) -> None:  # noqa: B027 - most trees have nothing to do
        """The session is closed: whatever still holds the volume for it lets go (kept)."""


Status = Literal["ok", "warn", "fail"]
#: The image every session starts from (unless an environment gives another).
BASE_IMAGE = "agentrt/base:latest"


@dataclass(frozen=True)
class Check:
    """One finding of ``agentrt doctor`` (:func:`runtime.run.doctor.run_checks`); ``fix``
    says what to do when status is not ok."""

    name: str
    status: Status
    detail: str
    fix: str = ""


#: A loop volume with less than this free after the agent failed: it failed on a full disk.
DISK_FULL_MARGIN = 1024 * 1024


@dataclass(frozen=True)
class Placement:
    """Where :meth:`Backend.place` put a session, and what it reserved there."""

    #: The node's host name, when the backend has nodes (the report's ``node``).
    node: str | None = None
    #: The backend's own handle for the reservation (given back by :meth:`Backend.release`).
    held: Any = None


@dataclass(frozen=True)
class TreeRequest:
    """What a backend needs to make a session's volume and tree (checked out at its base)."""

    repo: MainRepo
    session_id: str
    run_id: str
    branch: str
    base_commit: str
    session_dir: Path
    disk_mb: int
    uid: int
    gid: int
    labels: Mapping[str, str]
    #: A ``disk_mode`` the caller pinned (None: the backend's choice).
    disk_mode: DiskLimitMode | None = None
    #: Start from the run's seed checkout, where the backend can.
    seeded: bool = False
    #: The volume must be on this host (the design's named session works in it from here).
    on_this_host: bool = False


@dataclass
class AgentStart:
    """What a backend needs to start a prepared session's agent and watch it to its end."""

    session_id: str
    runner: AgentRunner
    tree: SessionTree
    deadline: float
    grace_seconds: int
    limits: ResourceLimits
    #: The session's saved log: the backend writes the agent's output there as it comes.
    log: LogKeeper | None
    #: Set when the session is cancelled (``cancel()``, Ctrl-C).
    cancelled: threading.Event
    #: Whether ``agentrt stop`` asked for the session from another process.
    stop_requested: Callable[[], bool]
    #: Called with a usage sample (memory bytes, CPU seconds, disk bytes) about once a second.
    on_sample: Callable[[int, float, int], None] | None = None


class AgentRun(Protocol):
    """A session's agent as its backend watches it, from just before its start to its end."""

    #: What the session's ``started`` event says (the container or service, and where).
    what: str

    def start(self) -> None:
        """Start the agent (raises AgentRuntimeError when the engine cannot)."""

    def stop(self, reason: str, grace_seconds: int | None = None) -> None:
        """Stop it (SIGTERM, grace, SIGKILL); ``reason`` is ``"cancel"`` or ``"timeout"``."""

    def usage(self) -> tuple[int, float, int] | None:
        """Memory bytes, CPU seconds and disk bytes now (None: not read while it runs)."""

    def ended(self) -> bool:
        """Whether the backend saw the agent end."""

    def wait(self) -> EndFacts:
        """Block until the agent ended (the backend stops it at its deadline, or when
        ``cancelled`` is set or ``stop_requested``); how it ended, measurements included."""

    def end_output(self) -> None:
        """Wait (a bounded while) until the agent's whole output is in the saved log."""

    def unreachable(self, session_id: str) -> str | None:
        """Why the session's tree cannot be read now (its engine or node is lost: the work
        stays where it is, for gc), or None."""

    def close(self) -> None:
        """Stop watching (the agent has ended or is being removed)."""


class Backend(Protocol):
    """Where a run's sessions run: everything that differs between engines, and only that.

    One per run (:func:`runtime.backends.registry.open_backend`); a session holds it and asks
    it, in order: :meth:`place` (admission against the capacity, a reservation),
    :meth:`make_tree` (the volume, and the base where the backend brings it in; then
    :meth:`SessionTree.checkout`), :meth:`create_runner` (created, not started),
    :meth:`stand_by` (output attached ahead), :meth:`watch` and :meth:`AgentRun.start`, then
    :meth:`AgentRun.wait` (one :class:`~runtime.state.classify.EndFacts`), the harvest through
    :meth:`SessionTree.harvest` (a bundle file), :meth:`SessionTree.remove` or
    :meth:`SessionTree.keep`, and :meth:`release`. Refusals before anything starts, leftovers
    for ``gc`` and ``doctor`` checks are the registry's (:mod:`runtime.backends.registry`).
    """

    #: The ``[run] engine`` value it serves.
    name: str
    #: Whether sessions may be prepared ahead of a free slot (the warm pool).
    prepares_ahead: bool
    #: Whether a live session's tree can be read by ``docker exec`` (the conflict radar).
    reads_live_trees: bool

    @property
    def shares_disk(self) -> bool:
        """Whether the engine shares this machine's disk (else every file operation on a
        session's tree goes through the engine)."""

    def place(self, task: Task, limits: ResourceLimits,
              cancelled: threading.Event) -> Placement | None:
        """Where the session of ``task`` runs, waiting for room (None: cancelled meanwhile)."""

    def release(self, placement: Placement) -> None:
        """The session is over: its reservation is given back."""

    def make_tree(self, request: TreeRequest, placement: Placement,
                  marker: SessionMarker | None) -> SessionTree:
        """Make the session's volume with its tree checked out at its base (``marker`` gains
        what gc needs to find the volume)."""

    def create_runner(self, plan: ContainerPlan, placement: Placement) -> AgentRunner:
        """Create (not start) the agent's container or service."""

    def stand_by(self, runner: AgentRunner, log: LogKeeper) -> None:
        """Attach to a created runner's output ahead of its start (a session prepared ahead)."""

    def watch(self, start: AgentStart) -> AgentRun:
        """Get ready to start the agent: its output followed into the saved log, its
        deadline, usage and end watched; :meth:`AgentRun.start` starts it."""

    def close(self) -> None:
        """The run is over: remove what the backend made for it (returns at once)."""
