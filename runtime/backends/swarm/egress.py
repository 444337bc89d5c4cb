"""``network = "allowlist"`` on Docker Swarm: the run's egress proxy as a Swarm service.

The same proxy as on one engine (:mod:`runtime.engine.egress`: the ``agentrt/egress`` image,
tinyproxy with the rules of :mod:`runtime.egress_rules`, its log's query strings cut), run as a
service instead of a container, on two overlay networks made for it:

* an **internal** attachable overlay, ``agentrt-egress-in-<run>-<policy>``, the sessions' only
  network: no gateway, so a session there has no default route and no way to any address but
  that network's (measured); the proxy is on it under the alias ``agentrt-egress``;
* a **non-internal** attachable overlay, ``agentrt-egress-out-<run>``, the proxy's way out (its
  task also gets the node's ``docker_gwbridge``), plus each of the policy's ``egress_networks``
  (overlay networks the user made attachable, where a private model server runs), so the proxy
  reaches a server there by its name.

One proxy serves the sessions of one policy (allow list and networks); a second policy gets its
own proxy *and* its own internal network, so an alias never names two proxies. Every service
uses ``endpoint_mode=dnsrr``: Swarm's virtual IPs need the kernel's IPVS (``ip_vs``), which not
every node has, and DNS round robin needs nothing of it. The proxy has a health check (it
listens), so its task is ``running`` only once it does; :func:`start_egress_proxy` waits for
that.

The proxy runs as the image's unprivileged user with every capability dropped, a read-only
root and a 16 MiB ``/tmp`` (where its entry point writes the configuration it got in its
environment; the configuration is the allow list, not a secret). A session has no way to
reconfigure it: tinyproxy has no control interface, and the session reaches nothing of the
proxy's but its port.

Per policy or per session: by default the sessions of one policy share its internal network,
so they can reach each other's listening ports there (measured); on one engine each session
has a network of its own, which the one proxy container joins, but a Swarm service joins
networks only in its spec (changing it restarts the task), and the engine refuses to connect a
task's container to an overlay not yet on its node (measured: "network not found"). With
``session_id``, :func:`start_egress_proxy` gives the session a proxy and an internal network
of its own instead: sessions cannot reach each other, at the cost of one more service.

A session's service gets the internal network and
:data:`EGRESS_GUARD` in place of the no-network guard (:func:`with_egress`): it refuses to run
the agent (exit 97) when the task has a default route, i.e. a way out that is not the proxy.

Everything carries ``agentrt.run`` and ``agentrt.role=egress``: :func:`remove_swarm_egress`
removes a run's proxies, then its networks, at the end of the run or from ``gc``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import requests.exceptions
from docker.types import (
    EndpointSpec,
    Healthcheck,
    Mount,
    NetworkAttachmentConfig,
    Resources,
    RestartPolicy,
    ServiceMode,
)

from runtime.backends.swarm.service import NETWORK_GUARD
from runtime.backends.swarm.teardown import remove_service_and_network
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
from runtime.engine.egress import IMAGE, PROXY_COMMAND, PROXY_MEMORY, PROXY_PIDS, ROLE_EGRESS
from runtime.engine.labels import LABEL_ROLE, LABEL_RUN, LABEL_SESSION
from runtime.errors import ConfigError, EngineError, SessionError, WaitTimeoutError
from runtime.waiting import wait_until

READY_TIMEOUT_S = 60.0
#: The proxy's health check: it accepts connections on its port.
_PROBE = f"import socket; socket.create_connection(('127.0.0.1', {PROXY_PORT}), timeout=1)"
#: The session's first step with an allow list: no default route (IPv4, or IPv6 other than
#: the kernel's unreachable one on lo), else exit 97 before the agent runs: fail closed.
EGRESS_GUARD = (
    'while read -r i d _; do [ "$d" = 00000000 ] && { '
    'echo "agentrt: this session has a route out ($i) besides the egress proxy: its network '
    'must be agentrt\'s internal overlay alone" >&2; exit 97; }; done < /proc/net/route; '
    'if [ -r /proc/net/ipv6_route ]; then while read -r d l _ _ _ _ _ _ _ i; do '
    '[ "$d$l" = 0000000000000000000000000000000000 ] && [ "$i" != lo ] && { '
    'echo "agentrt: this session has an IPv6 route out ($i) besides the egress proxy" >&2; '
    'exit 97; }; done < /proc/net/ipv6_route; fi; '
)


def _safe(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", text)[:40]


def internal_network_name(run_id: str, key: str, session_id: str = "") -> str:
    """Pure: the internal overlay of the sessions of one policy (``key``) of a run, or of the
    one session ``session_id``."""
    return f"agentrt-egress-in-{_safe(session_id or run_id)}-{key}"


def proxy_name(run_id: str, key: str, session_id: str = "") -> str:
    """Pure: the proxy service's name (at most 63 characters)."""
    return f"agentrt-egress-{_safe(session_id or run_id)}"[:50].rstrip("-.") + f"-{key[:12]}"


