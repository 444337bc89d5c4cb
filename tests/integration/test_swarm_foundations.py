"""Swarm foundations (issue #13) against a real three-node Swarm of agentrt/dind engines."""

from __future__ import annotations

import pytest

from tests.integration.swarm import SwarmCluster

pytestmark = pytest.mark.docker


def test_fixture_is_a_three_node_swarm_with_the_base_image_everywhere(
        swarm_cluster: SwarmCluster) -> None:
    nodes = swarm_cluster.manager.client.nodes.list()
    roles = sorted((n.attrs["Description"]["Hostname"], n.attrs["Spec"]["Role"]) for n in nodes)
    assert roles == [("node0", "manager"), ("node1", "worker"), ("node2", "worker")]
    ids = {n.client.images.get("agentrt/base:latest").id for n in swarm_cluster.nodes}
    assert len(ids) == 1
    print(swarm_cluster.startup_s)
