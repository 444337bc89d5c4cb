"""The labels agentrt puts on what it creates, and finding containers by them (never by name).

Every container, network and volume agentrt makes carries ``agentrt.*`` labels; clean-up,
``stop``, ``shell``, ``logs`` and ``gc`` find things by label only, so a container someone else
named ``agentrt-…`` is never touched.
"""

from __future__ import annotations

from typing import Any

import docker
import docker.errors

from runtime.engine.discovery import engine_errors

LABEL_SESSION = "agentrt.session"
LABEL_RUN = "agentrt.run"
LABEL_OWNER_PID = "agentrt.owner.pid"
LABEL_OWNER_START = "agentrt.owner.start"
LABEL_REPO = "agentrt.repo"
LABEL_ROLE = "agentrt.role"
LABEL_HARVEST = "agentrt.harvest"
LABEL_TIME_SECONDS = "agentrt.time_seconds"
LABEL_GRACE_SECONDS = "agentrt.grace_seconds"


def container_name(session_id: str) -> str:
    """The name of a session's container (for people reading ``docker ps``; never looked up)."""
    return f"agentrt-{session_id}"


def labelled(client: docker.DockerClient, role: str, *,
             networks: bool = False) -> list[tuple[str, dict[str, str]]]:
    """``(name, labels)`` of every container (and, with ``networks``, network) whose
    ``agentrt.role`` is ``role``."""
    with engine_errors(f"list agentrt's {role} containers"):
        found = [(str(c.name), dict(c.labels)) for c in client.containers.list(
            all=True, filters={"label": f"{LABEL_ROLE}={role}"})]
        if networks:
            found += [(str(n.name), dict(n.attrs.get("Labels") or {}))
                      for n in client.networks.list(filters={"label": f"{LABEL_ROLE}={role}"})]
    return found


def find_container(client: docker.DockerClient, session_id: str) -> Any | None:
    """The session's agent container, found by its ``agentrt.session`` label; None if gone."""
    with engine_errors(f"find the container of {session_id}"):
        found = client.containers.list(all=True,
                                       filters={"label": f"{LABEL_SESSION}={session_id}"})
    return found[0] if found else None
