"""Session networks give the host no address: a listener on the host's 0.0.0.0 is out of reach.

A listener bound by the test on a random port of every host address; a session on each network
kind agentrt makes (the allowlist's, the services', the shared database's) tries the host
through its network's gateway, ``docker0`` (172.17.0.1) and the host's own address. The
control: a container on a plain bridge network reaches the same listener.
"""

from __future__ import annotations

import http.server
import shlex
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.engine.networks import engine_holds_the_host_out, holds_the_host_out
from runtime.environments import Service
from runtime.models import SessionStatus
from tests.conftest import git
from tests.integration.helpers import by_task, run_tasks, sh

pytestmark = pytest.mark.docker

# Prints one line per address: "<ip> reached" or "<ip> blocked". The network's gateway is read
# from the container's routes (its default route, or its subnet's first address).
PROBE = r"""
import socket, struct, sys
def gateway():
    for line in open('/proc/net/route').read().splitlines()[1:]:
        f = line.split()
        if f[1] == '00000000' and f[2] != '00000000':
            return socket.inet_ntoa(struct.pack('<L', int(f[2], 16)))
    for line in open('/proc/net/route').read().splitlines()[1:]:
        f = line.split()
        if f[0] != 'lo' and f[1] != '00000000':
            net = struct.unpack('<L', struct.pack('<L', int(f[1], 16)))[0]
            return socket.inet_ntoa(struct.pack('<L', net + (1 << 24)))
for ip in [gateway(), '172.17.0.1', sys.argv[2]]:
    try:
        socket.create_connection((ip, int(sys.argv[1])), timeout=2).close()
        print(ip, 'reached')
    except OSError:
        print(ip, 'blocked')
"""


@pytest.fixture
def listener() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()


def host_ip() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: it picks the outgoing address
        return str(probe.getsockname()[0])


def probe_script(port: int) -> str:
    return f"python3 -c {shlex.quote(PROBE)} {port} {host_ip()} > reach.txt 2>&1"


def test_the_engine_makes_session_networks_without_a_host_address(docker_client: Any) -> None:
    assert engine_holds_the_host_out(docker_client)
    assert not holds_the_host_out({"Internal": True, "Driver": "bridge", "Options": {}})


def test_no_session_network_reaches_the_host(repo: Path, listener: int,
                                             docker_client: Any) -> None:
    web = Service(name="web", image="agentrt/base:latest", command=["sleep", "60"],
                  memory_mb=64)
    tasks = [sh("allow", probe_script(listener), network="allowlist",
                egress_allow=["example.com"]),
             sh("svc", probe_script(listener))]
    report = run_tasks(repo, tasks, services=[web], max_concurrent_agents=2)
    shared = run_tasks(repo, [sh("db", probe_script(listener))], database_strategy="shared")
    results = {**by_task(report), **by_task(shared)}
    for name, result in results.items():
        assert result.status is SessionStatus.SUCCEEDED, (name, result.reason)
        lines = git(repo, "show", f"{result.branch}:reach.txt").split("\n")
        probes = [line.split() for line in lines if line.strip()]
        assert len(probes) == 3, (name, lines)
        assert all(state == "blocked" for _ip, state in probes), (name, probes)
    # Controls: a plain bridge network, and an internal one without agentrt's option (what
    # sessions had before), both reach the same listener: the attack is real.
    for name, internal in (("agentrt-test-plain-bridge", False),
                           ("agentrt-test-internal-only", True)):
        network = docker_client.networks.create(name, driver="bridge", internal=internal)
        try:
            output = docker_client.containers.run(
                "agentrt/base:latest", ["python3", "-c", PROBE, str(listener), host_ip()],
                network=network.name, remove=True).decode()
        finally:
            network.remove()
        assert "reached" in output, (name, output)
