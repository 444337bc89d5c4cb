"""Per-session services (``[[run.services]]``) are held like sessions: a read-only root, no
capability their image does not need, and storage that is a tmpfs of a fixed size, so a
service filled to the brim costs the engine's disk nothing (issue #27, item 7)."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from runtime.engine.services import TMP_MB, SessionServices, remove_services, start_services
from runtime.environments import Healthcheck, Service

pytestmark = pytest.mark.docker

BASE = "agentrt/base:latest"
POSTGRES = "agentrt/postgres:latest"
MiB = 1024 * 1024
DATA = "/var/lib/postgresql/data"
# agentrt/postgres as an ordinary service: its own user, a cluster made in its writable
# (tmpfs) data directory, its socket in /tmp (/run is read-only).
PG_COMMAND = ["sh", "-c", f"initdb -D {DATA}/pg -U postgres --auth-local=trust -E UTF8 "
              f"--no-locale > /tmp/initdb.log 2>&1 && exec postgres -D {DATA}/pg -k /tmp "
              "-c listen_addresses=''"]


@pytest.fixture
def session_id(docker_client: docker.DockerClient) -> Iterator[str]:
    """A session id whose services are removed afterwards, even when the test fails."""
    sid = f"svc-hard-{secrets.token_hex(4)}"
    yield sid
    remove_services(docker_client, session_id=sid)


def _start(client: docker.DockerClient, service: Service, sid: str) -> tuple[SessionServices,
                                                                               Any]:
    made = start_services(client, [service], sid, {"agentrt.run": f"run-{sid}"})
    return made, client.containers.get(made.containers[service.name])


def _exec(container: Any, script: str, user: str = "") -> tuple[int, str]:
    result = container.exec_run(["sh", "-c", script], user=user)
    return int(result.exit_code), bytes(result.output).decode(errors="replace")


def _engine_disk_used() -> int:
    return shutil.disk_usage("/var/lib/docker").used


def test_a_service_has_a_read_only_root_no_capabilities_and_a_sized_tmp(
        docker_client: docker.DockerClient, session_id: str) -> None:
    """agentrt/base starts as its own user: no capability at all, limits from the service,
    a read-only root; writing / fails, writing /tmp works (the control) until its size."""
    web = Service(name="web", image=BASE, command=["sleep", "300"], memory_mb=128,
                  cpu_percent=30)
    made, container = _start(docker_client, web, session_id)
    host = docker_client.api.inspect_container(container.id)["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert (host["Memory"], host["MemorySwap"]) == (128 * MiB, 128 * MiB)
    assert host["NanoCpus"] == 300_000_000 and host["PidsLimit"] == 512
    assert host["Tmpfs"] == {"/tmp": f"size={TMP_MB}m,mode=1777"}
    code, out = _exec(container, "grep -E '^Cap(Eff|Prm|Bnd)' /proc/1/status")
    assert code == 0 and all(line.split()[1] == "0000000000000000"
                             for line in out.splitlines()), out

    code, out = _exec(container, "echo x > /owned; echo x > /etc/owned; echo x > /var/owned")
    assert code != 0 and out.count("Read-only file system") == 3, out
    code, out = _exec(container, "echo x > /tmp/owned && cat /tmp/owned")
    assert (code, out.strip()) == (0, "x")  # control: the service can write its /tmp

    before = _engine_disk_used()
    code, out = _exec(container, f"dd if=/dev/zero of=/tmp/fill bs=1M count={2 * TMP_MB} "
                                 "2>&1; stat -c %s /tmp/fill")
    assert "No space left on device" in out, out
    filled = int(out.split()[-1])
    assert TMP_MB * MiB - 2 * MiB <= filled <= TMP_MB * MiB, filled  # really filled, to the cap
    assert _engine_disk_used() - before < 16 * MiB  # a tmpfs: nothing reached the disk
    made.remove()
    assert not docker_client.containers.list(
        all=True, filters={"label": f"agentrt.service.session={session_id}"})


def test_postgres_runs_as_a_service_without_capabilities_and_its_data_cannot_pass_disk_mb(
        docker_client: docker.DockerClient, session_id: str) -> None:
    """Measured: agentrt/postgres (it starts as the postgres user) needs no capability and
    writes only its data directory and /tmp. Its data is a tmpfs of disk_mb: a table that
    would pass it fails with "No space left on device" and the engine's disk does not grow."""
    from runtime.engine.image_build import build_image

    build_image(docker_client, "postgres")
    ready = ["pg_isready", "-q", "-h", "/tmp"]
    db = Service(name="db", image=POSTGRES, command=PG_COMMAND, writable=[DATA], disk_mb=96,
                 memory_mb=384, healthcheck=Healthcheck(cmd=ready, interval=0.3, retries=60))
    made, container = _start(docker_client, db, session_id)
    host = docker_client.api.inspect_container(container.id)["HostConfig"]
    assert host["ReadonlyRootfs"] is True and not host["CapAdd"]
    assert host["Tmpfs"][DATA] == "size=96m,mode=0755,uid=100,gid=102"  # postgres's
    sql = 'psql -h /tmp -U postgres -X -At -v ON_ERROR_STOP=1 -c "$0"'

    def psql(query: str) -> tuple[int, str]:
        result = container.exec_run(["sh", "-c", sql, query], user="postgres")
        return int(result.exit_code), bytes(result.output).decode(errors="replace")

    assert psql("create table t (pad text)")[0] == 0
    # Control: 20 MB fits, so the writes are real and the server is healthy.
    code, out = psql("insert into t select repeat(md5(g::text), 32) "
                     "from generate_series(1, 20000) g")
    assert code == 0, out
    before = _engine_disk_used()
    code, out = psql("insert into t select repeat(md5(g::text), 32) "
                     "from generate_series(1, 200000) g")  # about 220 MB
    assert code != 0 and "No space left on device" in out, out
    assert _engine_disk_used() - before < 16 * MiB
    # PostgreSQL stops when it cannot write its WAL: the service is spoiled, for its own
    # session only; its data never grew past the tmpfs it was given.
    logs = container.logs(tail=50).decode(errors="replace")
    assert "No space left on device" in logs, logs
    made.remove()
