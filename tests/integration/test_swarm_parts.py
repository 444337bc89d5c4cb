"""The building blocks of the Swarm backend's keyed sessions (issue #26), each used directly on a
real three-node Swarm (see swarm.py): a real service made with them, not through agentrt's
session. What each test proves is in its name; the attack and its control sit side by side."""

from __future__ import annotations

import base64
import json
import secrets
from typing import Any

import docker
import docker.errors
import pytest
from docker.types import Mount

from runtime.config import ResourceLimits
from runtime.engine.container import ContainerPlan
from runtime.engine.labels import LABEL_REPO, LABEL_RUN
from runtime.engine.swarm_secrets import (
    SECRET_PATH,
    create_session_secret,
    labelled_secrets,
    remove_left_over_secrets,
    remove_session_secret,
    secret_reference,
    with_secret,
)
from runtime.engine.swarm_service import OneShot, session_service_spec
from runtime.git.session_tree import secrets_text
from tests.integration.swarm import SwarmCluster

pytestmark = pytest.mark.docker

BASE = "agentrt/base:latest"
RUN = "r-parts"
REPO_LABELS = {LABEL_REPO: "/test/swarm-parts"}
LIMITS = ResourceLimits(memory_mb=64, cpu_percent=50, pids=64, disk_mb=16, time_seconds=60)


def session_spec(manager: docker.DockerClient, session_id: str, node_id: str, script: str,
                 env: dict[str, str] | None = None) -> dict[str, Any]:
    """A session's service spec as the Swarm backend makes it (session_service_spec), with a
    tmpfs for a workspace instead of a node volume (the volume is not what these tests try)."""
    plan = ContainerPlan(
        session_id=session_id, run_id=RUN, image=BASE, command=["sh", "-c", script],
        limits=LIMITS, uid=1000, gid=1000, env=env or {}, labels=REPO_LABELS, grace_seconds=1,
        mounts=(Mount("/workspace", None, type="tmpfs", tmpfs_size=8 * 2**20),))
    return session_service_spec(plan, node_id, str(manager.version()["ApiVersion"]))


def needles(value: str) -> list[str]:
    """The value as it would show in JSON or a log: plain and base64 (the API's form for
    secret data)."""
    return [value, base64.b64encode(value.encode()).decode()]


def everything_docker_shows(cluster: SwarmCluster, service: Any) -> str:
    """service inspect, secret inspect of every secret, and docker inspect of every container
    on every node (the session's task container included), as one text."""
    manager = cluster.manager.client
    shown = [json.dumps(manager.api.inspect_service(service.id))]
    shown += [json.dumps(manager.api.inspect_secret(s.id)) for s in manager.secrets.list()]
    for node in cluster.nodes:
        shown += [json.dumps(node.client.api.inspect_container(c.id))
                  for c in node.client.containers.list(all=True)]
    return "\n".join(shown)


def test_a_key_reaches_the_agent_on_a_worker_through_a_docker_secret_and_no_spec_shows_it(
        swarm_cluster: SwarmCluster) -> None:
    manager = swarm_cluster.manager.client
    worker = swarm_cluster.node("node1")
    value = "sk-parts-" + secrets.token_hex(16)
    secret = create_session_secret(manager, "sp-key", RUN,
                                   secrets_text({"AGENT_API_KEY": value}), REPO_LABELS)
    script = ('[ -n "$AGENT_API_KEY" ] && echo "key is set (${#AGENT_API_KEY} characters)"; '
              f'stat -c "file %a %u" {SECRET_PATH}; '
              f'rm -f {SECRET_PATH} 2>/dev/null || echo "the file cannot be deleted"; '
              'echo shown; sleep 5')
    spec = with_secret(session_spec(manager, "sp-key", worker.node_id, script),
                       secret_reference(secret, 1000, 1000))
    one_shot = OneShot(manager, spec)
    try:
        code, output = one_shot.wait(timeout=60, until="shown")
        assert code is None, output  # still running: its container is there to inspect
        running = worker.client.containers.list(filters={"label": "agentrt.session=sp-key"})
        assert len(running) == 1, "the task's container runs on node1"
        shown = everything_docker_shows(swarm_cluster, one_shot.service)
        assert secret.name in shown  # the reference is there ...
        for needle in needles(value):  # ... never the value
            assert needle not in shown
        code, output = one_shot.wait(timeout=60)
        assert code == 0, output
        assert f"key is set ({len(value)} characters)" in output
        assert "file 400 1000" in output
        assert "the file cannot be deleted" in output  # read-only: documented
        assert value not in output
    finally:
        one_shot.remove()
    remove_session_secret(manager, secret.id)
    assert secret.id not in {s.id for s in manager.secrets.list()}
    # Once the task is gone, no file under any node's data root holds it (the manager's raft
    # store keeps secrets encrypted).
    for node in swarm_cluster.nodes:
        found = node.exec(f"grep -rlF '{value}' /var/lib/docker /run 2>/dev/null || true")
        assert found.strip() == "", (node.hostname, found)


