"""Per-session services (``[[run.services]]``): containers next to one session only.

Each session with services gets its own *internal* network ``agentrt-svc-<session>`` (no
route out); its services join it under their ``name`` as network alias, and the session's
container joins it too. Sessions of one run never share it, so a session reaches its own
services and no other session's. With ``network = "none"`` the session's container is on this
network alone; with ``bridge`` or ``allowlist`` it is connected to it as well.

Services are hardened like agentrt's own helpers (capabilities dropped but those an image's
entry point commonly needs to switch user, no-new-privileges, memory, CPU and pids limits,
capped logs) and labelled ``agentrt.role=service`` with the run, the session and the owner,
so the session removes them when it ends and ``agentrt gc`` finds leftovers of dead runs.
A service that exits, turns unhealthy or is not healthy within its healthcheck's
``interval × (retries + 2)`` seconds fails the session, naming the service.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import docker
import docker.errors
from docker.types import LogConfig

from runtime.engine.discovery import engine_errors
from runtime.engine.labels import LABEL_ROLE, LABEL_RUN
from runtime.engine.networks import create_internal_network
from runtime.environments import Service
from runtime.errors import EngineError, SessionError

ROLE_SERVICE = "service"
LABEL_SERVICE = "agentrt.service"
LABEL_SERVICE_SESSION = "agentrt.service.session"
SERVICE_PIDS = 512
NO_HEALTHCHECK_WAIT_S = 10
SERVICE_CAPS = ["CHOWN", "SETUID", "SETGID", "DAC_OVERRIDE", "FOWNER"]


def _safe(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", text)[:100]


def services_network_name(session_id: str) -> str:
    """A session's private network for its services."""
    return f"agentrt-svc-{_safe(session_id)}"


def service_spec(service: Service, session_id: str, network: str,
                 labels: Mapping[str, str]) -> dict[str, object]:
    """The keyword arguments of ``client.containers.create`` for ``service``. Pure."""
    spec: dict[str, object] = {
        "image": service.image,
        "name": f"agentrt-svc-{_safe(session_id)}-{service.name}",
        "hostname": service.name,
        "environment": dict(service.env),
        "labels": {**labels, LABEL_ROLE: ROLE_SERVICE, LABEL_SERVICE: service.name,
                   LABEL_SERVICE_SESSION: session_id},
        "network": network,
        "cap_drop": ["ALL"], "cap_add": SERVICE_CAPS,
        "security_opt": ["no-new-privileges:true"], "init": True,
        "mem_limit": service.memory_mb * 1024 * 1024,
        "memswap_limit": service.memory_mb * 1024 * 1024,
        "nano_cpus": service.cpu_percent * 10_000_000, "pids_limit": SERVICE_PIDS,
        "log_config": LogConfig(type="json-file", config={"max-size": "10m", "max-file": "2"}),
        "detach": True,
    }
    if service.command is not None:
        spec["command"] = list(service.command)
    if service.healthcheck is not None:
        interval_ns = int(service.healthcheck.interval * 1_000_000_000)
        spec["healthcheck"] = {"test": ["CMD", *service.healthcheck.cmd],
                               "interval": interval_ns, "timeout": max(interval_ns, 10**9),
                               "retries": service.healthcheck.retries}
    return spec


def wait_seconds(service: Service) -> float:
    """How long ``service`` has to become healthy."""
    check = service.healthcheck
    if check is None:
        return NO_HEALTHCHECK_WAIT_S
    return check.interval * (check.retries + 2) + 5


@dataclass
class SessionServices:
    """The services of one session and their network."""

    client: docker.DockerClient
    session_id: str
    network: str
    containers: dict[str, str] = field(default_factory=dict)  # name -> container id

    def connect(self, container_id: str) -> None:
        """Attach the session's (created, not started) container to the services network."""
        with engine_errors(f"connect the session to {self.network}"):
            self.client.networks.get(self.network).connect(container_id)

    def remove(self) -> None:
        """Remove the services and their network; quiet for what is already gone."""
        remove_services(self.client, session_id=self.session_id)


def start_services(client: docker.DockerClient, services: Sequence[Service], session_id: str,
                   labels: Mapping[str, str]) -> SessionServices:
    """Make the session's network, start its services, wait until each is healthy.

    SessionError naming the service when one exits, turns unhealthy or is not healthy in
    time; everything made is removed first.
    """
    name = services_network_name(session_id)
    all_labels = {**labels, LABEL_ROLE: ROLE_SERVICE, LABEL_SERVICE_SESSION: session_id}
    made = SessionServices(client, session_id, name)
    try:
        with engine_errors(f"create network {name}"):
            create_internal_network(client, name, all_labels)
        for service in services:
            spec = service_spec(service, session_id, name, labels)
            with engine_errors(f"start service {service.name}"):
                try:
                    container = client.containers.create(**spec)
                except docker.errors.ImageNotFound:
                    raise SessionError(f"service {service.name!r}: image {service.image!r} "
                                       "not found locally") from None
                made.containers[service.name] = str(container.id)
                # The alias is the service's name on this network (the create above joined
                # it without one): reconnect with it before the start.
                network = client.networks.get(name)
                network.disconnect(container)
                network.connect(container, aliases=[service.name])
                container.start()
        for service in services:
            _wait_healthy(client, service, made.containers[service.name])
    except BaseException:
        with contextlib.suppress(EngineError):
            made.remove()
        raise
    return made


def _wait_healthy(client: docker.DockerClient, service: Service, container_id: str) -> None:
    deadline = time.monotonic() + wait_seconds(service)
    while True:
        with engine_errors(f"inspect service {service.name}"):
            state = client.api.inspect_container(container_id).get("State", {})
        health = (state.get("Health") or {}).get("Status")
        if not state.get("Running"):
            raise SessionError(f"service {service.name!r} never became healthy: it exited "
                               f"with code {state.get('ExitCode')}: "
                               f"{_last_lines(client, container_id)}")
        if service.healthcheck is None or health == "healthy":
            return
        if health == "unhealthy" or time.monotonic() > deadline:
            why = ("its healthcheck failed "
                   f"{service.healthcheck.retries} times in a row" if health == "unhealthy"
                   else f"not healthy after {wait_seconds(service):.0f}s")
            raise SessionError(f"service {service.name!r} never became healthy ({why})")
        time.sleep(min(0.2, service.healthcheck.interval))


def _last_lines(client: docker.DockerClient, container_id: str) -> str:
    with contextlib.suppress(docker.errors.DockerException):
        return bytes(client.api.logs(container_id, tail=5)).decode(errors="replace").strip()
    return ""


def remove_services(client: docker.DockerClient, *, session_id: str | None = None,
                    run_id: str | None = None) -> list[str]:
    """Remove the services (and networks) of a session or of a whole run; return the
    removed containers' names. Found by label only."""
    filters = [f"{LABEL_ROLE}={ROLE_SERVICE}"]
    if session_id is not None:
        filters.append(f"{LABEL_SERVICE_SESSION}={session_id}")
    if run_id is not None:
        filters.append(f"{LABEL_RUN}={run_id}")
    removed: list[str] = []
    with engine_errors("remove services"):
        for container in client.containers.list(all=True, filters={"label": filters}):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
            removed.append(str(container.name))
        for network in client.networks.list(filters={"label": filters}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                network.reload()
                for attached in (network.attrs.get("Containers") or {}):
                    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                        network.disconnect(attached, force=True)
                network.remove()
    return removed
