"""Integration tests run against a real engine; after each one, nothing it made is left."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.dind import dind_engine  # noqa: F401 - a second engine (module)
from tests.integration.swarm import swarm_cluster  # noqa: F401 - a 3-node Swarm (module)
from tests.integration.tmux import tmux  # noqa: F401 - a private tmux server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run tests that restart the engine last, so nothing else shares their disruption."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


@pytest.fixture(params=["runc", "runsc"])
def runtime_name(request: pytest.FixtureRequest, docker_client: object) -> str:
    """Run a test under runc, and under gVisor where registered (required in CI)."""
    from runtime.engine.discovery import registered_runtimes

    if request.param == "runsc" and "runsc" not in registered_runtimes(docker_client):  # type: ignore[arg-type]
        if os.environ.get("AGENTRT_REQUIRE_RUNSC"):
            pytest.fail("runsc is required (AGENTRT_REQUIRE_RUNSC) but not registered")
        pytest.skip("gVisor (runsc) is not registered with this engine")
    return str(request.param)


def leftovers(client: object, repo: Path) -> list[str]:
    """Labelled containers, mounts, loop devices and session dirs of ``repo`` that remain."""
    found = [
        f"container {c.name}"
        for c in client.containers.list(  # type: ignore[attr-defined]
            all=True, filters={"label": f"agentrt.repo={repo}"})
    ]
    state = repo / ".git" / "agentrt"
    for line in Path("/proc/mounts").read_text().splitlines():
        mountpoint = line.split()[1]
        if mountpoint.startswith(str(state)):
            found.append(f"mount {mountpoint}")
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False)
    found += [f"loop {line}" for line in loops.stdout.splitlines() if str(state) in line]
    sessions = state / "sessions"
    if sessions.exists():
        found += [f"session dir {p.name}" for p in sessions.iterdir()]
    return found


@pytest.fixture(autouse=True)
def no_leftovers(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a docker test that leaves a container, mount or volume of its repository behind."""
    if request.node.get_closest_marker("docker") is None or "repo" not in request.fixturenames:
        yield
        return
    client = request.getfixturevalue("docker_client")
    repo = request.getfixturevalue("repo").resolve()
    yield
    left = leftovers(client, repo)
    for c in client.containers.list(all=True, filters={"label": f"agentrt.repo={repo}"}):
        c.remove(force=True)
    # A branch's carried state (agentrt continue) outlives its sessions by design.
    for volume in client.volumes.list(filters={"label": ["agentrt.role=carry",
                                                         f"agentrt.repo={repo}"]}):
        volume.remove(force=True)
    assert not left, f"left behind: {left}"
