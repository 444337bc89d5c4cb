"""A session's container: its run arguments from the limits (a pure function) and lifecycle.

:func:`container_spec` decides; :class:`AgentContainer` acts. A unit test asserts on the spec,
integration tests prove the kernel enforces it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import docker
import docker.errors
from docker.models.containers import Container, ContainerCollection
from docker.types import LogConfig, Mount

from runtime.config import ResourceLimits
from runtime.engine.discovery import engine_errors
from runtime.engine.engine_streams import shut_down
from runtime.engine.labels import (
    LABEL_GRACE_SECONDS,
    LABEL_RUN,
    LABEL_SESSION,
    LABEL_TIME_SECONDS,
    container_name,
)
from runtime.errors import EngineError, SessionError

WORKSPACE = "/workspace"
DB_MOUNT = "/agentrt/db"
#: Where a session (and its harvest) sees the run's read-only object store: a neutral path, so
#: nothing depends on the container's uid reaching the store's path on the host (a repository
#: under a 0700 home). The session repository's alternates reach it by a relative path.
STORE_MOUNT = "/agentrt/objects"
SECRETS_MOUNT = "/run/agentrt"
SECRETS_FILE = "env"
# Exit codes of coreutils' timeout(1) when it ends the command at the deadline: 124 (the command
# died of SIGTERM) or 137 (it outlived the grace; the SIGKILL takes timeout down with it).
DEADLINE_EXIT_CODES = (124, 137)
# How much earlier than time_seconds an engine-measured run may end and still count as stopped
# at its deadline (the engine's StartedAt is taken a little before timeout(1) starts counting).
DEADLINE_SLACK_S = 0.5
# The container's own deadline trails agentrt's by the grace. timeout(1) arms a *new* timer for
# the grace when a signal reaches it (agentrt's SIGTERM through docker-init) and its first
# timer still fires at the deadline, as SIGKILL: any earlier, agentrt's grace would be cut short.
# So with agentrt alive the agent gets SIGTERM at time_seconds and SIGKILL a grace later (from
# agentrt and timeout alike); with agentrt gone, SIGTERM a grace later and SIGKILL after another.

# The session container's entry point, run by docker-init (tini) as its only child:
# 1. the task's secrets: sourced from a file agentrt wrote on a host directory mounted at
#    /run/agentrt, then deleted, so they are in the agent's environment but never in the
#    container's configuration (`docker inspect` shows no value);
# 2. the deadline: timeout(1) sends SIGTERM at time_seconds and SIGKILL after the grace, to the
#    agent's whole process group, whether or not agentrt is still alive to do it.
ENTRYPOINT = (
    'f=/run/agentrt/env; if [ -f "$f" ]; then . "$f"; rm -f "$f"; fi; '
    'd=$1; g=$2; shift 2; '
    'if [ "$d" -gt 0 ] && command -v timeout >/dev/null 2>&1; then '
    'exec timeout -k "$g" -s TERM "$d" "$@"; fi; '
    'echo "agentrt: no timeout(1) in the image; only agentrt enforces the deadline" >&2; '
    'exec "$@"'
)
# An interactive session's (a TTY): timeout(1) must leave the agent in the terminal's
# foreground process group, or its first read of the TTY stops it (SIGTTIN). The agent's
# children are then not signalled by timeout at the deadline; agentrt's stop still reaches
# the whole container.
ENTRYPOINT_TTY = ENTRYPOINT.replace('exec timeout -k', 'exec timeout --foreground -k')
LOG_MAX_SIZE = "10m"
# gVisor's sandbox (sentry and gofer threads) lives in the container's pids cgroup: below
# about 100 pids it cannot even start, so the agent's own limit is granted on top of this.
RUNSC_PIDS_HEADROOM = 128


# What every container agentrt starts shares, sessions and harvests alike.
HARDENING: dict[str, Any] = {
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges:true"],
    "init": True,
    "stdin_open": False,
    "tty": False,
    "log_config": LogConfig(type="json-file", config={"max-size": LOG_MAX_SIZE, "max-file": "2"}),
}


@dataclass(frozen=True)
class ContainerPlan:
    """Everything that decides how a session's container is made."""

    session_id: str
    run_id: str
    image: str
    command: list[str]
    limits: ResourceLimits
    # The volume's mounts (workspace, database directory, object store), made by the
    # session's tree (runtime.backends.docker.trees) wherever the engine keeps it.
    mounts: tuple[Mount, ...]
    uid: int
    gid: int
    network: str = "none"
    runtime: str = "runc"
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    # The directory holding the secrets file, mounted read-write at /run/agentrt so the entry
    # point can delete the file once read; None: the task has no secrets.
    secrets_mount: Mount | None = None
    grace_seconds: int = 10
    # An interactive session: a TTY and an open stdin, for `agentrt attach`.
    tty: bool = False


