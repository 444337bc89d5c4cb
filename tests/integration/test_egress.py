"""network = "allowlist": a real run, its egress proxy, and every way around it, each attack
next to a control that shows the attack is real.

The test makes its own internal network with two small stdlib HTTP servers (``ok``: allowed,
``bad``: not allowed) and lists it in ``egress_networks``. Two sessions of one run then try:
the allowed server through the proxy (works), the other server through the proxy (403 from
the proxy), a CONNECT to pypi.org (403 before the proxy resolves or contacts anything: its log
shows the refusal and no connection), the allowed server's IP directly (no route), and each
other (no route; a control from the proxy's side shows the listener was there). Nothing
outside the containers and networks this test makes is ever contacted.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from runtime.config import RunConfig, Task
from runtime.egress_rules import PROXY_PORT
from runtime.engine.egress import ROLE_EGRESS
from runtime.errors import ConfigError
from runtime.models import SessionResult, SessionStatus
from runtime.run.coordinator import AgentCoordinator
from tests.conftest import git

pytestmark = pytest.mark.docker

BASE = "agentrt/base:latest"

# One script for both sessions (ROLE=a listens on :9000 and waits to be released; ROLE=b
# attacks a). Results go to result.json in the workspace, so they come home on the branch.
AGENT = r'''
import http.server, json, os, socket, threading, time, urllib.error, urllib.request
PROXY_PORT = int(os.environ["HTTPS_PROXY"].rsplit(":", 1)[1])
role, ok, bad, ok_ip = (os.environ[k] for k in ("ROLE", "OK_HOST", "BAD_HOST", "OK_IP"))
out = {"https_proxy": os.environ.get("HTTPS_PROXY"), "no_proxy": os.environ.get("NO_PROXY")}

def get(url, proxy=True):
    handlers = [] if proxy else [urllib.request.ProxyHandler({})]
    try:
        with urllib.request.build_opener(*handlers).open(url, timeout=5) as r:
            return [r.status, r.read().decode()[:200]]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode(errors="replace")[:200]]
    except Exception as e:
        return ["error", type(e).__name__ + ": " + str(e)[:200]]

def connect(target):
    with socket.create_connection(("agentrt-egress", PROXY_PORT), timeout=5) as s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return s.recv(200).split(b"\r\n")[0].decode()

def direct(ip, port):
    try:
        socket.create_connection((ip, port), timeout=3).close()
        return "connected"
    except OSError as e:
        return type(e).__name__ + ": " + str(e)

def wait_for(name):
    for _ in range(300):
        status, body = get(f"http://{ok}:8080/{name}")
        if status == 200:
            return body.strip()
        time.sleep(0.1)
    raise SystemExit(f"{name} never came")

out["allowed"] = get(f"http://{ok}:8080/token.txt")
out["denied"] = get(f"http://{bad}:8080/token.txt")
out["connect_allowed"] = connect(f"{ok}:8080")
out["connect_pypi"] = connect("pypi.org:443")
out["direct_ok_ip"] = direct(ok_ip, 8080)
out["direct_ok_ip_http"] = get(f"http://{ok_ip}:8080/token.txt", proxy=False)
if role == "a":
    server = http.server.HTTPServer(("0.0.0.0", 9000), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    wait_for("release")
else:
    ip_a = wait_for("ip-a")
    out["direct_a"] = direct(ip_a, 9000)
    out["proxy_a"] = get(f"http://{ip_a}:9000/")
json.dump(out, open("result.json", "w"))
'''

# A probe the test runs itself (in the proxy, or on the servers' network): connect and GET.
PROBE = r'''
import socket, sys, urllib.request
host, port = sys.argv[1], int(sys.argv[2])
try:
    socket.create_connection((host, port), timeout=3).close()
    print("connected")
except OSError as e:
    print("failed", e)
'''


def _ip(container: Any, network: str | None = None) -> str:
    container.reload()
    networks = container.attrs["NetworkSettings"]["Networks"]
    values = [networks[network]] if network else list(networks.values())
    return next((str(v["IPAddress"]) for v in values if v.get("IPAddress")), "")


def _probe(client: Any, container_id: str, host: str, port: int) -> str:
    exec_id = client.api.exec_create(container_id, ["python3", "-c", PROBE, host, str(port)])
    return client.api.exec_start(exec_id).decode().strip()


@pytest.fixture
def servers(docker_client: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A test network (internal: no route out) with an allowed and a disallowed HTTP server."""
    tag = secrets.token_hex(4)
    www = tmp_path / "www"
    www.mkdir(mode=0o755)
    token = secrets.token_hex(8)
    (www / "token.txt").write_text(token)
    for path in (www, www / "token.txt"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    net = docker_client.networks.create(f"egress-test-{tag}", driver="bridge", internal=True)
    made: list[Any] = []
    try:
        for role in ("ok", "bad"):
            made.append(docker_client.containers.run(
                BASE, ["python3", "-m", "http.server", "8080", "--directory", "/www"],
                name=f"egress-test-{role}-{tag}", network=net.name, detach=True,
                volumes={str(www): {"bind": "/www", "mode": "ro"}}, working_dir="/www"))
        ok, bad = made
        for server in made:  # ready when it answers on the test network
            for _ in range(100):
                if _probe(docker_client, server.id, "127.0.0.1", 8080) == "connected":
                    break
                time.sleep(0.1)
        yield {"net": net.name, "ok": ok, "bad": bad, "www": www, "token": token}
    finally:
        for container in made:
            container.remove(force=True)
        net.reload()
        net.remove()


def test_an_allowlist_run_reaches_only_what_it_allows(
        docker_client: Any, repo: Path, servers: dict[str, Any]) -> None:
    ok, bad, www = servers["ok"], servers["bad"], servers["www"]
    ok_ip = _ip(ok)
    # Controls from the servers' own network: both servers answer, directly and by IP.
    helper = bad.id
    assert _probe(docker_client, helper, ok.name, 8080) == "connected"
    assert _probe(docker_client, helper, ok_ip, 8080) == "connected"
    assert _probe(docker_client, ok.id, bad.name, 8080) == "connected"

    # The bare name opens CONNECT to port 443 too, so pypi.org:443 meets the filter itself.
    config = RunConfig(network="allowlist", egress_allow=[f"{ok.name}:8080", ok.name],
                       egress_networks=[servers["net"]], merge="none",
                       conflict_radar_seconds=0, max_concurrent_agents=2,
                       resource_limits={"memory_mb": 256, "time_seconds": 90})
    env = {"OK_HOST": ok.name, "BAD_HOST": bad.name, "OK_IP": ok_ip}
    tasks = [Task(id=role, command=["python3", "-c", AGENT], env={**env, "ROLE": role})
             for role in ("a", "b")]
    coordinator = AgentCoordinator(config=config, repo=repo, client=docker_client)
    seen: dict[str, Any] = {}

    def proxy() -> Any:
        found = docker_client.containers.list(filters={"label": [
            f"agentrt.run={coordinator.run_id}", f"agentrt.role={ROLE_EGRESS}"]})
        return found[0]

    def introduce_a(session_id: str) -> None:
        # Once a listens (seen from the proxy, which shares a's network), tell b where it is.
        container = docker_client.containers.list(
            all=True, filters={"label": f"agentrt.session={session_id}"})[0]
        for _ in range(200):
            ip = _ip(container)
            if ip and _probe(docker_client, proxy().id, ip, 9000) == "connected":
                seen["a_from_proxy"] = "connected"
                (www / "ip-a").write_text(ip)
                (www / "ip-a").chmod(0o644)
                return
            time.sleep(0.1)
        seen["a_from_proxy"] = "a never listened"
        (www / "ip-a").write_text("0.0.0.0")

    def listener(event: str, result: SessionResult) -> None:
        if event == "running" and result.task_id == "a":
            threading.Thread(target=introduce_a, args=(result.id,), daemon=True).start()
        if event == "finished" and result.task_id == "b":
            seen["proxy_log"] = proxy().logs().decode(errors="replace")
            seen["proxy_networks"] = sorted(proxy().attrs["NetworkSettings"]["Networks"])
            (www / "release").write_text("go")
            (www / "release").chmod(0o644)

    coordinator.listener = listener
    started = time.monotonic()
    report = coordinator.run_agents(tasks)
    took = time.monotonic() - started
    by_task = {s.task_id: s for s in report.sessions}
    assert all(s.status is SessionStatus.SUCCEEDED for s in report.sessions), [
        (s.task_id, s.status, s.reason,
         s.warnings)
        for s in report.sessions]
    results = {t: json.loads(git(repo, "show", f"{by_task[t].branch}:result.json"))
               for t in ("a", "b")}
    for task_id, out in results.items():
        assert out["https_proxy"] == f"http://agentrt-egress:{PROXY_PORT}", task_id
        assert "localhost" in out["no_proxy"]
        # Allowed through the proxy; the same request to the other server is the proxy's 403.
        assert out["allowed"] == [200, servers["token"]], out
        assert out["denied"][0] == 403 and "Filtered" in out["denied"][1], out
        # CONNECT: the allowed host:port is tunnelled, pypi.org is refused.
        assert out["connect_allowed"].split()[1] == "200", out
        assert out["connect_pypi"].split()[1] == "403", out
        # No route but the proxy: the allowed server's own IP is unreachable directly.
        assert out["direct_ok_ip"] != "connected", out
        assert out["direct_ok_ip_http"][0] == "error", out
    # Sessions cannot reach each other: a listened (the proxy reached it), b could not.
    assert seen["a_from_proxy"] == "connected"
    assert results["b"]["direct_a"] != "connected", results["b"]
    assert results["b"]["proxy_a"][0] == 403, results["b"]
    # pypi.org was refused by the filter, never resolved or contacted.
    log = seen["proxy_log"]
    assert 'refused on filtered url "pypi.org:443"' in log
    assert 'Established connection to host "pypi.org"' not in log
    assert f'Established connection to host "{ok.name}"' in log  # the control
    assert servers["net"] in seen["proxy_networks"]
    # Everything of the egress went with the run.
    labels = [f"agentrt.run={coordinator.run_id}", f"agentrt.role={ROLE_EGRESS}"]
    assert docker_client.containers.list(all=True, filters={"label": labels}) == []
    assert docker_client.networks.list(filters={"label": labels}) == []
    assert took < 60


def test_a_missing_egress_network_is_refused_before_anything_starts(
        docker_client: Any, repo: Path) -> None:
    missing = f"no-such-net-{secrets.token_hex(4)}"
    config = RunConfig(network="allowlist", egress_allow=["models.internal:8080"],
                       egress_networks=[missing])
    coordinator = AgentCoordinator(config=config, repo=repo, client=docker_client)
    with pytest.raises(ConfigError, match=rf"\[run\] field egress_networks: .*{missing}"):
        coordinator.preflight([Task(id="a", command=["true"])])
    with pytest.raises(docker.errors.NotFound):
        docker_client.networks.get(f"agentrt-egress-{coordinator.run_id}")


def test_an_agent_preset_without_a_network_fails_in_preflight(
        docker_client: Any, repo: Path) -> None:
    coordinator = AgentCoordinator(config=RunConfig(), repo=repo, client=docker_client)
    with pytest.raises(ConfigError, match=r"task 'x': field network: .*allowlist"):
        coordinator.preflight([Task(id="x", agent="claude-code", prompt="hi")])