def outbound_network_name(run_id: str) -> str:
    """Pure: the run's non-internal overlay, its proxies' way out."""
    return f"agentrt-egress-out-{_safe(run_id)}"


def egress_labels(run_id: str, labels: Mapping[str, str] | None = None,
                  session_id: str = "") -> dict[str, str]:
    """Pure: the labels of a run's proxies and networks (``labels`` first, e.g. the repo;
    the session's for a proxy of one session)."""
    own = {LABEL_SESSION: session_id} if session_id else {}
    return {**(labels or {}), LABEL_RUN: run_id, LABEL_ROLE: ROLE_EGRESS, **own}


@dataclass(frozen=True)
class SwarmEgressProxy:
    """A running proxy: its service, the internal network its sessions join, their env."""

    service_id: str
    service_name: str
    internal_network: str
    outbound_network: str
    targets: tuple[EgressTarget, ...]

    @property
    def env(self) -> dict[str, str]:
        """The variables that send a session's HTTP(S) clients through the proxy."""
        return proxy_env()


def proxy_service_spec(run_id: str, targets: tuple[EgressTarget, ...], internal: str,
                       outbound: str, networks: Iterable[str] = (), node_id: str = "",
                       labels: Mapping[str, str] | None = None,
                       session_id: str = "") -> dict[str, Any]:
    """Pure: ``client.services.create`` keyword arguments of the proxy of ``targets``: the
    rules of one engine, on ``internal`` (alias ``agentrt-egress``), ``outbound`` and each of
    ``networks``, DNS round robin, healthy once listening, restarted if it dies, pinned to
    ``node_id`` when given (a node that holds ``agentrt/egress``); ``session_id``: the proxy
    of that session alone."""
    if not targets:
        raise ConfigError("an egress proxy needs at least one allowed host")
    key = policy_key(targets, tuple(sorted(set(networks))))
    resources = Resources(mem_limit=PROXY_MEMORY, mem_reservation=PROXY_MEMORY // 4)
    resources["Limits"]["Pids"] = PROXY_PIDS  # no docker-py parameter for it (7.2.0)
    all_labels = egress_labels(run_id, labels, session_id)
    return {
        "image": IMAGE,
        "command": list(PROXY_COMMAND),
        "name": proxy_name(run_id, key, session_id),
        "hostname": PROXY_ALIAS,
        "env": {"AGENTRT_EGRESS_CONFIG": proxy_config(targets),
                "AGENTRT_EGRESS_FILTER": "\n".join(filter_rules(targets))},
        "labels": all_labels,
        "container_labels": all_labels,
        "mode": ServiceMode("replicated", replicas=1),
        "restart_policy": RestartPolicy(condition="any", delay=1_000_000_000),
        "resources": resources,
        "constraints": [f"node.id=={node_id}"] if node_id else [],
        "networks": [NetworkAttachmentConfig(internal, aliases=[PROXY_ALIAS]),
                     NetworkAttachmentConfig(outbound),
                     *(NetworkAttachmentConfig(n) for n in sorted(set(networks)))],
        "endpoint_spec": EndpointSpec(mode="dnsrr"),
        "healthcheck": Healthcheck(test=["CMD", "python3", "-c", _PROBE],
                                   interval=500_000_000, timeout=2_000_000_000, retries=20,
                                   start_period=1_000_000_000),
        "cap_drop": ["ALL"],
        "init": True,
        "read_only": True,
        "mounts": [Mount("/tmp", None, type="tmpfs", tmpfs_size=16 * 1024 * 1024,
                         tmpfs_mode=0o1777)],
        "log_driver": "json-file",
        "log_driver_options": {"max-size": "10m", "max-file": "2"},
    }


def with_egress(spec: Mapping[str, Any], proxy: SwarmEgressProxy) -> dict[str, Any]:
    """Pure: a session's ``client.services.create`` keyword arguments
    (:func:`runtime.backends.swarm.service.session_service_spec`) put behind ``proxy``: its
    internal network (nothing else), the proxy variables in its environment, and
    :data:`EGRESS_GUARD` in place of the no-network guard. SessionError for a spec that
    does not start with that guard or already has networks."""
    command = list(spec.get("command") or ())
    if spec.get("networks"):
        raise SessionError(f"the service {spec.get('name', '')} already has networks")
    if len(command) < 3 or command[:2] != ["sh", "-c"] or NETWORK_GUARD not in command[2]:
        raise SessionError(f"cannot put the service {spec.get('name', '')} behind the egress "
                           "proxy: its command does not hold agentrt's network guard")
    command[2] = command[2].replace(NETWORK_GUARD, EGRESS_GUARD, 1)
    return {**spec, "command": command, "env": {**(spec.get("env") or {}), **proxy.env},
            "networks": [NetworkAttachmentConfig(proxy.internal_network)],
            "endpoint_spec": EndpointSpec(mode="dnsrr")}


def _create_overlay(client: docker.DockerClient, name: str, internal: bool,
                    labels: Mapping[str, str]) -> None:
    """An attachable overlay network ``name`` (kept if it is already there)."""
    with engine_errors(f"create network {name}"):
        # The name filter matches parts of names: compare exactly.
        if any(n.name == name for n in client.networks.list(names=[name])):
            return
        client.networks.create(name, driver="overlay", internal=internal, attachable=True,
                               scope="swarm", labels=dict(labels))


def start_egress_proxy(client: docker.DockerClient, run_id: str, allow: Iterable[str],
                       networks: Iterable[str] = (), node_id: str = "",
                       labels: Mapping[str, str] | None = None,
                       timeout: float = READY_TIMEOUT_S,
                       session_id: str = "") -> SwarmEgressProxy:
    """Start the proxy of the policy (``allow``, ``networks``) of run ``run_id`` through the
    manager ``client`` and wait until it listens. With ``session_id``, the proxy and its
    internal network are that session's alone (sessions cannot reach each other; one more
    service per session); without, every session of the policy shares them. ConfigError
    naming a network of
    ``networks`` that is not an attachable overlay; EngineError (with the task's error) if it
    does not become healthy within ``timeout`` seconds (it is removed then)."""
    targets = parse_targets(allow)
    extra = tuple(sorted(set(networks)))
    check_overlays(client, extra)
    key = policy_key(targets, extra)
    internal = internal_network_name(run_id, key, session_id)
    outbound = outbound_network_name(run_id)
    _create_overlay(client, internal, True, egress_labels(run_id, labels, session_id))
    _create_overlay(client, outbound, False, egress_labels(run_id, labels))
    spec = proxy_service_spec(run_id, targets, internal, outbound, extra, node_id, labels,
                              session_id)
    with engine_errors(f"start the egress proxy {spec['name']}"):
        service = client.services.create(**spec)
    try:
        wait_until(lambda: _healthy(service), timeout=timeout,
                   what=f"the egress proxy {spec['name']} to listen")
    except (WaitTimeoutError, EngineError) as exc:
        detail = _last_error(service)
        with contextlib.suppress(docker.errors.DockerException,
                                 requests.exceptions.RequestException):
            service.remove()
        raise EngineError(f"the egress proxy {spec['name']} did not start: {exc}"
                          f"{': ' + detail if detail else ''}") from None
    return SwarmEgressProxy(str(service.id), str(spec["name"]), internal, outbound, targets)


def check_overlays(client: docker.DockerClient, names: Iterable[str],
                   where: str = "field egress_networks") -> None:
    """ConfigError naming ``where`` for a network that is not an attachable overlay network
    of the Swarm (a service can join nothing else)."""
    for name in names:
        with engine_errors(f"look up network {name}"):
            try:
                attrs = client.networks.get(name).attrs
            except docker.errors.NotFound:
                attrs = None
        if attrs is None or attrs.get("Driver") != "overlay" or not attrs.get("Attachable"):
            raise ConfigError(f"{where}: {name!r} is not an attachable overlay network of the "
                              "Swarm (create it on the manager: `docker network create "
                              f"--driver overlay --attachable {name}`)")


def _healthy(service: Any) -> bool:
    """Whether the proxy's newest task runs (Swarm says running only once it is healthy);
    EngineError when it ended."""
    with engine_errors("read the egress proxy's task"):
        tasks = service.tasks()
    if not tasks:
        return False
    task = max(tasks, key=lambda t: str(t.get("CreatedAt", "")))
    state = str((task.get("Status") or {}).get("State", ""))
    if state in ("failed", "rejected", "complete", "shutdown"):
        raise EngineError(f"its task ended {state}")
    return state == "running"


def _last_error(service: Any) -> str:
    with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
        tasks = service.tasks()
        if tasks:
            status = max(tasks, key=lambda t: str(t.get("CreatedAt", ""))).get("Status") or {}
            return str(status.get("Err") or status.get("Message") or "")
    return ""


def remove_swarm_egress(client: docker.DockerClient, run_id: str,
                        session_id: str = "") -> list[str]:
    """Remove the run's proxy services, then its egress networks (once their tasks left
    them), found by label; with ``session_id``, only that session's proxy and network. The
    names of the services removed; EngineError if a network is still there after a minute."""
    labels = [f"{LABEL_RUN}={run_id}", f"{LABEL_ROLE}={ROLE_EGRESS}"]
    if session_id:
        labels.append(f"{LABEL_SESSION}={session_id}")
    with engine_errors(f"remove the egress proxies of {run_id}"):
        services = client.services.list(filters={"label": labels})
        networks = client.networks.list(filters={"label": labels})
    for service in services:
        remove_service_and_network(service, None)
    for network in networks:
        remove_service_and_network(None, network)
    return [str(s.name) for s in services]


def egress_runs(client: docker.DockerClient) -> dict[str, dict[str, str]]:
    """``gc``: run id → the labels of one of its egress services or networks, for every run
    with any left on the Swarm (found by ``agentrt.role=egress``); the caller decides which
    runs are over and calls :func:`remove_swarm_egress` for them."""
    role = f"{LABEL_ROLE}={ROLE_EGRESS}"
    with engine_errors("list agentrt's egress proxies"):
        found = [dict((s.attrs.get("Spec") or {}).get("Labels") or {})
                 for s in client.services.list(filters={"label": role})]
        found += [dict(n.attrs.get("Labels") or {})
                  for n in client.networks.list(filters={"label": role})]
    return {labels[LABEL_RUN]: labels for labels in found if labels.get(LABEL_RUN)}
