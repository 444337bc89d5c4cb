"""A real three-node Docker Swarm for the tests: three ``agentrt/dind`` engines on the local one.

Each node is a dind engine as :mod:`tests.integration.dind` starts it (same flags, same image),
with its own host name (``node0`` is the manager, ``node1`` and ``node2`` workers), on a
user-defined bridge network of the local engine that this fixture creates (the nodes' Swarm
traffic, ports 2377, 7946 and 4789/udp, stays on it) and with its API published on 127.0.0.1,
so a test reaches *every* node's engine, not only the manager's. ``docker swarm init`` on
``node0`` and ``docker swarm join`` with the worker token on the others go through the SDK
(``client.swarm.init/join``). ``agentrt/base`` is ``docker save``\\ d once from the local engine
and ``docker load``\\ ed on the three nodes in parallel (no registry is reachable).

Networking, measured on this project's host (kernel without ``CONFIG_IP_VS``): the dind flags
``--bridge=none --iptables=false`` stay. Overlay networks work between the nodes with them (an
attachable overlay network, a ``dnsrr`` service on ``node1`` answered HTTP from a container on
``node2``); what does not work is Swarm's IPVS load balancing, with or without those flags: a
service's virtual IP (``endpoint_mode=vip``, the default) and the ingress routing mesh need
the ``ip_vs`` module, which this kernel lacks, so the engine logs "ipvs is not enabled" and a
VIP answers "no route to host". agentrt's sessions have no network at all, so neither matters
to it; a test needing service-to-service traffic must use ``endpoint_mode="dnsrr"``.

Start-up, measured on this project's host (2 cores, other Docker tests running): 19 to 23 s,
of which 4 to 6 s for the three engines, under 1 s for init and joins, and 12 to 18 s for the
image (the local engine saves it, about 4 s, while the engines start; three nodes load it at
once); ``SwarmCluster.startup_s`` holds each run's figures. Teardown takes about 10 s. Each
node's data root is a 1 GiB tmpfs (the image, about 265 MB, twice while it loads, and the
tests' small volumes); tmpfs takes memory only for what is written.

Teardown: services first (their tasks stop), then each node (its containers, then the dind
container, whose dockerd shuts down cleanly), then the network: nothing is left on the host.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import pytest
import requests.exceptions

from tests.integration.dind import (
    LABEL_TEST,
    LOADED_IMAGES,
    DindEngine,
    dind_run_kwargs,
    remove_dind_container,
    wait_for_engine,
)

NODES = 3
DATA_SIZE = "1g"
SWARM_PORT = 2377
JOIN_TIMEOUT_S = 30


@dataclass
class SwarmNodeEngine:
    """One node: its dind engine (a client of *its* dockerd), Swarm node id and address."""

    engine: DindEngine
    hostname: str
    address: str  # on the fixture's network
    node_id: str = ""

    @property
    def client(self) -> docker.DockerClient:
        """The node's own engine."""
        return self.engine.client

    @property
    def url(self) -> str:
        """``tcp://127.0.0.1:<port>``: the node's engine as the test process reaches it."""
        return self.engine.url

    def exec(self, command: str) -> str:
        """Run ``sh -c command`` as root in the node's dind container; its output."""
        return self.engine.exec(command)


@dataclass
class SwarmCluster:
    """A running Swarm: ``nodes[0]`` is the manager; ``startup_s`` what each phase took."""

    network: Any  # docker.models.networks.Network on the local engine
    nodes: list[SwarmNodeEngine]
    startup_s: dict[str, float] = field(default_factory=dict)

    @property
    def manager(self) -> SwarmNodeEngine:
        """The manager node (agentrt talks to it alone)."""
        return self.nodes[0]

    @property
    def workers(self) -> list[SwarmNodeEngine]:
        """The worker nodes."""
        return self.nodes[1:]

    def node(self, hostname: str) -> SwarmNodeEngine:
        """The node named ``hostname``."""
        return next(n for n in self.nodes if n.hostname == hostname)


