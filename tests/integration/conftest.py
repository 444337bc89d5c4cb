"""Integration tests run against a real engine; after each one, nothing labelled is left."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


def leftovers(client: object) -> list[str]:
    """Labelled containers and agentrt volume mounts that still exist."""
    found = [
        f"container {c.name}"
        for c in client.containers.list(all=True, filters={"label": "agentrt.session"})  # type: ignore[attr-defined]
    ]
    for line in Path("/proc/mounts").read_text().splitlines():
        mountpoint = line.split()[1]
        if "/agentrt/sessions/" in mountpoint:
            found.append(f"mount {mountpoint}")
    return found


@pytest.fixture(autouse=True)
def no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a docker test that leaves a labelled container or mount behind (and clean them)."""
    if request.node.get_closest_marker("docker") is None:
        yield
        return
    client = request.getfixturevalue("docker_client")
    yield
    left = leftovers(client)
    for c in client.containers.list(all=True, filters={"label": "agentrt.session"}):
        c.remove(force=True)
    assert not left, f"left behind: {left}"
