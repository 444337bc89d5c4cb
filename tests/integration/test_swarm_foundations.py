"""Swarm foundations (issue #13) against a real three-node Swarm of agentrt/dind engines.

agentrt talks to the manager only; the tests also look at every node's own engine (and into
its dind container) to see that what the manager was asked for happened where it should."""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Callable
from typing import Any

import docker
import pytest
from click.testing import CliRunner
from docker.types import Mount

from runtime.backends.swarm.exchange import Exchange
from runtime.backends.swarm.images import push_image
from runtime.backends.swarm.nodes import Need, list_nodes, place, reserved_by_sessions, swarm_status
from runtime.backends.swarm.service import (
    NETWORK_GUARD_EXIT,
    TERMINAL_STATES,
    helper_service_spec,
    run_one_shot,
    session_service_spec,
    task_outcome,
)
from runtime.backends.swarm.volumes import (
    NodeStep,
    NodeStepFailed,
    create_node_volume,
    remove_node_volume,
    start_node_finish,
)
from runtime.config import ResourceLimits
from runtime.engine.container import ContainerPlan
from runtime.errors import EngineError
from tests.integration.swarm import SwarmCluster, SwarmNodeEngine

pytestmark = pytest.mark.docker

BASE = "agentrt/base:latest"


def test_fixture_is_a_three_node_swarm_with_the_base_image_everywhere(
        swarm_cluster: SwarmCluster) -> None:
    manager = swarm_cluster.manager.client
    nodes = list_nodes(manager)
    assert [(n.hostname, n.role, n.state, n.availability) for n in nodes] == [
        ("node0", "manager", "ready", "active"), ("node1", "worker", "ready", "active"),
        ("node2", "worker", "ready", "active")]
    assert all(n.nano_cpus > 0 and n.memory_bytes > 0 for n in nodes)
    assert {n.id for n in nodes} == {n.node_id for n in swarm_cluster.nodes}
    ids = {n.client.images.get(BASE).id for n in swarm_cluster.nodes}
    assert len(ids) == 1
    status = swarm_status(manager)
    assert status.node_id == swarm_cluster.manager.node_id and status.nodes == 3
    with pytest.raises(EngineError, match="Swarm worker"):
        swarm_status(swarm_cluster.workers[0].client)
    with pytest.raises(EngineError, match="Swarm worker"):
        list_nodes(swarm_cluster.workers[0].client)
    print(f"swarm start-up: {swarm_cluster.startup_s}")


def _wait_gone(node: SwarmNodeEngine, timeout: float = 20) -> list[str]:
    """Containers still on ``node`` once Swarm had ``timeout`` s to remove its tasks'."""
    deadline = time.monotonic() + timeout
    while True:
        left = [str(c.name) for c in node.client.containers.list(all=True)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.3)


