"""gc on Docker Swarm: a dead run's services, exchange and node volumes, found by label.

:func:`runtime.backends.recovery.collect_garbage` calls in here for sessions whose marker names a
Swarm node (``node_id``): their services are removed first (the agent stops), their work is
harvested on the node through an exchange that gc starts for itself (the dead run's own may be
gone), and their volumes are removed on their nodes. :func:`collect_swarm_leftovers` then
removes what is left of runs that are over: session and helper services, exchanges and their
networks, then the sessions' Docker secrets (:func:`remove_left_over_secrets`). Nothing here
runs when the engine is not a Swarm manager.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

import docker
import docker.errors

from runtime.backends.swarm.exchange import ROLE_EXCHANGE, Exchange, remove_exchanges
from runtime.backends.swarm.node_tree import NodeTree
from runtime.backends.swarm.secrets import remove_left_over_secrets
from runtime.backends.swarm.volumes import remove_node_volume
from runtime.engine.engine_volumes import EngineVolume
from runtime.engine.labels import (
    LABEL_OWNER_PID,
    LABEL_OWNER_START,
    LABEL_REPO,
    LABEL_ROLE,
    LABEL_RUN,
    LABEL_SESSION,
)
from runtime.errors import AgentRuntimeError, NotFoundError
from runtime.git.safe_git import MainRepo
from runtime.state.liveness import recorded_alive
from runtime.state.run_leftovers import run_is_over

_lock = threading.Lock()
_exchanges: dict[int, Exchange] = {}


def is_swarm_manager(client: docker.DockerClient) -> bool:
    """Whether ``client``'s engine manages a Swarm (False when it cannot say)."""
    with contextlib.suppress(docker.errors.DockerException, AgentRuntimeError, KeyError):
        return bool(client.info()["Swarm"].get("ControlAvailable"))
    return False


def _gc_exchange(client: docker.DockerClient) -> Exchange:
    """An exchange of gc's own (started once per process and engine)."""
    with _lock:
        exchange = _exchanges.get(id(client))
        if exchange is None:
            node_id = str(client.info()["Swarm"]["NodeID"])
            exchange = Exchange.start(client, f"gc-{os.getpid()}-{os.urandom(2).hex()}", node_id)
            _exchanges[id(client)] = exchange
        return exchange


def _remove_session_services(client: docker.DockerClient, session_id: str) -> None:
    with contextlib.suppress(docker.errors.DockerException):
        for service in client.services.list(filters={"label": f"{LABEL_SESSION}={session_id}"}):
            with contextlib.suppress(docker.errors.NotFound):
                service.remove()


def _volume(marker: Any, session_id: str) -> EngineVolume:
    if not marker.volume_root or not marker.engine_volume:
        raise NotFoundError(f"the marker of {session_id} names no node volume")
    return EngineVolume(session_id, marker.engine_volume, "loop", 0, marker.volume_root,
                        marker.uid)


def node_tree(client: docker.DockerClient, marker: Any, session_id: str) -> NodeTree:
    """The tree of a dead run's session on its node, its services removed (agent stopped)."""
    _remove_session_services(client, session_id)
    return NodeTree(client, _volume(marker, session_id), marker.node_id, _gc_exchange(client),
                    marker.uid, marker.gid)


def remove_node_tree(client: docker.DockerClient, marker: Any, session_id: str) -> None:
    """Remove the session's services and its volume on its node (idempotent)."""
    _remove_session_services(client, session_id)
    remove_node_volume(client, marker.node_id, _volume(marker, session_id))


def _over(labels: dict[str, str], store: Any) -> bool:
    """Whether the run (by its owner's liveness, or the state DB's record) is over."""
    if labels.get(LABEL_OWNER_PID):
        return not recorded_alive(labels[LABEL_OWNER_PID], labels.get(LABEL_OWNER_START))
    return store is not None and run_is_over(store, labels.get(LABEL_RUN, ""))


def collect_swarm_leftovers(client: docker.DockerClient, repo: MainRepo, store: Any,
                            report: Any) -> None:
    """Remove the services and exchanges of ``repo``'s runs that are over, and gc's own
    exchange; what was removed goes to ``report.removed_containers``."""
    if not is_swarm_manager(client):
        return
    with contextlib.suppress(docker.errors.DockerException, AgentRuntimeError):
        for service in client.services.list(filters={"label": LABEL_SESSION}):
            labels = dict(service.attrs.get("Spec", {}).get("Labels") or {})
            if labels.get(LABEL_REPO) not in (None, str(repo.root)):
                continue
            if labels.get(LABEL_REPO) is None and labels.get(LABEL_ROLE) is None:
                continue
            if _over(labels, store):
                with contextlib.suppress(docker.errors.NotFound):
                    service.remove()
                report.removed_containers.append(str(service.name))
        runs = set()
        for service in client.services.list(filters={"label": f"{LABEL_ROLE}={ROLE_EXCHANGE}"}):
            labels = dict(service.attrs.get("Spec", {}).get("Labels") or {})
            if store is not None and _over(labels, store):
                runs.add(labels.get(LABEL_RUN, ""))
        for run_id in sorted(r for r in runs if r):
            report.removed_containers.extend(remove_exchanges(client, run_id))
        # After the services: the manager refuses to delete a secret a service refers to.
        removed, failed = remove_left_over_secrets(
            client, lambda labels: labels.get(LABEL_REPO) == str(repo.root)
            and _over(dict(labels), store))
        report.removed_containers.extend(removed)
        report.errors.extend(f"Docker secret {line}" for line in failed)
    with _lock:
        exchange = _exchanges.pop(id(client), None)
    if exchange is not None:
        with contextlib.suppress(AgentRuntimeError, docker.errors.DockerException):
            exchange.stop()
