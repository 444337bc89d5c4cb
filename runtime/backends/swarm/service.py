"""A session as a one-shot Swarm service, and one-shot helper services on a chosen node.

:func:`session_service_spec` is the Swarm twin of :func:`runtime.engine.container.container_spec`
(pure, keyword arguments for ``client.services.create``): one replica, never restarted,
reservations equal to limits, pinned to the node :func:`runtime.backends.swarm.nodes.place` chose.
:func:`run_one_shot` runs a helper service to its end and returns its exit code and output.

**What a Swarm service cannot express on Docker API 1.41** (Engine 20.10), compared with the
local container spec; measured on a 20.10 Swarm where noted:

* ``no-new-privileges``: a service has no security options (``ContainerSpec.Privileges`` holds
  only credential spec and SELinux context); later API versions added ``NoNewPrivileges``.
  Every capability is still dropped (``CapabilityDrop: ALL``, supported since 1.41, measured: all
  five capability sets are empty) and the root filesystem is read-only, but a set-uid binary in
  the image can still change its uid.
* **swap**: no ``MemorySwap``: the engine gives a service container memory+swap = twice its
  memory limit (measured ``MemorySwap`` = 2 × ``Memory``), so where the node has swap, a session
  may use as much swap as memory before its OOM kill.
* **no network**: a service cannot join the ``none`` network ("could not find the corresponding
  predefined swarm network: network none not found"); one with no network gets the engine's
  *default* network mode, which is the ``docker0`` bridge on an ordinary engine. Only on a node
  whose dockerd runs with ``--bridge=none`` does the task have nothing but ``lo`` (measured).
  The session's entry point therefore first refuses to run when any interface but ``lo``
  exists (:data:`NETWORK_GUARD`, exit :data:`NETWORK_GUARD_EXIT`): fail closed.
* ``/tmp``: a tmpfs mount takes a size and a mode only; the engine mounts it
  ``nosuid,nodev,noexec`` (measured), so unlike the local spec nothing runs from ``/tmp``.
* **runtime**: no ``--runtime``; a service runs under the node's default runtime, so gVisor
  (``runtime = "runsc"``) is refused.
* **devices and device cgroup rules**: none, which is why node-side loop volumes go through
  the node's own engine (:mod:`runtime.backends.swarm.volumes`).
* **attach before start**: a service's output is only read back through ``service logs``
  (the Swarm log broker), never streamed from the first byte as ``attach_output`` does.
* the secrets file (a host directory bound at ``/run/agentrt``): the host is not the node;
  a plan with secrets gets a Docker secret instead (:mod:`runtime.backends.swarm.secrets`,
  added by :func:`runtime.backends.swarm.agent.swarm_agent_spec`), never a bind.

What it does express: memory and CPU limits *and* reservations, the pids limit
(``Resources.Limits.Pids``, API 1.41; docker-py has no parameter for it, so the raw key is set;
measured: ``pids.max`` of the task's cgroup), ``CapabilityDrop``, user, environment, labels on
the service and its container, binds with propagation, ``init``, read-only root filesystem,
stop signal and grace, log driver options, and placement by node id.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import Mount, Resources, RestartPolicy, ServiceMode

from runtime.engine.container import (
    ENTRYPOINT,
    LOG_MAX_SIZE,
    WORKSPACE,
    ContainerPlan,
    tmpfs_mb,
)
from runtime.engine.discovery import engine_errors
from runtime.engine.engine_streams import read_within, service_logs
from runtime.engine.labels import (
    LABEL_GRACE_SECONDS,
    LABEL_RUN,
    LABEL_SESSION,
    LABEL_TIME_SECONDS,
)
from runtime.errors import ConfigError, EngineError, SessionError, WaitTimeoutError
from runtime.waiting import wait_until

#: The first API version whose services take ``CapabilityDrop`` and ``Resources.Limits.Pids``.
MIN_API_VERSION = (1, 41)
TERMINAL_STATES = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})
#: Exit code of the entry point when the task has a network interface besides ``lo``.
NETWORK_GUARD_EXIT = 97
NETWORK_GUARD = (
    'for i in /sys/class/net/*; do [ "${i##*/}" = lo ] || { '
    'echo "agentrt: this Swarm node gives services a network (${i##*/}); a session must have '
    'none: run the node\'s dockerd with --bridge=none" >&2; exit 97; }; done; '
)
ONE_SHOT_TIMEOUT_S = 120
#: The longest a read of a helper's output may take (a paused node's logs never come).
OUTPUT_DEADLINE_S = 20.0
NODE_CHECK_S = 2.0
#: A one-shot's task is polled every FAST_POLL_S for its first FAST_FOR_S seconds (most helpers
#: end within two), then every POLL_S: a fixed 250 ms poll cost about 125 ms per helper.
FAST_POLL_S = 0.1
FAST_FOR_S = 5.0
POLL_S = 0.25


def poll_delay(elapsed: float) -> float:
    """Pure: how long to wait before the next poll of a task polled for ``elapsed`` seconds."""
    return FAST_POLL_S if elapsed < FAST_FOR_S else POLL_S


def parse_api_version(version: str) -> tuple[int, int]:
    """``"1.41"`` → (1, 41); EngineError for anything else."""
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError as exc:
        raise EngineError(f"unreadable Docker API version {version!r}") from exc


def require_api(api_version: str) -> None:
    """EngineError unless services on this API version can drop capabilities and limit pids."""
    if parse_api_version(api_version) < MIN_API_VERSION:
        need = ".".join(map(str, MIN_API_VERSION))
        raise EngineError(
            f"the Swarm manager speaks Docker API {api_version}: a service's pids limit and "
            f"dropped capabilities need API {need} (Docker Engine 20.10) or later, and agentrt "
            "will not run a session without them")


def service_name(prefix: str, session_id: str) -> str:
    """A service name (at most 63 characters) unique to this call."""
    return f"{prefix}-{session_id}"[:50].rstrip("-.") + "-" + secrets.token_hex(4)


def session_service_spec(plan: ContainerPlan, node_id: str,
                         api_version: str) -> dict[str, Any]:
    """Keyword arguments for ``client.services.create`` running ``plan`` once on ``node_id``.

    Pure. The plan must carry its engine-side volume's mounts (``plan.mounts``, made
    on that node by :func:`runtime.backends.swarm.volumes.create_node_volume`; its
    ``secrets_mount`` is ignored: the Docker secret is added by
    :func:`runtime.backends.swarm.agent.swarm_agent_spec`). Refused: a runtime other than
    runc, a network other than none (see the module docstring), and an API older than 1.41.
    """
    require_api(api_version)
    limits = plan.limits
    if plan.uid == 0:
        raise SessionError("refusing to run an agent container as root (uid 0)")
    if not node_id:
        raise SessionError(f"session {plan.session_id} has no node to run on")
    if not plan.mounts:
        raise SessionError(f"session {plan.session_id}: a Swarm session needs its volume made "
                           "on its node (mounts); host paths mean nothing there")
    if plan.runtime != "runc":
        raise ConfigError(f"runtime {plan.runtime!r}: a Swarm service runs under its node's "
                          "default runtime; Docker API 1.41 cannot choose another")
    if plan.network != "none":
        raise ConfigError(f"network {plan.network!r}: sessions on Docker Swarm have no network")
    labels = {**plan.labels, LABEL_SESSION: plan.session_id, LABEL_RUN: plan.run_id,
              LABEL_TIME_SECONDS: str(limits.time_seconds),
              LABEL_GRACE_SECONDS: str(plan.grace_seconds)}
    memory = limits.memory_mb * 1024 * 1024
    cpus = limits.cpu_percent * 10_000_000
    resources = Resources(mem_limit=memory, mem_reservation=memory,
                          cpu_limit=cpus, cpu_reservation=cpus)
    resources["Limits"]["Pids"] = limits.pids  # no docker-py parameter for it (7.2.0)
    deadline = str(limits.time_seconds + max(1, plan.grace_seconds))
    return {
        "image": plan.image,
        "command": ["sh", "-c", NETWORK_GUARD + ENTRYPOINT, "agentrt-entry", deadline,
                    str(plan.grace_seconds), *plan.command],
        "name": service_name("agentrt", plan.session_id),
        "hostname": plan.session_id[:63],
        "workdir": WORKSPACE,
        "user": f"{plan.uid}:{plan.gid}",
        "env": {"HOME": "/tmp", "TMPDIR": "/tmp", **plan.env},
        **one_shot_on(node_id, labels, resources),
        "mounts": [*plan.mounts,
                   Mount("/tmp", None, type="tmpfs", tmpfs_size=tmpfs_mb(limits) * 1024 * 1024,
                         tmpfs_mode=0o1777)],
        "tty": False,
        "open_stdin": False,
        "stop_signal": "SIGTERM",
        "stop_grace_period": max(1, plan.grace_seconds) * 1_000_000_000,
        "log_driver": "json-file",
        "log_driver_options": {"max-size": LOG_MAX_SIZE, "max-file": "2"},
    }


def one_shot_on(node_id: str, labels: Mapping[str, str],
                resources: Resources) -> dict[str, Any]:
    """Pure: what every service agentrt makes shares: one replica, never restarted, pinned to
    ``node_id``, labelled (service and container), every capability dropped, init, read-only
    root, ``resources``."""
    return {
        "labels": dict(labels),
        "container_labels": dict(labels),
        "mode": ServiceMode("replicated", replicas=1),
        "restart_policy": RestartPolicy(condition="none"),
        "resources": resources,
        "constraints": [f"node.id=={node_id}"],
        "cap_drop": ["ALL"],
        "init": True,
        "read_only": True,
    }


def helper_service_spec(*, image: str, command: Sequence[str], node_id: str,
                        labels: Mapping[str, str], mounts: Sequence[Mount] = (),
                        user: str = "0:0", memory_bytes: int = 128 * 1024 * 1024,
                        pids: int = 64, name_prefix: str = "agentrt-helper",
                        session_id: str = "helper") -> dict[str, Any]:
    """Keyword arguments for ``client.services.create`` of a one-shot helper on ``node_id``:
    one replica, never restarted, all capabilities dropped, read-only root, no network, its
    memory and pids limited (and the memory reserved, so it waits rather than overcommits)."""
    resources = Resources(mem_limit=memory_bytes, mem_reservation=memory_bytes)
    resources["Limits"]["Pids"] = pids
    return {
        "image": image,
        "command": list(command),
        "name": service_name(name_prefix, session_id),
        "user": user,
        "workdir": "/",
        **one_shot_on(node_id, labels, resources),
        "mounts": list(mounts),
    }


def task_outcome(task: Mapping[str, Any]) -> tuple[str, int | None, str]:
    """Pure: (state, exit code or None, the engine's error or message) of a task document."""
    status = task.get("Status") or {}
    container = status.get("ContainerStatus") or {}
    code = container.get("ExitCode")
    state = str(status.get("State", ""))
    detail = str(status.get("Err") or status.get("Message") or "")
    started = bool(container.get("ContainerID"))
    if state == "complete":
        return state, 0, detail
    # A task that failed before its container ran reports exit code 0 or none: no exit code.
    if state == "failed" and started and isinstance(code, int) and code != 0:
        return state, code, detail
    return state, None, detail


def pinned_node(spec: Mapping[str, Any]) -> str:
    """Pure: the node id a spec's ``node.id==`` constraint pins it to ("" if none)."""
    for constraint in spec.get("constraints") or ():
        name, _, value = str(constraint).partition("==")
        if name.strip() == "node.id":
            return value.strip()
    return ""


def node_status(client: docker.DockerClient, node_id: str) -> str:
    """The node's state as the manager sees it (ready, down, ...; "" when it cannot say)."""
    try:
        return str((client.nodes.get(node_id).attrs.get("Status") or {}).get("State", ""))
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        return ""


class OneShot:
    """A one-shot helper service under way: created at once, waited for (to its end, or until
    its output says something), removed."""

    def __init__(self, client: docker.DockerClient, spec: Mapping[str, Any]) -> None:
        self.client = client
        self.what = f"run the helper service {spec.get('name', '')}"
        self.node_id = pinned_node(spec)
        with engine_errors(self.what):
            self.service: Any = client.services.create(**dict(spec))

    def output(self) -> str:
        """What the task wrote so far (stdout and stderr). EngineError when it did not come
        within :data:`OUTPUT_DEADLINE_S` (the manager waits for a paused node's logs)."""
        stream = service_logs(self.client, self.service.id, follow=False,
                              request_timeout=OUTPUT_DEADLINE_S)
        logs, complete = read_within(stream, OUTPUT_DEADLINE_S)
        if not complete:
            raise EngineError(f"could not {self.what}: its output did not come within "
                              f"{OUTPUT_DEADLINE_S:.0f} s ({stream.error or 'no answer'}; is "
                              "its node paused or unreachable?)")
        return logs.decode(errors="replace")

    def wait(self, timeout: float = ONE_SHOT_TIMEOUT_S,
             abort: Callable[[], str | None] | None = None,
             until: str | None = None) -> tuple[int | None, str]:
        """(exit code, output) once the task ended; (None, output so far) as soon as its
        output holds ``until`` while it still runs. EngineError if the task never ran
        (rejected, e.g. a missing image), did not end within ``timeout`` seconds, its node
        was lost, or ``abort`` (asked at every poll) gave a reason to stop waiting."""
        what = self.what
        state, code, detail = "new", None, ""
        next_node_check = time.monotonic() + NODE_CHECK_S

        def settled() -> tuple[bool, str] | None:
            """(True, "") once the task ended; (False, output so far) once the output holds
            ``until``; None to poll again."""
            nonlocal state, code, detail, next_node_check
            tasks = self.service.tasks()
            if tasks:
                task = max(tasks, key=lambda t: str(t.get("CreatedAt", "")))
                state, code, detail = task_outcome(task)
                if state in TERMINAL_STATES:
                    return True, ""
                if until is not None and state == "running":
                    text = self.output()
                    if until in text:
                        return False, text
            reason = abort() if abort is not None else None
            if reason:
                raise EngineError(f"could not {what}: {reason}")
            if self.node_id and time.monotonic() > next_node_check:
                next_node_check = time.monotonic() + NODE_CHECK_S
                node_state = node_status(self.client, self.node_id)
                if node_state not in ("ready", ""):
                    raise EngineError(f"could not {what}: node {self.node_id} is "
                                      f"{node_state} (node lost)")
            return None

        with engine_errors(what):
            try:
                outcome = wait_until(settled, timeout=timeout, what=what, pause=poll_delay)
            except WaitTimeoutError:
                raise EngineError(f"could not {what}: its task is still {state} after "
                                  f"{timeout:.0f} s{': ' + detail if detail else ''}") from None
            ended, text = outcome
            if not ended:
                return None, text
            if code is None:
                raise EngineError(f"could not {what}: its task ended {state}: {detail}")
        return code, self.output()

    def remove(self) -> None:
        """Remove the service (its task is killed if it still runs); quiet."""
        with contextlib.suppress(docker.errors.DockerException,
                                 requests.exceptions.RequestException):
            self.service.remove()


def run_one_shot(client: docker.DockerClient, spec: Mapping[str, Any],
                 timeout: float = ONE_SHOT_TIMEOUT_S,
                 abort: Callable[[], str | None] | None = None) -> tuple[int, str]:
    """Create the one-shot service ``spec``, wait for its task to end, read its output,
    remove it: (exit code, stdout and stderr). EngineError if the task never ran (rejected,
    e.g. a missing image), did not end within ``timeout`` seconds, or ``abort`` (asked at
    every poll) gave a reason to stop waiting; it is removed in every case."""
    one_shot = OneShot(client, spec)
    try:
        code, output = one_shot.wait(timeout, abort)
    finally:
        one_shot.remove()
    if code is None:  # not asked to stop early: cannot be
        raise EngineError(f"could not {one_shot.what}: it did not end")
    return code, output