def test_control_a_key_given_as_a_plain_environment_variable_shows_in_service_inspect(
        swarm_cluster: SwarmCluster) -> None:
    manager = swarm_cluster.manager.client
    value = "sk-plain-" + secrets.token_hex(16)
    spec = session_spec(manager, "sp-plain", swarm_cluster.node("node1").node_id, "true",
                        env={"AGENT_API_KEY": value})
    one_shot = OneShot(manager, spec)
    try:
        assert value in json.dumps(manager.api.inspect_service(one_shot.service.id))
        code, output = one_shot.wait(timeout=60)
        assert code == 0, output
        # The grep of the secret's test finds a value where Docker keeps one: the ended
        # task's container record on its node.
        found = swarm_cluster.node("node1").exec(
            f"grep -rlF '{value}' /var/lib/docker /run 2>/dev/null || true")
        assert "/containers/" in found, found
    finally:
        one_shot.remove()


def test_gc_removes_the_secrets_of_runs_that_are_over_and_keeps_the_others(
        swarm_cluster: SwarmCluster) -> None:
    manager = swarm_cluster.manager.client
    over = create_session_secret(manager, "sp-over", "r-over", b"export A=1\n", REPO_LABELS)
    live = create_session_secret(manager, "sp-live", "r-live", b"export A=2\n", REPO_LABELS)
    manager.secrets.create(name=f"not-agentrt-{secrets.token_hex(3)}", data=b"x",
                           labels={LABEL_RUN: "r-over"})  # not agentrt's role: never touched
    try:
        listed = {s.name: s.labels for s in labelled_secrets(manager)}
        assert listed[over.name]["agentrt.session"] == "sp-over"
        assert listed[over.name][LABEL_REPO] == REPO_LABELS[LABEL_REPO]
        removed, failed = remove_left_over_secrets(
            manager, lambda labels: labels.get(LABEL_RUN) == "r-over")
        assert (removed, failed) == ([over.name], [])
        names = {s.name for s in manager.secrets.list()}
        assert over.name not in names and live.name in names
        assert any(n.startswith("not-agentrt-") for n in names)
    finally:
        remove_session_secret(manager, live.id)
        for s in manager.secrets.list():
            if s.name.startswith("not-agentrt-"):
                s.remove()


def test_a_secret_still_used_by_a_service_is_reported_not_removed(
        swarm_cluster: SwarmCluster) -> None:
    manager = swarm_cluster.manager.client
    secret = create_session_secret(manager, "sp-inuse", "r-inuse", b"export A=1\n", REPO_LABELS)
    spec = with_secret(session_spec(manager, "sp-inuse", swarm_cluster.manager.node_id,
                                    "sleep 30"), secret_reference(secret, 1000, 1000))
    service = manager.services.create(**spec)
    try:
        removed, failed = remove_left_over_secrets(
            manager, lambda labels: labels.get(LABEL_RUN) == "r-inuse", timeout=1)
        assert removed == [] and len(failed) == 1 and service.name in failed[0], failed
    finally:
        service.remove()
    remove_session_secret(manager, secret.id)
    with pytest.raises(docker.errors.NotFound):
        manager.secrets.get(secret.id)
