"""The building blocks of the Swarm backend's keyed sessions (issue #26), each used directly on a
real three-node Swarm (see swarm.py): a real service made with them, not through agentrt's
session. What each test proves is in its name; the attack and its control sit side by side."""

from __future__ import annotations

import base64
import io
import json
import secrets
import time
from typing import Any

import docker
import docker.errors
import pytest
from docker.types import EndpointSpec, Mount, NetworkAttachmentConfig, RestartPolicy

from runtime.backends.base import secrets_text
from runtime.backends.swarm.egress import (
    egress_runs,
    remove_swarm_egress,
    start_egress_proxy,
    with_egress,
)
from runtime.backends.swarm.env_images import (
    deliver_image,
    image_on_nodes,
    node_engines,
    placeable_nodes,
)
from runtime.backends.swarm.node_checks import (
    NODE_SOCKET,
    check_nodes,
    collect_node_reports,
    report_from_engine,
)
from runtime.backends.swarm.nodes import list_nodes
from runtime.backends.swarm.secrets import (
    SECRET_PATH,
    create_session_secret,
    labelled_secrets,
    remove_left_over_secrets,
    remove_session_secret,
    secret_reference,
    with_secret,
)
from runtime.backends.swarm.service import OneShot, session_service_spec
from runtime.config import ResourceLimits
from runtime.engine.container import ContainerPlan
from runtime.engine.labels import LABEL_REPO, LABEL_RUN
from runtime.waiting import wait_until
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


def test_node_checks_pass_a_healthy_swarm_and_name_a_node_missing_an_image_or_its_socket(
        swarm_cluster: SwarmCluster) -> None:
    manager = swarm_cluster.manager.client
    base_id = str(manager.images.get(BASE).id)
    env_ref = "agentrt/parts-env:1"  # an environment image, on node0 and node1 only
    for node in swarm_cluster.nodes[:2]:
        node.client.images.get(BASE).tag(env_ref)
    nodes = list_nodes(manager)
    reports = collect_node_reports(manager, nodes, [BASE], labels=REPO_LABELS)
    assert [(r.hostname, r.socket_ok, r.interfaces, r.loop_control, r.images) for r in
            reports] == [(f"node{i}", True, ("lo",), True, {BASE: base_id}) for i in range(3)]
    assert check_nodes(reports, {BASE: base_id}) == []

    moved = swarm_cluster.node("node1")
    moved.exec("mv /var/run/docker.sock /var/run/docker-elsewhere.sock")
    try:
        reports = collect_node_reports(manager, nodes, [BASE, env_ref])
    finally:
        moved.exec("mv /var/run/docker-elsewhere.sock /var/run/docker.sock")
    problems = check_nodes(reports, {BASE: base_id, env_ref: base_id})
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"node node1: no Docker engine socket at {NODE_SOCKET}")
    assert "listen on unix:///var/run/docker.sock" in problems[0]
    assert problems[1].startswith(f"node node2: image {env_ref} is missing")
    assert "agentrt images push-nodes agentrt/parts-env:1" in problems[1]
    # The probes are gone; a socket the engine does not listen on is named the same way.
    assert not manager.services.list(filters={"label": "agentrt.role=node-check"})
    reports = collect_node_reports(manager, nodes[2:], [BASE], socket_path="/run/other.sock")
    assert check_nodes(reports, {BASE: base_id})[0].startswith(
        "node node2: no Docker engine socket at /run/other.sock")


def test_a_node_engine_reached_at_its_address_reports_images_and_no_default_bridge(
        swarm_cluster: SwarmCluster, docker_client: docker.DockerClient) -> None:
    node2 = swarm_cluster.node("node2")
    base_id = str(node2.client.images.get(BASE).id)
    report = report_from_engine("node2", node2.client, [BASE, "agentrt/absent:1"])
    assert (report.default_bridge, dict(report.images)) == (
        False, {BASE: base_id, "agentrt/absent:1": ""})
    # Control: an engine with a default bridge (the local one) is named with the fix.
    local = report_from_engine("local", docker_client, [])
    assert local.default_bridge is True
    assert "--bridge=none" in check_nodes([local], {})[0]


SERVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = sys.argv[1].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
"""

CLIENT = """
import os, socket, sys, urllib.error, urllib.request
def get(opener, url):
    try:
        with opener.open(url, timeout=10) as r:
            return "%s %s" % (r.status, r.read().decode())
    except urllib.error.HTTPError as e:
        return "http %s" % e.code
    except Exception as e:
        return "error %s" % e
proxied = urllib.request.build_opener()
direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
print("listed:", get(proxied, "http://listed-srv:8080/"))
print("unlisted:", get(proxied, "http://unlisted-srv:8080/"))
print("direct-name:", get(direct, "http://listed-srv:8080/"))
print("direct-ip:", get(direct, "http://%s:8080/" % sys.argv[1]))
print("neighbour:", get(direct, "http://%s:8080/" % sys.argv[2]))
for name in ("listed-srv", "agentrt-egress"):
    try:
        socket.getaddrinfo(name, 8080)
        print("dns", name, "resolves")
    except socket.gaierror:
        print("dns", name, "none")
print("interfaces:", sorted(os.listdir("/sys/class/net")), flush=True)
"""


def _plain_spec(name: str, command: list[str], node_id: str, network: str) -> dict[str, Any]:
    """A service on ``network`` alone, outside agentrt (the test's servers and control)."""
    return {"image": BASE, "command": command, "name": name,
            "networks": [NetworkAttachmentConfig(network)],
            "endpoint_spec": EndpointSpec(mode="dnsrr"), "constraints": [f"node.id=={node_id}"],
            "restart_policy": RestartPolicy(condition="none"), "labels": {LABEL_RUN: RUN}}


def _task_address(service: Any, network: str) -> str:
    def address() -> str:
        for task in service.tasks():
            if task["Status"]["State"] != "running":
                continue
            for attachment in task.get("NetworksAttachments") or ():
                if attachment["Network"]["Spec"]["Name"] == network:
                    return str(attachment["Addresses"][0].split("/")[0])
        return ""

    return wait_until(address, timeout=60, what=f"{service.name} to run")


def test_sessions_on_two_workers_reach_a_listed_server_only_through_the_swarm_egress_proxy(
        swarm_cluster: SwarmCluster, docker_client: docker.DockerClient) -> None:
    """Two sessions share their policy's proxy (and network: a neighbour listening there is
    reachable), one has a proxy of its own (the neighbour is not)."""
    manager = swarm_cluster.manager.client
    manager.images.load(b"".join(docker_client.images.get("agentrt/egress:latest").save(
        named="agentrt/egress:latest")))  # the proxy runs on the manager; only it needs it
    models = manager.networks.create("parts-models", driver="overlay", attachable=True)
    node2 = swarm_cluster.node("node2").node_id
    servers = [manager.services.create(**_plain_spec(
        name, ["python3", "-c", SERVER, f"hello-{name}"], node2, "parts-models"))
        for name in ("listed-srv", "unlisted-srv")]
    one_shots: list[OneShot] = []
    try:
        listed_ip = _task_address(servers[0], "parts-models")
        _task_address(servers[1], "parts-models")
        started = time.monotonic()
        proxy = start_egress_proxy(manager, RUN, ["listed-srv:8080"], ["parts-models"],
                                   node_id=swarm_cluster.manager.node_id, labels=REPO_LABELS)
        shared_s = time.monotonic() - started
        started = time.monotonic()
        own = start_egress_proxy(manager, RUN, ["listed-srv:8080"], ["parts-models"],
                                 node_id=swarm_cluster.manager.node_id, labels=REPO_LABELS,
                                 session_id="sp-egress-own")
        print(f"egress proxy ready in {shared_s:.1f} s (shared), "
              f"{time.monotonic() - started:.1f} s (a session's own)")
        assert manager.networks.get(proxy.internal_network).attrs["Internal"] is True
        assert own.internal_network != proxy.internal_network
        servers.append(manager.services.create(**_plain_spec(
            "parts-neighbour", ["python3", "-c", SERVER, "hello-neighbour"],
            swarm_cluster.node("node1").node_id, proxy.internal_network)))
        neighbour_ip = _task_address(servers[-1], proxy.internal_network)
        for hostname, behind in (("node1", proxy), ("node2", proxy), ("node2", own)):
            spec = session_spec(manager, f"sp-egress-{hostname}",
                                swarm_cluster.node(hostname).node_id, "true")
            spec = with_egress(spec, behind)
            spec["command"][-3:] = ["python3", "-c", CLIENT, listed_ip, neighbour_ip]
            one_shots.append(OneShot(manager, spec))
        # Control: on the models' network, with no proxy, both servers answer directly.
        one_shots.append(OneShot(manager, _plain_spec(
            "parts-direct", ["python3", "-c", CLIENT, listed_ip, listed_ip],
            swarm_cluster.node("node1").node_id, "parts-models")))
        # Attack on the guard: behind the proxy's env, but on the proxy's way out instead.
        escaping = with_egress(session_spec(manager, "sp-escape", node2, "echo agent-ran"),
                               proxy)
        escaping["networks"] = [NetworkAttachmentConfig(proxy.outbound_network)]
        one_shots.append(OneShot(manager, escaping))
        results = [o.wait(timeout=90) for o in one_shots]
        assert egress_runs(manager)[RUN][LABEL_REPO] == REPO_LABELS[LABEL_REPO]  # for gc
    finally:
        for one_shot in one_shots:
            one_shot.remove()
        for server in servers:
            server.remove()
        removed = remove_swarm_egress(manager, RUN)
    for code, output in results[:3]:
        assert code == 0, output
        assert "listed: 200 hello-listed-srv" in output, output
        assert "unlisted: http 403" in output, output
        assert "direct-name: error" in output and "direct-ip: error" in output, output
        assert "dns listed-srv none" in output and "dns agentrt-egress resolves" in output
        assert "interfaces: ['eth0', 'lo']" in output, output
    assert "neighbour: 200 hello-neighbour" in results[0][1]  # sharing the policy's network
    assert "neighbour: 200 hello-neighbour" in results[1][1]
    assert "neighbour: error" in results[2][1], results[2][1]  # on a network of its own
    code, output = results[3]
    assert code == 0, output
    assert "direct-name: 200 hello-listed-srv" in output, output
    assert "direct-ip: 200 hello-listed-srv" in output, output
    code, output = results[4]
    assert code == 97 and "route out" in output and "agent-ran" not in output, output
    assert sorted(removed) == sorted([proxy.service_name, own.service_name])
    left = manager.networks.list(filters={"label": [f"{LABEL_RUN}={RUN}",
                                                    "agentrt.role=egress"]})
    assert left == [] and RUN not in egress_runs(manager)
    wait_until(lambda: _removed(models), timeout=60, what="parts-models to go")


def _removed(network: Any) -> bool:
    try:
        network.remove()
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError:
        return False
    return True


def test_an_environment_image_built_on_the_manager_reaches_the_node_that_runs_it_by_id(
        swarm_cluster: SwarmCluster) -> None:
    manager = swarm_cluster.manager.client
    ref = "agentrt/env:parts-test"
    image, _ = manager.images.build(
        fileobj=io.BytesIO(b"FROM agentrt/base:latest\nLABEL agentrt.parts=env\n"), tag=ref,
        rm=True)
    nodes = list_nodes(manager)
    engines = node_engines([n.url for n in swarm_cluster.nodes])
    assert engines == {n.node_id: n.url for n in swarm_cluster.nodes}
    before = image_on_nodes(manager, ref, nodes)
    assert before.image_id == image.id
    assert [n.hostname for n in placeable_nodes(nodes, before)] == ["node0"]
    assert [line.split(":")[0] for line in before.problems] == ["node node1", "node node2"]

    node1 = [n for n in nodes if n.hostname == "node1"]
    delivered = deliver_image(manager, ref, node1, engines)
    assert [(d.matches, d.loaded, d.error) for d in delivered] == [(True, True, "")]
    after = image_on_nodes(manager, ref, nodes)
    assert [n.hostname for n in placeable_nodes(nodes, after)] == ["node0", "node1"]
    assert len(after.problems) == 1 and after.problems[0].startswith(
        f"node node2: image {ref} is missing, not {image.id[:19]}"), after.problems
    # Delivered again: nothing to load, the id is checked.
    again = deliver_image(manager, ref, node1, engines)
    assert [(d.matches, d.loaded) for d in again] == [(True, False)]
