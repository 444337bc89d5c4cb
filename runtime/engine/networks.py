"""Session networks that give the host no address: internal bridges without a host IPv4.

Docker's ``internal`` flag stops forwarding out of a bridge, not traffic *to the host itself*:
the host holds the bridge's gateway address, and Linux answers on any of its addresses (the
bridge's, ``docker0``'s, the host's own) whatever interface a packet came in on. A session on
an internal network therefore reached a listener on the host's ``0.0.0.0``. So every network
agentrt makes for sessions (the allowlist's, the services', the shared database's) is made
with ``com.docker.network.bridge.inhibit_ipv4``: the bridge gets no address on the host, the
members still reach each other (one layer-2 segment), and no packet from them is addressed to
the host or routed anywhere. ``agentrt doctor`` checks the engine honours the option.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Mapping
from typing import Any

import docker
import docker.errors

from runtime.engine.discovery import engine_errors

INHIBIT_IPV4 = "com.docker.network.bridge.inhibit_ipv4"
#: The options of every internal bridge agentrt makes for sessions.
NO_HOST_OPTIONS = {INHIBIT_IPV4: "true"}


def create_internal_network(client: docker.DockerClient, name: str,
                            labels: Mapping[str, str]) -> Any:
    """An internal bridge network ``name`` whose members cannot reach the host: no route out
    and no host address on the bridge."""
    return client.networks.create(name, driver="bridge", internal=True, check_duplicate=True,
                                  labels=dict(labels), options=dict(NO_HOST_OPTIONS))


def holds_the_host_out(attrs: Mapping[str, Any]) -> bool:
    """Pure: whether a network (``docker network inspect``'s attributes) gives its members
    no way to the host: internal, and a bridge with no host IPv4 address."""
    options = attrs.get("Options") or {}
    return bool(attrs.get("Internal")) and attrs.get("Driver") == "bridge" \
        and str(options.get(INHIBIT_IPV4, "")).lower() == "true"


def engine_holds_the_host_out(client: docker.DockerClient) -> bool:
    """Make a probe network the way sessions get theirs and read it back (doctor)."""
    name = f"agentrt-probe-{secrets.token_hex(4)}"
    with engine_errors("create a probe network"):
        network = create_internal_network(client, name, {"agentrt.role": "probe"})
        try:
            network.reload()
            return holds_the_host_out(network.attrs)
        finally:
            with contextlib.suppress(docker.errors.APIError):
                network.remove()
