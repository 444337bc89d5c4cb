"""A second Docker engine for the tests: ``agentrt/dind`` in a container on the local engine.

The engine-side volumes of :mod:`runtime.engine.engine_volumes` must work on an engine whose disk
agentrt does not share. This starts one: Debian's dockerd in a container (recipe
``images/dind``, built on demand like ``agentrt/postgres``), its data root on a
tmpfs *inside that container* (so whatever it makes is on neither the test process's
filesystem nor its mount namespace), reached over TCP on a port published to 127.0.0.1 only,
with ``agentrt/base`` loaded into it (``docker save`` from the local engine streamed into its
``docker load``). Up in about 10 s; one per test session, torn down at its end.

Flags measured on this project's host, where ``--privileged`` fails (its bounding set lacks
``CAP_SYS_RESOURCE``): every capability but ``SYS_RESOURCE``, no seccomp and no AppArmor
profile, the host's cgroup tree read-write (cgroup v1), ``/dev/loop-control`` and the device
cgroup rule ``b 7:* rwm`` (the image's entrypoint makes the ``/dev/loopN`` nodes). Its dockerd
runs with ``--bridge=none --iptables=false``: containers on it get ``network_mode="none"``.

Why not pytest-docker (once declared, now dropped) with a compose file: it drives the
``docker compose`` v2 plugin (or Debian's EOL ``docker-compose`` v1 when told to), and neither
is installed by ``scripts/setup`` nor on CI's machine; it only publishes and waits for a port,
so loading the base image and a clean shutdown (inner containers first, so no cgroup of
theirs is left on the host) would still be SDK code; and a compose project adds a network of
its own that the dind engine does not need. A plain SDK fixture is smaller and starts faster.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
import pytest
import requests.exceptions

DIND_IMAGE = "agentrt/dind:latest"
LOADED_IMAGES = ("agentrt/base:latest",)
LABEL_TEST = "agentrt.test"
START_TIMEOUT_S = 60


@dataclass
class DindEngine:
    """A running dind engine: its container on the local engine and a client of it."""

    container: Any  # docker.models.containers.Container on the *local* engine
    client: docker.DockerClient  # the dind engine
    url: str

    def exec(self, command: str) -> str:
        """Run ``sh -c command`` as root in the dind container (its host's view); output."""
        code, out = self.container.exec_run(["sh", "-c", command], user="0:0")
        text = out.decode(errors="replace")
        if code != 0:
            raise AssertionError(f"dind exec {command!r} exited {code}: {text}")
        return str(text)


def dind_run_kwargs(name: str, network: str | None = None, hostname: str | None = None,
                    data_size: str = "3g", role: str = "dind") -> dict[str, Any]:
    """``containers.run`` arguments of the dind container (see the module docstring).

    ``network``: a user-defined network of the local engine to put it on (the Swarm fixture's
    nodes reach each other there), ``hostname`` its host name (a Swarm node's name),
    ``data_size`` the tmpfs holding its data root, ``role`` the value of its test label."""
    kwargs: dict[str, Any] = {
        "image": DIND_IMAGE,
        "name": name,
        "command": ["--host", "tcp://0.0.0.0:2375", "--host", "unix:///var/run/docker.sock",
                    "--tls=false", "--bridge=none", "--iptables=false"],
        "cap_add": ["ALL"],
        "cap_drop": ["SYS_RESOURCE"],
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
        "volumes": {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
        "devices": ["/dev/loop-control:/dev/loop-control:rwm"],
        "device_cgroup_rules": ["b 7:* rwm"],
        "tmpfs": {"/var/lib/docker": f"rw,size={data_size},mode=0711", "/run": "rw,size=64m"},
        "ports": {"2375/tcp": ("127.0.0.1", None)},
        "labels": {LABEL_TEST: role},
        "detach": True,
    }
    if network is not None:
        kwargs["network"] = network
    if hostname is not None:
        kwargs["hostname"] = hostname
    return kwargs


def start_dind(host: docker.DockerClient, images: tuple[str, ...] = LOADED_IMAGES,
               timeout: float = START_TIMEOUT_S) -> DindEngine:
    """Start a dind engine on ``host``, wait for it, load ``images`` into it."""
    name = f"agentrt-test-dind-{os.getpid()}-{secrets.token_hex(3)}"
    container = host.containers.run(**dind_run_kwargs(name))
    try:
        engine = wait_for_engine(container, timeout)
        for ref in images:
            engine.client.images.load(host.images.get(ref).save(named=ref))
        return engine
    except BaseException:
        remove_dind_container(container)
        raise


def wait_for_engine(container: Any, timeout: float = START_TIMEOUT_S) -> DindEngine:
    """Wait until the dockerd of a started dind container answers on its published port."""
    deadline = time.monotonic() + timeout
    port = None
    while port is None:
        container.reload()
        bound = (container.attrs["NetworkSettings"]["Ports"] or {}).get("2375/tcp") or []
        port = bound[0]["HostPort"] if bound else None
        if port is None:
            _check_alive(container, deadline)
            time.sleep(0.1)
    url = f"tcp://127.0.0.1:{port}"
    client = None
    while client is None:
        try:
            # The client asks the engine for its API version as it is made.
            client = docker.DockerClient(base_url=url, timeout=120)
            client.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            client = None
            _check_alive(container, deadline)
            time.sleep(0.2)
    return DindEngine(container, client, url)


def _check_alive(container: Any, deadline: float) -> None:
    container.reload()
    if container.status != "running" or time.monotonic() > deadline:
        logs = container.logs(tail=30).decode(errors="replace")
        raise RuntimeError(f"the dind engine did not come up ({container.status}):\n{logs}")


def remove_dind_container(container: Any) -> None:
    """Stop (dockerd shuts down cleanly) and remove a dind container."""
    try:
        container.stop(timeout=20)
    finally:
        container.remove(force=True, v=True)


def stop_dind(engine: DindEngine) -> None:
    """Remove the dind engine's containers, then stop dockerd cleanly and remove it."""
    try:
        for inner in engine.client.containers.list(all=True):
            inner.remove(force=True, v=True)
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        pass  # the engine is already gone (e.g. its host's dockerd restarted): remove it
    finally:
        engine.client.close()
        remove_dind_container(engine.container)


@pytest.fixture(scope="module")
def dind_engine(docker_client: docker.DockerClient) -> Iterator[DindEngine]:
    """A second Docker engine (agentrt/dind) with agentrt/base loaded, for one test module.

    Per module, not per session: it must be gone before the disruptive test restarts the
    host's dockerd (a running dind engine holds that restart up past its deadline)."""
    from runtime.engine.image_build import build_image

    build_image(docker_client, "dind")
    engine = start_dind(docker_client)
    try:
        yield engine
    finally:
        stop_dind(engine)
