"""The egress proxy of ``network = "allowlist"``: a run's proxies and its sessions' networks.

A session on the allowlist sits alone on its own *internal* Docker network (no route out,
``internal=True``), ``agentrt-egress-<session>``; the only other member is the run's egress
proxy, joined under the alias ``agentrt-egress``. Sessions therefore cannot reach each other
(no shared network) nor anything but the proxy. The proxy (``agentrt/egress``, Debian's
tinyproxy, ``images/egress``) forwards HTTP and CONNECT only to the hosts and ports the
policy allows (:mod:`runtime.egress_rules`) and answers everything else with 403 before it
resolves or contacts anything. It reaches the outside through a per-run bridge network
(``agentrt-egress-<run>``) and joins each of the policy's ``egress_networks``, so a private
model server is reached by its name there.

One proxy serves every session with the same policy (allow list and networks); a run whose
tasks differ gets one proxy per policy. Proxies and networks carry ``agentrt.run=<run>`` and
``agentrt.role=egress``: :meth:`RunEgress.close` removes them at the end of the run and
``agentrt gc`` (:func:`remove_run_egress`) after a run that died.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import docker
import docker.errors
from docker.types import LogConfig

from runtime.egress_rules import (
    PROXY_ALIAS,
    PROXY_PORT,
    EgressTarget,
    filter_rules,
    parse_targets,
    policy_key,
    proxy_config,
    proxy_env,
)
from runtime.engine.discovery import engine_errors
from runtime.engine.labels import LABEL_ROLE, LABEL_RUN, LABEL_SESSION
from runtime.engine.networks import create_internal_network
from runtime.errors import ConfigError, EngineError, WaitTimeoutError
from runtime.waiting import wait_until

IMAGE_NAME = "egress"
IMAGE = "agentrt/egress:latest"
ROLE_EGRESS = "egress"
PROXY_MEMORY = 256 * 1024 * 1024
PROXY_PIDS = 256
#: The proxy's entry point with its log passed through ``sed``: a request URL's query string
#: (where a token in a plain-HTTP URL travels) is cut before the line reaches the container's
#: log, for requests let through and refused alike.
PROXY_COMMAND = ["sh", "-c",
                 "agentrt-egress 2>&1 | sed -u -E 's/[?][^ \"]*/?[query removed]/g'"]
READY_TIMEOUT_S = 15
_PROBE = f"import socket; socket.create_connection(('127.0.0.1', {PROXY_PORT}), timeout=1)"


def _safe(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", text)[:100]


def outbound_network_name(run_id: str) -> str:
    """The run's bridge network through which its proxies reach the outside."""
    return f"agentrt-egress-{_safe(run_id)}"


def session_network_name(session_id: str) -> str:
    """A session's private internal network (it and the proxy, nothing else)."""
    return f"agentrt-egress-s-{_safe(session_id)}"


def check_networks(client: docker.DockerClient, names: Iterable[str], where: str) -> None:
    """ConfigError naming ``where`` (e.g. ``"[run] field egress_networks"``) for a network
    that does not exist on the engine."""
    for name in names:
        with engine_errors(f"look up network {name}"):
            try:
                client.networks.get(name)
            except docker.errors.NotFound:
                raise ConfigError(f"{where}: Docker network {name!r} does not exist "
                                  "(create it first, e.g. `docker network create "
                                  f"{name}`)") from None


@dataclass
class _Proxy:
    container_id: str
    targets: tuple[EgressTarget, ...]


@dataclass
class _SessionLink:
    network: str
    proxy_id: str
    owns_network: bool


