"""``agentrt doctor`` on a Swarm: the engine's Swarm mode, its nodes, and whether they hold the
manager's agentrt/base (:mod:`runtime.backends.swarm.images`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import docker
import docker.errors

from runtime.backends.base import BASE_IMAGE, Check
from runtime.backends.swarm.images import NODES_ENV, NodeImage
from runtime.backends.swarm.nodes import SwarmNode
from runtime.engine.discovery import engine_info
from runtime.errors import AgentRuntimeError


def swarm_check(info: dict[str, Any], nodes: Sequence[SwarmNode] = ()) -> Check:
    """Pure: the engine's Swarm mode (from ``docker info``) and, on a manager, its nodes with
    role, state and capacity; warn about nodes that cannot take sessions."""
    swarm = info.get("Swarm") or {}
    state = str(swarm.get("LocalNodeState") or "inactive")
    if state != "active":
        return Check("swarm", "ok", f"swarm mode off ({state}): sessions run on this engine")
    if not swarm.get("ControlAvailable"):
        return Check("swarm", "warn", "this engine is a Swarm worker: agentrt sees no nodes",
                     "point agentrt at a manager (DOCKER_HOST) to run sessions on the Swarm")
    shown = "; ".join(
        f"{n.hostname} ({n.role}, {n.state}, {n.availability}, {n.nano_cpus / 1e9:g} CPUs, "
        f"{n.memory_bytes // 2**20} MiB)" for n in nodes)
    idle = [n.hostname for n in nodes if not n.schedulable]
    if idle:
        return Check("swarm", "warn", f"manager of {len(nodes)} nodes: {shown}",
                     f"not ready or not active: {', '.join(idle)} (`docker node ls`)")
    return Check("swarm", "ok", f"manager of {len(nodes)} nodes: {shown}")


def swarm_images_check(ref: str, manager_id: str, nodes: Sequence[NodeImage],
                       node_count: int) -> Check:
    """Pure: whether ``ref`` is on the manager and, for the nodes whose engines were given,
    whether each holds the manager's image id (the manager cannot see its nodes' images)."""
    if not manager_id:
        return Check("swarm images", "fail", f"{ref} is not on the manager",
                     "agentrt images build")
    fix = f"agentrt images push-nodes {ref} --node tcp://HOST:PORT (one per node)"
    if not nodes:
        return Check("swarm images", "warn" if node_count > 1 else "ok",
                     f"{ref} is on the manager ({manager_id[:19]}); the other nodes' images "
                     "are not visible through the manager and were not checked",
                     f"doctor --node tcp://HOST:PORT (or {NODES_ENV}) compares them; {fix}")
    bad = [f"{n.address}: {n.error or (n.image_id[:19] if n.image_id else 'missing')}"
           for n in nodes if not n.matches]
    if bad:
        return Check("swarm images", "fail",
                     f"{ref} differs from the manager's {manager_id[:19]} on " + "; ".join(bad),
                     fix)
    return Check("swarm images", "ok",
                 f"{ref} {manager_id[:19]} on the manager and on {len(nodes)} given node(s)")


def swarm_checks(client: docker.DockerClient, node_urls: Sequence[str]) -> list[Check]:
    """The Swarm's checks (one when the engine is no manager); a Swarm that cannot be read
    is a warning."""
    try:
        return _swarm_checks(client, node_urls)
    except AgentRuntimeError as exc:
        return [Check("swarm", "warn", f"could not read the Swarm: {exc}",
                      "`docker node ls` on the manager")]


def _swarm_checks(client: docker.DockerClient, node_urls: Sequence[str]) -> list[Check]:
    from runtime.backends.swarm.images import compare_node_images
    from runtime.backends.swarm.nodes import list_nodes

    info = engine_info(client)
    swarm = info.get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
        return [swarm_check(info)]
    nodes = list_nodes(client)
    try:
        manager_id = str(client.images.get(BASE_IMAGE).id)
    except docker.errors.ImageNotFound:
        manager_id = ""
    compared = compare_node_images(BASE_IMAGE, manager_id, node_urls) if manager_id else []
    return [swarm_check(info, nodes),
            swarm_images_check(BASE_IMAGE, manager_id, compared, len(nodes)),
            nodes_set_up_check(client, nodes, manager_id)]


def nodes_check(problems: Sequence[str], checked: int) -> Check:
    """Pure: the ``swarm nodes`` finding from :func:`~runtime.backends.swarm.node_checks.
    check_nodes`'s lines (one per problem, each naming its node and the fix)."""
    if problems:
        return Check("swarm nodes", "fail", "; ".join(problems),
                     "fix each node as its line says, then `agentrt doctor` again")
    return Check("swarm nodes", "ok", f"{checked} ready node(s) checked: engine socket, no "
                 "default bridge, loop devices, agentrt/base as on the manager")


def nodes_set_up_check(client: docker.DockerClient, nodes: Sequence[SwarmNode],
                       manager_id: str) -> Check:
    """Probe each ready node (a helper service on each: socket, bridge, loop devices, the
    manager's agentrt/base) as a run's preflight does."""
    from runtime.backends.swarm.node_checks import check_nodes, collect_node_reports

    usable = [n for n in nodes if n.schedulable]
    if not manager_id:
        return Check("swarm nodes", "warn", "not checked: agentrt/base is not on the manager",
                     "agentrt images build")
    reports = collect_node_reports(client, usable, [BASE_IMAGE])
    return nodes_check(check_nodes(reports, {BASE_IMAGE: manager_id}), len(usable))