def entry_command(plan: ContainerPlan) -> list[str]:
    """The container's command: the entry point wrapping the agent's own argv (unchanged)."""
    return ["sh", "-c", ENTRYPOINT_TTY if plan.tty else ENTRYPOINT, "agentrt-entry",
            str(plan.limits.time_seconds + max(1, plan.grace_seconds)),
            str(plan.grace_seconds), *plan.command]


def ended_at_deadline(exit_code: int | None, started: datetime | None,
                      finished: datetime | None, time_seconds: int) -> bool:
    """True when the engine's record says the container's own deadline ended it.

    Pure: the exit code timeout(1) gives at the deadline, and the engine's StartedAt/FinishedAt
    at least ``time_seconds`` apart (an agent cannot fake that without running that long).
    """
    if exit_code not in DEADLINE_EXIT_CODES or started is None or finished is None:
        return False
    return (finished - started).total_seconds() >= time_seconds - DEADLINE_SLACK_S


def tmpfs_mb(limits: ResourceLimits) -> int:
    """Size of the container's /tmp: a quarter of memory, between 16 and 512 MiB.

    tmpfs pages count against the memory cgroup too, so this only bounds /tmp on its own.
    """
    return max(16, min(512, limits.memory_mb // 4))


def container_spec(plan: ContainerPlan) -> dict[str, Any]:
    """The keyword arguments for ``client.containers.create`` that enforce ``plan``.

    Pure: no I/O. Memory and memory+swap are equal (no swap); ``cpu_percent`` becomes
    ``nano_cpus`` (100 % = one core); the root filesystem is read-only with a size-limited
    ``/tmp``; every capability is dropped; ``no-new-privileges``; the default seccomp profile;
    an unprivileged user; no Docker socket; capped logs; labelled with run, session and
    deadline. The command is :data:`ENTRYPOINT` around the agent's argv: it reads the secrets
    file (never the container's environment) and enforces ``time_seconds`` from inside.
    """
    limits = plan.limits
    if plan.uid == 0:
        raise SessionError("refusing to run an agent container as root (uid 0)")
    mounts = list(plan.mounts)
    if plan.secrets_mount is not None:
        mounts.append(plan.secrets_mount)
    labels = {**plan.labels, LABEL_SESSION: plan.session_id, LABEL_RUN: plan.run_id,
              LABEL_TIME_SECONDS: str(limits.time_seconds),
              LABEL_GRACE_SECONDS: str(plan.grace_seconds)}
    spec: dict[str, Any] = {
        **HARDENING,
        "image": plan.image,
        "command": entry_command(plan),
        "name": container_name(plan.session_id),
        "hostname": plan.session_id[:63],
        "working_dir": WORKSPACE,
        "user": f"{plan.uid}:{plan.gid}",
        "environment": {"HOME": "/tmp", "TMPDIR": "/tmp", **plan.env},
        "labels": labels,
        "mounts": mounts,
        "mem_limit": limits.memory_mb * 1024 * 1024,
        "memswap_limit": limits.memory_mb * 1024 * 1024,
        "nano_cpus": limits.cpu_percent * 10_000_000,
        "pids_limit": limits.pids + (RUNSC_PIDS_HEADROOM if plan.runtime == "runsc" else 0),
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={tmpfs_mb(limits)}m,mode=1777"},
        "network_mode": plan.network,
        "stop_signal": "SIGTERM",
        "detach": True,
    }
    if plan.tty:
        spec.update(tty=True, stdin_open=True)
    if plan.runtime != "runc":
        spec["runtime"] = plan.runtime
    return spec


class AgentRunner(Protocol):
    """What a session needs of its agent's container (or, on Swarm, its one-shot service)."""

    @property
    def id(self) -> str:
        """The engine's name for it."""

    def start(self) -> None:
        """Start the agent."""

    def inspect(self) -> dict[str, Any] | None:
        """The engine's record (``State``), or None when it is gone."""

    def stop(self, grace_seconds: int) -> None:
        """SIGTERM, then SIGKILL after the grace."""

    def kill(self) -> None:
        """SIGKILL now; quiet if already gone."""

    def remove(self) -> None:
        """Remove it; quiet if already gone."""

    def tail(self, lines: int) -> str:
        """The last lines of its output."""


class OutputStream:
    """A container's stdout and stderr as they are written, from an attach made before start.

    The engine hands each attached reader every byte, in order, and waits for a slow reader
    (its buffer is about 1 MB), unlike a follow of the json-file log, which falls behind a
    flood and loses what was rotated away meanwhile. The stream ends when the container stops.
    """

    def __init__(self, sock: Any, tty: bool = False) -> None:
        self._sock = sock
        self._tty = tty  # a TTY's output is one raw stream, not stdout/stderr frames

    def __iter__(self) -> Iterator[bytes]:
        from docker.utils.socket import frames_iter

        for _, data in frames_iter(self._sock, self._tty):
            yield bytes(data)

    def close(self) -> None:
        """Stop reading (the engine then drops this reader); a read blocked in another thread
        returns (shutting the socket down wakes it; closing alone would not)."""
        shut_down(self._sock)
        with contextlib.suppress(Exception):
            self._sock.close()


class _CreateOnly(ContainerCollection):  # type: ignore[misc]
    """``containers.create`` without reading the new container back: the SDK inspects it
    after creating it, one engine round trip per container that agentrt does not need."""

    def get(self, container_id: str) -> Container:
        return self.prepare_model({"Id": container_id})


def create_container(client: docker.DockerClient, spec: Mapping[str, Any]) -> Container:
    """Create (not start) a container from ``client.containers.create`` keyword arguments;
    the returned model knows only its id."""
    return _CreateOnly(client=client).create(**spec)


class AgentContainer:
    """One session's container on the engine; Docker and transport errors become EngineError."""

    def __init__(self, client: docker.DockerClient, container: Container,
                 tty: bool = False) -> None:
        self.client = client
        self.container = container
        self.tty = tty

    @property
    def id(self) -> str:
        """The container id."""
        return str(self.container.id)

    @classmethod
    def find(cls, client: docker.DockerClient, container_id: str) -> AgentContainer:
        """The container ``container_id``; EngineNotFoundError if it is gone."""
        with engine_errors(f"find container {container_id[:12]}"):
            return cls(client, client.containers.get(container_id))

    @classmethod
    def create(cls, client: docker.DockerClient, plan: ContainerPlan) -> AgentContainer:
        """Create (not start) the container for ``plan``."""
        try:
            with engine_errors(f"create the container of {plan.session_id}"):
                return cls(client, create_container(client, container_spec(plan)), plan.tty)
        except EngineError as exc:
            if isinstance(exc.__cause__, docker.errors.ImageNotFound):
                from runtime.engine.images import build_hint

                raise SessionError(
                    f"image {plan.image!r} not found: {build_hint(plan.image)}") from exc
            raise

    def start(self) -> None:
        """Start the container; on failure attach its last log lines to the error."""
        try:
            with engine_errors("start the container"):
                self.container.start()
        except EngineError as exc:
            raise SessionError(f"container failed to start: {exc}; logs: {self.tail(20)}") from exc

    def attach_output(self) -> OutputStream:
        """Attach to stdout and stderr; call before :meth:`start` so nothing is missed."""
        with engine_errors("attach to the container"):
            sock = self.client.api.attach_socket(
                self.id, params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 0})
            # A silent agent is not a dead engine: reading waits as long as the container runs.
            self.client.api._disable_socket_timeout(sock)
        return OutputStream(sock, self.tty)

    def inspect(self) -> dict[str, Any] | None:
        """The engine's view of the container, or None if it no longer exists."""
        with engine_errors("inspect the container"):
            try:
                return dict(self.client.api.inspect_container(self.id))
            except docker.errors.NotFound:
                return None

    def stop(self, grace_seconds: int) -> None:
        """SIGTERM, then SIGKILL after ``grace_seconds``; quiet if already gone."""
        with engine_errors("stop the container"), contextlib.suppress(docker.errors.NotFound):
            self.client.api.stop(self.id, timeout=grace_seconds)

    def kill(self) -> None:
        """SIGKILL now; quiet if already gone, stopped, or the engine is away."""
        with contextlib.suppress(EngineError), engine_errors("kill the container"), \
                contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            self.client.api.kill(self.id)

    def exec_output(self, command: list[str], user: str) -> bytes:
        """Run ``command`` in the running container as ``user``; its stdout. EngineError if
        the container is gone or refuses (a container that is stopping refuses exec)."""
        with engine_errors("read a live session"):
            try:
                api = self.client.api
                exec_id = api.exec_create(self.id, command, user=user, workdir="/",
                                          stdout=True, stderr=False)["Id"]
                out = api.exec_start(exec_id, demux=True)
            except docker.errors.NotFound as exc:
                raise EngineError("the session's container is gone") from exc
            except docker.errors.APIError as exc:
                raise EngineError(f"cannot exec in the session: {exc.explanation or exc}") \
                    from exc
        stdout = out[0] if isinstance(out, tuple) else out
        return bytes(stdout or b"")

    def logs(self, tail: int | str = "all") -> bytes:
        """The container's combined stdout and stderr (empty if it cannot be read)."""
        with contextlib.suppress(EngineError), engine_errors("read the logs"):
            return bytes(self.client.api.logs(self.id, stdout=True, stderr=True, tail=tail))
        return b""

    def tail(self, lines: int) -> str:
        """The last ``lines`` lines of output, decoded."""
        return self.logs(tail=lines).decode(errors="replace").strip()

    def remove(self) -> None:
        """Remove the container (forcefully); quiet if already gone."""
        with engine_errors("remove the container"), contextlib.suppress(docker.errors.NotFound):
            try:
                self.client.api.remove_container(self.id, force=True, v=True)
            except docker.errors.APIError as exc:
                if "already in progress" not in str(exc):
                    raise
