"""The backend contract: the same lifecycle checks on every backend the registry knows, each on a
real engine, so that a new backend gets the whole suite by adding its parameter.

One run per backend through the public API (``AgentCoordinator``), its five tasks at once: an
agent that commits (``succeeded``, its branch merged into the target), one that allocates past
its memory (``oom_killed``), one that writes past its volume (``disk_full``), one that sleeps
past its deadline (``timed_out``) and one cancelled while it runs (``cancelled``, through the
session's own ``cancel()``); and a session on its own, its backend from ``[run] engine``,
running the argv given to ``run()``. The backends:

* ``docker-local``: the local engine, the volume on this disk;
* ``docker-engine-side``: a Docker-in-Docker engine (dind.py) that shares nothing with this
  process: the volume on the engine's host, every file operation through the API;
* ``swarm``: the three-node Swarm of swarm.py, each session a service on a node placement picks.

Engine or node gone (the classifier's precedence for ``engine_lost`` / ``node_lost``) is not
repeated here: it needs an engine restarted (test_engine_lost.py, disruptive) or a node killed
(test_swarm_run.py); the precedence itself is table-tested (tests/unit/test_classify.py,
tests/unit/test_swarm.py).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from runtime import AgentCoordinator, IsolatedAgentSession, ResourceLimits, RunConfig, Task
from runtime.backends.registry import ENGINES
from runtime.backends.swarm.backend import wait_for_exchanges
from runtime.models import SessionResult
from runtime.waiting import wait_until
from tests.conftest import git

pytestmark = pytest.mark.docker

#: (backend, [run] engine, the fixture giving its engine's client; None: the local engine)
BACKENDS = [
    ("docker-local", "docker", None),
    ("docker-engine-side", "docker", "dind_engine"),
    ("swarm", "swarm", "swarm_cluster"),
]

TASKS = [
    Task(id="writer", command=["sh", "-c", "echo c > committed.txt && git add . && "
                                           "git commit -qm 'agent commit'"]),
    Task(id="hog", command=["python3", "-c",
                            "b = []\nwhile True: b.append(bytearray(16 * 1024 * 1024))"]),
    Task(id="filler", command=["sh", "-c", "dd if=/dev/zero of=big bs=1M count=100"]),
    Task(id="late", command=["sleep", "60"], resource_limits={"time_seconds": 3}),
    Task(id="stopped", command=["sh", "-c", "echo ready; sleep 60"]),
]

EXPECTED = {"writer": "succeeded", "hog": "oom_killed", "filler": "disk_full",
            "late": "timed_out", "stopped": "cancelled"}


def test_every_engine_of_the_registry_has_a_contract_case() -> None:
    assert {engine for _, engine, _ in BACKENDS} == set(ENGINES)


@pytest.mark.parametrize(("backend", "engine", "fixture"), BACKENDS,
                         ids=[b for b, _, _ in BACKENDS])
def test_a_backend_keeps_the_session_lifecycle(backend: str, engine: str, fixture: str | None,
                                               request: pytest.FixtureRequest,
                                               docker_client: Any, repo: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTRT_ENGINE_DISK", raising=False)  # the engine says where
    client = docker_client
    if fixture == "dind_engine":
        client = request.getfixturevalue(fixture).client
    elif fixture == "swarm_cluster":
        client = request.getfixturevalue(fixture).manager.client
    config = RunConfig(engine=engine, merge="auto", max_concurrent_agents=len(TASKS),
                       warm_pool=0, resource_limits=ResourceLimits(
                           memory_mb=96, disk_mb=40, time_seconds=120, pids=64))
    coordinator: AgentCoordinator

    def cancel_once_running() -> None:
        session = next(s for s in coordinator.live_sessions() if s.task.id == "stopped")
        wait_until(lambda: b"ready" in session.logs(), timeout=60,
                   what="the session to be cancelled to print its first line")
        session.cancel()

    def listener(event: str, result: SessionResult) -> None:
        if event == "running" and result.task_id == "stopped":
            threading.Thread(target=cancel_once_running, daemon=True).start()

    coordinator = AgentCoordinator(config=config, repo=repo, client=client, listener=listener)
    report = coordinator.run_agents(TASKS)

    by_task = {s.task_id: s for s in report.sessions}
    assert {t: s.status.value for t, s in by_task.items()} == EXPECTED, \
        {t: (s.status.value, s.reason) for t, s in by_task.items()}
    assert all(s.work.value == "home" for s in by_task.values()), \
        {t: (s.work.value, s.warnings) for t, s in by_task.items()}
    assert by_task["writer"].merge.status == "merged", by_task["writer"].merge
    assert "committed.txt" in git(repo, "ls-tree", "-r", "--name-only", "main").split()
    assert by_task["hog"].peak_memory_bytes >= 96 * 1024 * 1024
    if engine == "swarm":
        assert all(s.node for s in by_task.values()), {t: s.node for t, s in by_task.items()}
        assert wait_for_exchanges(120)  # the run's exchange is gone before its Swarm is
    assert not list((repo / ".git" / "agentrt").glob("sessions/*")), backend


@pytest.mark.parametrize(("backend", "engine", "fixture"), BACKENDS,
                         ids=[b for b, _, _ in BACKENDS])
def test_a_session_of_a_backend_runs_the_command_given_to_run(
        backend: str, engine: str, fixture: str | None, request: pytest.FixtureRequest,
        docker_client: Any, repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One session class for every backend: a session on its own (its backend from
    ``[run] engine``) takes the argv given to ``run()`` (Swarm's session once refused it)."""
    monkeypatch.delenv("AGENTRT_ENGINE_DISK", raising=False)
    client = docker_client
    if fixture == "dind_engine":
        client = request.getfixturevalue(fixture).client
    elif fixture == "swarm_cluster":
        client = request.getfixturevalue(fixture).manager.client
    config = RunConfig(engine=engine, resource_limits=ResourceLimits(
        memory_mb=96, disk_mb=40, time_seconds=60, pids=64))
    with IsolatedAgentSession({"id": "given"}, config, repo=repo, client=client) as session:
        result = session.run(["sh", "-c", "echo given > given.txt && echo done"])
    assert result.status.value == "succeeded", (backend, result.reason, result.warnings)
    assert result.work.value == "home", result.warnings
    assert git(repo, "show", f"{result.branch}:given.txt").strip() == "given"
    assert b"done" in session.logs()
    if engine == "swarm":
        assert result.node, result
        assert wait_for_exchanges(120)