def _wait_task(service: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tasks = service.tasks()
        if tasks and tasks[0]["Status"]["State"] in TERMINAL_STATES:
            return dict(tasks[0])
        time.sleep(0.25)
    raise AssertionError(f"task did not end: {service.tasks()}")


def test_a_session_service_on_a_worker_volume_hits_enospc_and_leaves_nothing(
        swarm_cluster: SwarmCluster) -> None:
    manager = swarm_cluster.manager.client
    worker = swarm_cluster.node("node1")
    limits = ResourceLimits(memory_mb=256, cpu_percent=50, pids=64, disk_mb=16, time_seconds=60)
    nodes = list_nodes(manager)
    chosen = place(Need.of_limits("t", limits.memory_mb, limits.cpu_percent),
                   [n for n in nodes if n.hostname == "node1"], reserved_by_sessions(manager))
    assert chosen is not None and chosen.id == worker.node_id
    started = time.monotonic()
    volume = create_node_volume(manager, worker.node_id, "sw-enospc", limits.disk_mb, 1000,
                                1000, {"agentrt.run": "r-swarm"})
    created_s = time.monotonic() - started
    service = None
    try:
        assert volume.root == "/var/lib/docker/agentrt/sessions/sw-enospc/volume"
        assert f" {volume.root} ext4 " in worker.exec("cat /proc/mounts")
        assert volume.root not in swarm_cluster.node("node2").exec("cat /proc/mounts")
        assert worker.client.volumes.get(volume.name).attrs["Labels"]["agentrt.run"] == "r-swarm"
        script = ("sleep 2; ls /sys/class/net; cat /sys/fs/cgroup/pids/pids.max; "
                  "grep CapEff /proc/self/status; id -u; touch /x 2>/dev/null || echo ro-root; "
                  "dd if=/dev/zero of=/workspace/big bs=1M count=40 2>&1; echo dd=$?")
        plan = ContainerPlan(
            session_id="sw-enospc", run_id="r-swarm", image=BASE, command=["sh", "-c", script],
            limits=limits, uid=1000,
            gid=1000, mounts=tuple(volume.mounts(db_target=None)), grace_seconds=2)
        api = str(manager.version()["ApiVersion"])
        service = manager.services.create(**session_service_spec(plan, worker.node_id, api))
        deadline = time.monotonic() + 10  # until the scheduler assigns the task
        while worker.node_id not in reserved_by_sessions(manager) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert reserved_by_sessions(manager)[worker.node_id].memory_bytes == 256 * 2**20
        task = _wait_task(service)
        assert task["NodeID"] == worker.node_id
        assert task_outcome(task)[:2] == ("complete", 0), task["Status"]
        inspected = worker.client.api.inspect_container(
            task["Status"]["ContainerStatus"]["ContainerID"])
        host = inspected["HostConfig"]
        assert host["PidsLimit"] == 64 and host["Memory"] == 256 * 2**20
        assert host["NanoCpus"] == 500_000_000 and host["CapDrop"] == ["ALL"]
        assert host["ReadonlyRootfs"] is True and host["Init"] is True
        assert inspected["Config"]["Labels"]["agentrt.session"] == "sw-enospc"
        assert inspected["Config"]["Labels"]["agentrt.run"] == "r-swarm"
        logs = b"".join(service.logs(stdout=True, stderr=True)).decode()
        lines = logs.split()
        assert lines[:2] == ["lo", "64"], logs  # no interface but lo; the pids limit
        assert "CapEff:\t0000000000000000" in logs and "\n1000\n" in logs
        assert "ro-root" in logs
        assert "No space left on device" in logs and "dd=1" in logs
    finally:
        if service is not None:
            service.remove()
        assert not _wait_gone(worker)
        started = time.monotonic()
        remove_node_volume(manager, worker.node_id, volume)
        removed_s = time.monotonic() - started
    assert not _wait_gone(worker)
    assert "agentrt" not in worker.exec("cat /proc/mounts")
    assert worker.exec("ls -A /var/lib/docker/agentrt/sessions").strip() == ""
    assert worker.client.volumes.list() == []
    assert manager.services.list() == []
    remove_node_volume(manager, worker.node_id, volume)  # idempotent
    print(f"node volume: created in {created_s:.1f} s, removed in {removed_s:.1f} s")


def test_a_session_with_a_network_interface_refuses_to_start(
        swarm_cluster: SwarmCluster) -> None:
    """Fail closed: a node that hands services an interface (here: an overlay network the
    test adds) gets the session's guard exit, and the agent's command never runs."""
    manager = swarm_cluster.manager.client
    worker = swarm_cluster.node("node2")
    network = manager.networks.create("agentrt-test-overlay", driver="overlay",
                                      labels={"agentrt.test": "swarm"})
    try:
        plan = ContainerPlan(
            session_id="sw-guard", run_id="r-swarm", image=BASE,
            command=["sh", "-c", "echo agent-ran"], limits=ResourceLimits(memory_mb=64),
            uid=1000, gid=1000,
            mounts=(Mount("/workspace", None, type="tmpfs"),))
        spec = session_service_spec(plan, worker.node_id, "1.41")
        spec["networks"] = [network.id]
        code, logs = run_one_shot(manager, spec, timeout=60)
        assert code == NETWORK_GUARD_EXIT, logs
        assert "must have none" in logs and "agent-ran" not in logs
    finally:
        _wait_gone(worker)
        network.remove()


def test_run_one_shot_returns_exit_code_and_both_streams(swarm_cluster: SwarmCluster) -> None:
    manager = swarm_cluster.manager.client
    spec = helper_service_spec(image=BASE, command=["sh", "-c", "echo out; echo err >&2; exit 3"],
                               node_id=swarm_cluster.node("node2").node_id,
                               labels={"agentrt.test": "one-shot"}, user="1000:1000")
    code, logs = run_one_shot(manager, spec, timeout=60)
    assert code == 3 and "out" in logs and "err" in logs
    assert manager.services.list() == []
    missing = helper_service_spec(image="agentrt/none-such:latest", command=["true"],
                                  node_id=swarm_cluster.node("node2").node_id, labels={})
    with pytest.raises(EngineError, match="still|ended rejected|ended failed"):
        run_one_shot(manager, missing, timeout=8)
    assert manager.services.list() == []


def _tiny_image(client: docker.DockerClient, ref: str) -> str:
    """A one-file image imported on ``client``'s engine; its id."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        body = f"{ref} {time.time()}\n".encode()
        info = tarfile.TarInfo("hello")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    repo, tag = ref.rsplit(":", 1)
    client.api.import_image_from_data(data.getvalue(), repository=repo, tag=tag)
    return str(client.images.get(ref).id)


def test_push_nodes_loads_the_exact_image_where_it_is_missing(
        swarm_cluster: SwarmCluster) -> None:
    source = swarm_cluster.manager.client  # the "local" engine of this test
    ref = "agentrt/tiny:test"
    image_id = _tiny_image(source, ref)
    urls = [n.url for n in swarm_cluster.workers]
    first = push_image(source, ref, urls)
    assert [(r.matches, r.loaded, r.image_id) for r in first] == [(True, True, image_id)] * 2
    for worker in swarm_cluster.workers:
        assert worker.client.images.get(ref).id == image_id
    again = push_image(source, ref, [*urls, "tcp://127.0.0.1:1"])
    assert [(r.matches, r.loaded) for r in again[:2]] == [(True, False)] * 2
    assert not again[2].matches and "127.0.0.1:1" in again[2].error

    # The CLI, and doctor's swarm checks, against the manager as DOCKER_HOST.
    from runtime.cli.main import main

    env = {"DOCKER_HOST": swarm_cluster.manager.url, "DOCKER_CONTEXT": "",
           "AGENTRT_SWARM_NODES": " ".join(urls)}
    from runtime.engine.discovery import reset_client

    # In-process, the CLI uses the process's shared client: connect it to the manager for
    # this call (an earlier test may have made it for the local engine), then forget it.
    reset_client()
    try:
        result = CliRunner().invoke(main, ["images", "push-nodes", ref, "--json"], env=env)
    finally:
        reset_client()
    assert result.exit_code == 0, result.output
    assert [r["matches"] for r in json.loads(result.stdout)] == [True, True]
    from runtime.run.doctor import run_checks

    checks = {c.name: c for c in run_checks(lambda: swarm_cluster.manager.client, None, urls)}
    assert checks["swarm"].status == "ok" and "manager of 3 nodes" in checks["swarm"].detail
    assert "node1 (worker, ready, active" in checks["swarm"].detail
    assert checks["swarm images"].status == "ok", checks["swarm images"]
    # Each node probed through the manager (no --node needed), as a run's preflight does.
    assert checks["swarm nodes"].status == "ok", checks["swarm nodes"]
    worker = swarm_cluster.workers[0]
    base_id = worker.client.images.get(BASE).id
    worker.client.images.get(image_id).tag(BASE)  # another image under the same name
    try:
        checks = {c.name: c for c in run_checks(lambda: swarm_cluster.manager.client, None,
                                                urls)}
        assert checks["swarm images"].status == "fail"
        assert f"{worker.url}: {image_id[:19]}" in checks["swarm images"].detail
        assert checks["swarm nodes"].status == "fail", checks["swarm nodes"]
        assert f"node {worker.hostname}:" in checks["swarm nodes"].detail
        assert "node node0" not in checks["swarm nodes"].detail
    finally:
        worker.client.images.get(base_id).tag(BASE)


def test_one_node_helper_makes_the_volume_then_runs_its_steps_or_undoes_it(
        swarm_cluster: SwarmCluster) -> None:
    """The volume and a further step (as the checkout is) in ONE helper service: the step's
    container runs as the agent's uid on the node's engine, in the helper task's network,
    after its gate opened; a step that fails leaves no volume behind."""
    manager = swarm_cluster.manager.client
    worker = swarm_cluster.node("node1")
    network = manager.networks.create("agentrt-test-steps", driver="overlay", internal=True)
    gated = {"url": "git://nowhere.invalid/x.git", "go": "refs/x", "stop": None, "timeout": 3,
             "on_timeout": "fail"}

    def step(script: str, gate: dict[str, Any] | None = None) -> Callable[[Any], list[NodeStep]]:
        return lambda volume: [NodeStep({
            "image": BASE, "command": ["sh", "-c", script], "user": "1000:1000",
            "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"],
            "network_mode": "container:@SELF@", "mounts": volume.mounts(db_target=None),
            "detach": True}, gate)]

    try:
        started = time.monotonic()
        volume = create_node_volume(
            manager, worker.node_id, "sw-steps", 16, 1000, 1000, then=step(
                "id -u > /workspace/who; ls /sys/class/net | tr '\\n' ' ' > /workspace/nets"),
            networks=[network.id])
        took = time.monotonic() - started
        root = volume.root
        assert worker.exec(f"cat {root}/workspace/who").strip() == "1000"
        assert "eth0" in worker.exec(f"cat {root}/workspace/nets")  # the helper's network
        assert manager.services.list() == []
        remove_node_volume(manager, worker.node_id, volume)
        for script, gate in (("exit 7", None), ("true", gated)):
            with pytest.raises(NodeStepFailed) as failed:
                create_node_volume(manager, worker.node_id, "sw-steps-bad", 16, 1000, 1000,
                                   then=step(script, gate), networks=[network.id])
            assert failed.value.step == 1
            assert "agentrt/sessions" not in worker.exec("cat /proc/mounts")
            assert worker.exec("ls -A /var/lib/docker/agentrt/sessions").strip() == ""
            assert worker.client.volumes.list() == []
    finally:
        for service in manager.services.list():
            service.remove()
        _wait_gone(worker)
        network.remove()
    assert manager.services.list() == []
    print(f"node volume and a step in one service: {took:.1f} s")


def test_a_node_helper_that_harvested_removes_the_volume_only_on_a_home_verdict(
        swarm_cluster: SwarmCluster) -> None:
    """The finishing helper runs its first step, then holds the volume until the exchange's
    read-only verdicts say home (removed) or keep (kept); nothing a helper can push opens it."""
    manager = swarm_cluster.manager.client
    worker = swarm_cluster.node("node2")
    exchange = Exchange.start(manager, "r-verdicts", swarm_cluster.manager.node_id)
    volume = create_node_volume(manager, worker.node_id, "sw-finish", 16, 1000, 1000)
    try:
        for home, sid_tail in ((False, "keep"), (True, "home")):
            forged = ("git init -q /tmp/f && cd /tmp/f && git -c user.name=a -c user.email=a@b "
                      "commit -q --allow-empty -m x && git push -q "
                      f"{exchange.verdicts_url} HEAD:refs/sw-finish/home 2>&1 || echo refused")
            step = NodeStep({"image": BASE, "command": ["sh", "-c", forged],
                             "user": "1000:1000", "environment": {"HOME": "/tmp"},
                             "network_mode": "container:@SELF@", "detach": True})
            gate = {"url": exchange.verdicts_url, "go": "refs/sw-finish/home",
                    "stop": "refs/sw-finish/keep", "timeout": 60, "on_timeout": "stop"}
            one_shot = start_node_finish(manager, worker.node_id, volume, step, gate,
                                         [exchange.network_id], 60)
            try:
                code, output = one_shot.wait(60, until="agentrt-node: step 0 exit=")
                assert code is None and "refused" in output, output  # it waits, unopened
                assert f" {volume.root} ext4 " in worker.exec("cat /proc/mounts")
                exchange.verdict("sw-finish", home)
                code, output = one_shot.wait(60)
            finally:
                one_shot.remove()
            assert code == 0, output
            mounted = f" {volume.root} ext4 " in worker.exec("cat /proc/mounts")
            assert mounted is not home, (sid_tail, output)
            exchange.forget("sw-finish")
        assert worker.client.volumes.list() == []
    finally:
        remove_node_volume(manager, worker.node_id, volume)
        exchange.stop()
        _wait_gone(worker)
    assert manager.services.list() == []
