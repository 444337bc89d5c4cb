"""Swarm objects that take a while: a service's running container, and removing a service and
then its network (the manager removes an overlay network only once its tasks have left it;
ending the task's container first saves the seconds Swarm takes to stop it)."""

from __future__ import annotations

import contextlib
from typing import Any

import docker
import docker.errors
import requests.exceptions

from runtime.backends.swarm.service import poll_delay
from runtime.errors import EngineError, WaitTimeoutError
from runtime.waiting import wait_until

#: How often a network that is still there is asked to go again.
NETWORK_RETRY_S = 0.25


def get_or_none(collection: Any, object_id: str) -> Any:
    """``collection.get(object_id)``, or None when it is gone (or was never made)."""
    if not object_id:
        return None
    try:
        return collection.get(object_id)
    except docker.errors.NotFound:
        return None


def wait_for_container(client: docker.DockerClient, service: Any, timeout: float) -> str:
    """The id of ``service``'s running task container on the engine ``client`` speaks to."""
    state = "new"

    def running_container() -> str:
        nonlocal state
        tasks = service.tasks()
        if not tasks:
            return ""
        task = max(tasks, key=lambda t: str(t.get("CreatedAt", "")))
        status = task.get("Status") or {}
        state = str(status.get("State", ""))
        if state in ("failed", "rejected", "shutdown", "complete"):
            raise EngineError(f"the exchange's task ended {state}: "
                              f"{status.get('Err') or status.get('Message') or ''}")
        cid = str((status.get("ContainerStatus") or {}).get("ContainerID") or "")
        return cid if state == "running" else ""

    try:
        return wait_until(running_container, timeout=timeout, what="the exchange's container",
                          pause=poll_delay)
    except WaitTimeoutError:
        raise EngineError(f"the exchange did not start within {timeout:.0f} s (its task is "
                          f"{state})") from None


def end_container(client: docker.DockerClient, container_id: str, wait_s: float = 3.0) -> None:
    """SIGTERM to the init of a service's task container on the engine ``client`` speaks to,
    and wait up to ``wait_s`` seconds for it to exit (quiet: removing the service follows)."""
    if not container_id:
        return
    with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException,
                             WaitTimeoutError):
        client.api.kill(container_id, signal="SIGTERM")
        wait_until(lambda: not client.api.inspect_container(container_id)["State"].get("Running"),
                   timeout=wait_s, what=f"container {container_id[:12]} to exit",
                   interval=0.05, max_interval=0.05)


def remove_service_and_network(service: Any, network: Any, wait_s: float = 60.0) -> None:
    """Remove the service, then the network once its tasks have left it; EngineError if
    something is still there after ``wait_s`` seconds."""
    for thing in (service, network):
        if thing is None:
            continue
        last: list[Exception] = []

        def gone(thing: Any = thing, last: list[Exception] = last) -> bool:
            try:
                thing.remove()
                if thing is network:  # the manager removes it a few seconds later
                    thing.reload()
                    raise docker.errors.APIError("still there")
            except docker.errors.NotFound:
                return True
            except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
                last[:] = [exc]
                return False
            return True

        try:
            wait_until(gone, timeout=wait_s, what=f"{getattr(thing, 'name', thing)} to go",
                       interval=NETWORK_RETRY_S, max_interval=NETWORK_RETRY_S)
        except WaitTimeoutError:
            raise EngineError(f"cannot remove {getattr(thing, 'name', thing)}: "
                              f"{last[0] if last else 'still there'}") from None