def _parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run ``calls`` in threads; their results in order; the first exception re-raised."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def start_swarm(host: docker.DockerClient, nodes: int = NODES,
                images: tuple[str, ...] = LOADED_IMAGES) -> SwarmCluster:
    """Start ``nodes`` dind engines on a new network, make them a Swarm, load ``images``."""
    started = time.monotonic()
    tag = f"{os.getpid()}-{secrets.token_hex(3)}"
    network = host.networks.create(f"agentrt-test-swarm-{tag}", driver="bridge",
                                   labels={LABEL_TEST: "swarm"})
    containers: list[Any] = []
    cluster = SwarmCluster(network, [])
    saved: dict[str, bytes] = {}
    # The local engine saves the images while the nodes start (it is the slow half of loading).
    saver = threading.Thread(target=lambda: saved.update(
        {ref: b"".join(host.images.get(ref).save(named=ref)) for ref in images}))
    saver.start()
    try:
        for i in range(nodes):
            containers.append(host.containers.run(**dind_run_kwargs(
                f"agentrt-test-swarm-{tag}-node{i}", network=network.name, hostname=f"node{i}",
                data_size=DATA_SIZE, role="swarm")))
        engines = _parallel([lambda c=c: wait_for_engine(c) for c in containers])
        for i, engine in enumerate(engines):
            engine.container.reload()
            address = engine.container.attrs["NetworkSettings"]["Networks"][network.name][
                "IPAddress"]
            cluster.nodes.append(SwarmNodeEngine(engine, f"node{i}", address))
        cluster.startup_s["engines"] = time.monotonic() - started
        mark = time.monotonic()
        manager = cluster.manager
        manager.client.swarm.init(advertise_addr=manager.address,
                                  listen_addr=f"0.0.0.0:{SWARM_PORT}")
        manager.client.swarm.reload()
        token = manager.client.swarm.attrs["JoinTokens"]["Worker"]
        for worker in cluster.workers:
            worker.client.swarm.join(remote_addrs=[f"{manager.address}:{SWARM_PORT}"],
                                     join_token=token, advertise_addr=worker.address,
                                     listen_addr=f"0.0.0.0:{SWARM_PORT}")
        _wait_ready(cluster)
        cluster.startup_s["swarm"] = time.monotonic() - mark
        mark = time.monotonic()
        saver.join()
        for ref in images:
            if ref not in saved:
                raise RuntimeError(f"could not save {ref} from the local engine")
            _parallel([lambda n=n, r=ref: n.client.images.load(saved[r])
                       for n in cluster.nodes])
        cluster.startup_s["images"] = time.monotonic() - mark
        cluster.startup_s["total"] = time.monotonic() - started
        return cluster
    except BaseException:
        saver.join()
        _teardown(cluster, containers)
        raise


def _wait_ready(cluster: SwarmCluster) -> None:
    """Wait until the manager lists every node ready; record the nodes' ids."""
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while True:
        found = {n.attrs["Description"]["Hostname"]: n.attrs
                 for n in cluster.manager.client.nodes.list()}
        ready = [h for h, a in found.items() if a["Status"]["State"] == "ready"]
        if len(ready) == len(cluster.nodes):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"swarm nodes not ready after {JOIN_TIMEOUT_S} s: {found}")
        time.sleep(0.2)
    for node in cluster.nodes:
        node.node_id = str(found[node.hostname]["ID"])


def _teardown(cluster: SwarmCluster, containers: list[Any]) -> None:
    """Services, then nodes (their containers, then the dind container), then the network."""
    if cluster.nodes:
        with contextlib.suppress(docker.errors.DockerException,
                                 requests.exceptions.RequestException):
            for service in cluster.manager.client.services.list():
                service.remove()

    def stop_node(container: Any, engine: DindEngine | None) -> None:
        if engine is not None:
            with contextlib.suppress(docker.errors.DockerException,
                                     requests.exceptions.RequestException):
                for inner in engine.client.containers.list(all=True):
                    inner.remove(force=True, v=True)
            engine.client.close()
        with contextlib.suppress(docker.errors.NotFound):
            remove_dind_container(container)

    engines: dict[str, DindEngine] = {n.engine.container.id: n.engine for n in cluster.nodes}
    try:
        _parallel([lambda c=c: stop_node(c, engines.get(c.id)) for c in containers])
    finally:
        cluster.network.remove()


def stop_swarm(cluster: SwarmCluster) -> None:
    """Tear the Swarm down (see :func:`_teardown`)."""
    _teardown(cluster, [n.engine.container for n in cluster.nodes])


@pytest.fixture(scope="module")
def swarm_cluster(docker_client: docker.DockerClient) -> Iterator[SwarmCluster]:
    """A real three-node Swarm (agentrt/dind engines) with agentrt/base on every node, for one
    test module; torn down after it."""
    from runtime.engine.image_build import build_image

    build_image(docker_client, "dind")
    cluster = start_swarm(docker_client)
    print(f"swarm up in {cluster.startup_s}")  # noqa: T201 - shown with -s
    try:
        yield cluster
    finally:
        stop_swarm(cluster)