class RunEgress:
    """The egress proxies of one run, and the networks that tie its sessions to them.

    Thread-safe: sessions of a run are prepared concurrently. ``labels`` are added to what it
    makes (the coordinator passes the repository and owner labels).
    """

    def __init__(self, client: docker.DockerClient, run_id: str,
                 labels: Mapping[str, str] | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self.labels = {**(labels or {}), LABEL_RUN: run_id, LABEL_ROLE: ROLE_EGRESS}
        self._lock = threading.Lock()
        self._proxies: dict[str, _Proxy] = {}
        self._sessions: dict[str, _SessionLink] = {}
        self._outbound: str | None = None

    def open_session(self, session_id: str, allow: Iterable[str], networks: Iterable[str],
                     join: str | None = None) -> tuple[str, dict[str, str]]:
        """Put ``session_id`` behind the proxy of its policy; return (its network, its env).

        ``join``: an internal network the session already has alone (its shared-database
        network), which the proxy joins instead of a new one being made.
        """
        targets = parse_targets(allow)
        proxy = self._proxy(targets, tuple(sorted(set(networks))))
        name = join or session_network_name(session_id)
        with engine_errors(f"connect the egress proxy to {name}"):
            if join is None:
                create_internal_network(self.client, name,
                                        {**self.labels, LABEL_SESSION: session_id})
            self._sessions[session_id] = _SessionLink(name, proxy.container_id, join is None)
            self.client.networks.get(name).connect(proxy.container_id, aliases=[PROXY_ALIAS])
        return name, proxy_env()

    def close_session(self, session_id: str) -> None:
        """Detach the proxy from the session's network and remove the network if it made it;
        quiet when already done. Call after the session's container is removed."""
        link = self._sessions.pop(session_id, None)
        if link is None:
            return
        with engine_errors(f"remove network {link.network}"):
            try:
                network = self.client.networks.get(link.network)
            except docker.errors.NotFound:
                return
            if link.owns_network:
                _remove_network(network)
            else:
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    network.disconnect(link.proxy_id, force=True)

    def close(self) -> None:
        """Remove every proxy and network of the run (sessions' included); idempotent."""
        for session_id in list(self._sessions):
            with contextlib.suppress(EngineError):
                self.close_session(session_id)
        remove_run_egress(self.client, self.run_id)
        self._proxies.clear()
        self._outbound = None

    def _proxy(self, targets: tuple[EgressTarget, ...], networks: tuple[str, ...]) -> _Proxy:
        key = policy_key(targets, networks)
        with self._lock:
            if key not in self._proxies:
                self._proxies[key] = _Proxy(self._start_proxy(key, targets, networks), targets)
            return self._proxies[key]

    def _outbound_network(self) -> str:
        if self._outbound is None:
            name = outbound_network_name(self.run_id)
            with engine_errors(f"create network {name}"):
                self.client.networks.create(name, driver="bridge", check_duplicate=True,
                                            labels=self.labels)
            self._outbound = name
        return self._outbound

    def _start_proxy(self, key: str, targets: tuple[EgressTarget, ...],
                     networks: tuple[str, ...]) -> str:
        name = f"{outbound_network_name(self.run_id)}-{key}"
        outbound = self._outbound_network()
        with engine_errors(f"start the egress proxy {name}"):
            container = self.client.containers.create(
                IMAGE, PROXY_COMMAND, name=name, hostname=PROXY_ALIAS, network=outbound,
                labels=self.labels,
                environment={"AGENTRT_EGRESS_CONFIG": proxy_config(targets),
                             "AGENTRT_EGRESS_FILTER": "\n".join(filter_rules(targets))},
                cap_drop=["ALL"], security_opt=["no-new-privileges:true"], read_only=True,
                tmpfs={"/tmp": "rw,nosuid,nodev,noexec,size=16m"}, init=True,
                mem_limit=PROXY_MEMORY, memswap_limit=PROXY_MEMORY, pids_limit=PROXY_PIDS,
                log_config=LogConfig(type="json-file",
                                     config={"max-size": "10m", "max-file": "2"}))
            try:
                for network in networks:
                    self.client.networks.get(network).connect(container)
                container.start()
            except docker.errors.DockerException:
                with contextlib.suppress(docker.errors.DockerException):
                    container.remove(force=True)
                raise
        _wait_ready(self.client, str(container.id), name)
        return str(container.id)


def _wait_ready(client: docker.DockerClient, container_id: str, name: str) -> None:
    """Wait until the proxy accepts connections (probed from inside it); EngineError with its
    log if it exits or does not listen within READY_TIMEOUT_S."""

    def listening() -> bool:
        with engine_errors(f"probe the egress proxy {name}"):
            if not client.api.inspect_container(container_id).get("State", {}).get("Running"):
                raise _ProxyExited
            exec_id = client.api.exec_create(container_id, ["python3", "-c", _PROBE])
            client.api.exec_start(exec_id)
            return bool(client.api.exec_inspect(exec_id).get("ExitCode") == 0)

    try:
        wait_until(listening, timeout=READY_TIMEOUT_S, what=f"the egress proxy {name}",
                   interval=0.05, max_interval=0.1)
    except (_ProxyExited, WaitTimeoutError):
        with engine_errors(f"read the log of {name}"):
            logs = client.api.logs(container_id, tail=20).decode(errors="replace")
        raise EngineError(f"the egress proxy {name} did not start: {logs.strip()[-600:]}") \
            from None


class _ProxyExited(Exception):
    """The proxy's container stopped before it listened (ends the wait at once)."""


def _remove_network(network: object) -> None:
    net = network  # a docker Network
    attached = (getattr(net, "attrs", {}) or {}).get("Containers") or {}
    for container_id in attached:
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            net.disconnect(container_id, force=True)  # type: ignore[attr-defined]
    with contextlib.suppress(docker.errors.NotFound):
        net.remove()  # type: ignore[attr-defined]


def remove_run_egress(client: docker.DockerClient, run_id: str) -> list[str]:
    """Remove the run's egress proxies, then its egress networks; return the proxies' names.

    Found by label (``agentrt.run`` and ``agentrt.role=egress``), never by name.
    """
    labels = [f"{LABEL_RUN}={run_id}", f"{LABEL_ROLE}={ROLE_EGRESS}"]
    removed: list[str] = []
    with engine_errors(f"remove the egress proxy of {run_id}"):
        for container in client.containers.list(all=True, filters={"label": labels}):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
            removed.append(str(container.name))
        for network in client.networks.list(filters={"label": labels}):
            with contextlib.suppress(docker.errors.NotFound):
                network.reload()
            _remove_network(network)
    return removed
