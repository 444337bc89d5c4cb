"""An environment image on the Swarm nodes that will run it, its id checked before placement.

An environment image (``[run.environment]``) is built once on the manager's engine, where
agentrt builds it on one engine today (cached by content). A Swarm service only names it, and
without a registry no node pulls it, so:

* :func:`node_engines` learns which engine address (the ``--node`` addresses of ``images
  push-nodes``) is which Swarm node, by asking each engine its own Swarm node id;
* :func:`deliver_image` carries the image from the manager to the engines of the nodes that
  will run it (:func:`runtime.backends.swarm.images.push_image`: saved once, loaded only where
  that exact id is missing, verified by id);
* :func:`image_on_nodes` checks, through the manager alone, which nodes hold that id under the
  image's name (the node probe of :mod:`runtime.backends.swarm.node_checks`), and gives one line per
  node that does not; :func:`placeable_nodes` (pure) keeps the nodes a session with that
  image may be placed on.

A registry the user names (``[run.engine] registry``) is not done here: nodes would pull the
image by digest and the same check would follow.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import docker
import docker.errors

from runtime.backends.swarm.images import NodeImage, node_client, push_image
from runtime.backends.swarm.node_checks import collect_node_reports, node_problems
from runtime.backends.swarm.nodes import SwarmNode
from runtime.engine.discovery import engine_errors
from runtime.errors import ConfigError, EngineError, ImageNotFoundError


@dataclass(frozen=True)
class ImageOnNodes:
    """Which nodes hold ``image_id`` under ``ref``, and a line for each that does not."""

    ref: str
    image_id: str
    holding: frozenset[str]  # node ids
    problems: tuple[str, ...]


def node_engines(addresses: Sequence[str]) -> dict[str, str]:
    """Swarm node id → engine address, for each address given (its engine says its own node
    id). EngineError naming an address that does not answer or is in no Swarm."""
    found: dict[str, str] = {}
    for address in addresses:
        with node_client(address) as engine, engine_errors(f"read the engine at {address}"):
            node_id = str((engine.info().get("Swarm") or {}).get("NodeID") or "")
        if not node_id:
            raise EngineError(f"the engine at {address} is not a node of a Docker Swarm")
        found[node_id] = address
    return found


def addresses_for(nodes: Sequence[SwarmNode], engines: Mapping[str, str]) -> list[str]:
    """Pure: the engine address of each of ``nodes``; ConfigError naming the nodes with none
    (their addresses must be given, as for ``agentrt images push-nodes --node``)."""
    missing = [n.hostname for n in nodes if n.id not in engines]
    if missing:
        raise ConfigError(f"no engine address for node {', '.join(missing)}: give each node's "
                          "engine with --node tcp://HOST:PORT (or AGENTRT_SWARM_NODES)")
    return [engines[n.id] for n in nodes]


def deliver_image(client: docker.DockerClient, ref: str, nodes: Sequence[SwarmNode],
                  engines: Mapping[str, str],
                  log: Callable[[str], None] | None = None) -> list[NodeImage]:
    """Carry the image ``ref`` of the engine ``client`` speaks to (the manager, where it was
    built) to the engines of ``nodes`` (``engines``: node id → address); one result per node,
    in order, a failed one with ``error`` set."""
    return push_image(client, ref, addresses_for(nodes, engines), log)


def manager_image_id(client: docker.DockerClient, ref: str) -> str:
    """The id of ``ref`` on the manager; ImageNotFoundError if it is not there."""
    with engine_errors(f"inspect image {ref}"):
        try:
            return str(client.images.get(ref).id)
        except docker.errors.ImageNotFound as exc:
            raise ImageNotFoundError(f"image {ref!r} is not on the Swarm manager: build it "
                                     "there first") from exc


def image_on_nodes(client: docker.DockerClient, ref: str, nodes: Sequence[SwarmNode],
                   labels: Mapping[str, str] | None = None) -> ImageOnNodes:
    """Ask each of ``nodes`` (through the manager ``client``) which id it holds under ``ref``,
    compared with the manager's: the nodes holding it, and a line for each that does not
    (or could not be asked)."""
    image_id = manager_image_id(client, ref)
    reports = collect_node_reports(client, nodes, [ref], labels=labels)
    holding = frozenset(node.id for node, report in zip(nodes, reports, strict=True)
                        if not report.error and report.images.get(ref) == image_id)
    problems = tuple(line for node, report in zip(nodes, reports, strict=True)
                     if node.id not in holding
                     for line in node_problems(report, {ref: image_id}))
    return ImageOnNodes(ref, image_id, holding, problems)


def placeable_nodes(nodes: Sequence[SwarmNode], found: ImageOnNodes) -> list[SwarmNode]:
    """Pure: the nodes a session with ``found.ref`` may be placed on (they hold its id)."""
    return [node for node in nodes if node.id in found.holding]
