"""A session's agent as a one-shot Swarm service: start, watch, stop, read back.

The Swarm twin of :class:`runtime.engine.container.AgentContainer`. The manager's API reaches
no container on a worker, so what the local engine tells about a container (its state, exit
code, OOM kill, cgroup numbers) comes from two places here:

* the service's task (``service.tasks()``): its state and exit code, polled;
* the session's own entry point (:data:`SWARM_ENTRYPOINT`): after the agent ends it reads the
  container's cgroup (OOM kills, peak memory, CPU time; cgroup v1 and v2) and the volume's
  free space, and writes one ``agentrt-stats`` line to stderr, read back from the service's
  logs. The line is written after the agent's own output, by agentrt's wrapper; an agent can
  print a look-alike earlier, so the *last* line counts, and the worst a forgery does is
  mislabel that session's own ending.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.types import ServiceMode

from runtime.backends.swarm.secrets import (
    SessionSecret,
    remove_session_secret,
    secret_reference,
    with_secret,
)
from runtime.backends.swarm.service import (
    TERMINAL_STATES,
    session_service_spec,
    task_outcome,
)
from runtime.engine.container import ENTRYPOINT, ContainerPlan
from runtime.engine.discovery import engine_errors
from runtime.engine.engine_streams import EngineStream, read_within, service_logs
from runtime.errors import EngineError, SessionError

# The entry point on Swarm: the local one's secrets and deadline, but the agent runs as a
# child (SIGTERM from the engine is passed on to it) so the wrapper can report afterwards.
SWARM_ENTRYPOINT = (
    'd=$1; g=$2; shift 2; '
    'timeout -k "$g" -s TERM "$d" "$@" & p=$!; '
    "trap 'kill -TERM $p 2>/dev/null' TERM; "
    'rc=0; wait $p || rc=$?; '
    'while kill -0 $p 2>/dev/null; do rc=0; wait $p || rc=$?; done; '
    'c=/sys/fs/cgroup; '
    "oom=$(cat $c/memory/memory.oom_control $c/memory.events 2>/dev/null "
    "| awk '$1==\"oom_kill\"{print $2; exit}'); "
    'peak=$(cat $c/memory/memory.max_usage_in_bytes $c/memory.peak 2>/dev/null | head -n1); '
    "cpu=$(cat $c/cpuacct/cpuacct.usage 2>/dev/null "
    "|| awk '$1==\"usage_usec\"{printf \"%d000\", $2}' $c/cpu.stat 2>/dev/null); "
    "df=$(df -Pk /workspace 2>/dev/null | awk 'NR==2{print $3\" \"$4}'); "
    'echo "agentrt-stats rc=$rc oom=${oom:-} peak=${peak:-} cpu_ns=${cpu:-} '
    'used_kb=${df% *} free_kb=${df#* }" >&2; '
    'exit $rc'
)
#: The longest a read of a service's logs may take (a paused node's logs never come).
LOGS_DEADLINE_S = 20.0
_STATS = re.compile(r"^agentrt-stats rc=(?P<rc>\d*) oom=(?P<oom>\d*) peak=(?P<peak>\d*) "
                    r"cpu_ns=(?P<cpu>\d*) used_kb=(?P<used>\d*) free_kb=(?P<free>\d*)\s*$")


@dataclass(frozen=True)
class EndStats:
    """What the entry point measured when the agent ended (None: not readable there)."""

    exit_code: int | None
    oom_kills: int | None
    peak_memory_bytes: int | None
    cpu_seconds: float | None
    used_bytes: int | None
    free_bytes: int | None


def parse_end_stats(output: str) -> EndStats | None:
    """Pure: the last ``agentrt-stats`` line of ``output``, or None."""
    found = None
    for line in output.splitlines():
        match = _STATS.match(line.strip())
        if match:
            found = match

    def num(name: str) -> int | None:
        text = found.group(name) if found else ""
        return int(text) if text else None

    if found is None:
        return None
    cpu, used, free = num("cpu"), num("used"), num("free")
    return EndStats(exit_code=num("rc"), oom_kills=num("oom"), peak_memory_bytes=num("peak"),
                    cpu_seconds=cpu / 1e9 if cpu is not None else None,
                    used_bytes=used * 1024 if used is not None else None,
                    free_bytes=free * 1024 if free is not None else None)


def swarm_agent_spec(plan: ContainerPlan, node_id: str, api_version: str,
                     secret: SessionSecret | None = None) -> dict[str, Any]:
    """Pure: the session's service (:func:`session_service_spec`) with
    :data:`SWARM_ENTRYPOINT` in place of one engine's entry point, and, given ``secret``, a
    reference to it and its reader (:func:`with_secret`): never its value."""
    spec = session_service_spec(plan, node_id, api_version)
    if secret is not None:
        spec = with_secret(spec, secret_reference(secret, plan.uid, plan.gid))
    command = list(spec["command"])
    # The guard (and the secret's reader) then this entry point around the agent's argv.
    command[2] = command[2].replace(ENTRYPOINT, SWARM_ENTRYPOINT, 1)
    return {**spec, "command": command}


@dataclass(frozen=True)
class TaskView:
    """The session's task as the manager sees it."""

    state: str
    exit_code: int | None
    detail: str
    node_id: str

    @property
    def ended(self) -> bool:
        """The task reached a terminal state."""
        return self.state in TERMINAL_STATES


class SwarmAgent:
    """A session's agent as a one-shot service on its node; errors become EngineError."""

    def __init__(self, client: docker.DockerClient, plan: ContainerPlan, node_id: str,
                 api_version: str, secret: SessionSecret | None = None) -> None:
        self.client = client
        self.plan = plan
        self.node_id = node_id
        #: The session's Docker secret: referred to by the spec, removed after the service.
        self.secret = secret
        self.spec = swarm_agent_spec(plan, node_id, api_version, secret)
        self._service: Any = None

    @property
    def id(self) -> str:
        """The service's name (unique to this session)."""
        return str(self.spec["name"])

    def start(self) -> None:
        """Create the service: the scheduler starts its one task on the chosen node."""
        try:
            with engine_errors(f"create the service of {self.plan.session_id}"):
                self._service = self.client.services.create(**self.spec)
        except EngineError as exc:
            raise SessionError(f"the session's service could not be created: {exc}") from exc

    def task(self) -> TaskView | None:
        """The newest task of the service (None before it has one, or when it is gone)."""
        if self._service is None:
            return None
        with engine_errors("read the session's task"):
            try:
                tasks = self._service.tasks()
            except docker.errors.NotFound:
                return None
        if not tasks:
            return None
        task = max(tasks, key=lambda t: str(t.get("CreatedAt", "")))
        state, code, detail = task_outcome(task)
        return TaskView(state, code, detail, str(task.get("NodeID") or ""))

    def inspect(self) -> dict[str, Any] | None:
        """A container-like record (``State.Running``) for code shared with one engine."""
        view = self.task()
        if view is None:
            return None
        return {"State": {"Running": view.state in ("running", "starting", "preparing"),
                          "ExitCode": view.exit_code}}

    def stop(self, grace_seconds: int) -> None:
        """Scale the service to zero: SIGTERM to the entry point (passed on to the agent),
        SIGKILL after the service's grace. Its task and logs stay readable."""
        if self._service is None:
            return
        with engine_errors("stop the session's service"), \
                contextlib.suppress(docker.errors.NotFound):
            self._service.update(mode=ServiceMode("replicated", replicas=0))

    def kill(self) -> None:
        """Remove the service now (its task is killed); quiet if already gone."""
        with contextlib.suppress(EngineError):
            self.remove()

    def remove(self) -> None:
        """Remove the service, then the session's secret (the manager frees it once the
        service is gone); quiet if already gone. A secret that cannot be removed is left to
        ``agentrt gc``."""
        if self._service is not None:
            with engine_errors("remove the session's service"), \
                    contextlib.suppress(docker.errors.NotFound):
                self._service.remove()
        secret, self.secret = self.secret, None
        if secret is not None:
            with contextlib.suppress(EngineError):
                remove_session_secret(self.client, secret.id)

    def follow_logs(self) -> EngineStream | None:
        """The service's output as it arrives (None before it exists). The stream outlives
        the task, and a paused node's never ends: the reader closes it. EngineError."""
        if self._service is None:
            return None
        return service_logs(self.client, self._service.id, follow=True,
                            request_timeout=LOGS_DEADLINE_S)

    def logs(self, tail: int | str = "all") -> bytes:
        """The service's combined output so far (empty if unreadable); what came within
        :data:`LOGS_DEADLINE_S` (the manager waits for a paused node's logs for good)."""
        if self._service is None:
            return b""
        with contextlib.suppress(EngineError):
            stream = service_logs(self.client, self._service.id, follow=False, tail=tail,
                                  request_timeout=LOGS_DEADLINE_S)
            return read_within(stream, LOGS_DEADLINE_S)[0]
        return b""

    def tail(self, lines: int) -> str:
        """The last ``lines`` lines of output, decoded."""
        return self.logs(tail=lines).decode(errors="replace").strip()
