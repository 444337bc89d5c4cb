"""The shared PostgreSQL server's side doors (issue #27, item 7): its data and temporary files
live on a volume of its own sized from the sessions' budgets, so a session that fills the
server fails inside that size, the engine's disk grows by at most the cap, and the server
goes on serving the other sessions; each role's connections are capped so no session takes
the others' share."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import docker
import pytest

from runtime.config import ResourceLimits, RunConfig
from runtime.databases.postgres import (
    connection_limit,
    create_shared_database,
    stop_shared_server,
)
from runtime.databases.postgres_server import (
    DATA_MOUNT,
    PGDATA,
    WAL_DIR,
    server_disk_mb,
    server_name,
    volume_id,
)
from runtime.engine.engine_volumes import engine_volume_mode, list_engine_volumes

pytestmark = pytest.mark.docker

MiB = 1024 * 1024


@pytest.fixture
def run_id(docker_client: docker.DockerClient) -> Iterator[str]:
    """A run id whose server (container, network, volume) is removed afterwards."""
    from runtime.engine.image_build import build_image

    build_image(docker_client, "postgres")
    if engine_volume_mode(docker_client) != "loop":
        pytest.skip("this engine cannot loop-mount: the server's volume is not size-limited")
    rid = f"r-pgdisk-{secrets.token_hex(4)}"
    yield rid
    stop_shared_server(rid, docker_client)


def _psql(server: Any, url: str, sql: str) -> tuple[int, str]:
    """``sql`` as the session's own role (its URL, password and all), over TCP from inside
    the server's container, as the agent would over its network."""
    parts = urlsplit(url)
    local = url.replace(f"@{parts.hostname}:", "@127.0.0.1:", 1)
    result = server.exec_run(["psql", local, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
                             user="postgres")
    return int(result.exit_code), bytes(result.output).decode(errors="replace")


def test_a_session_filling_the_shared_server_fails_inside_its_volume_and_the_others_go_on(
        docker_client: docker.DockerClient, run_id: str) -> None:
    config = RunConfig(database_strategy="shared", max_concurrent_agents=10, warm_pool=0,
                       resource_limits=ResourceLimits(disk_mb=16))
    cap_mb = server_disk_mb(config)
    assert cap_mb == 128 + 10 * 16
    before = shutil.disk_usage("/var/lib/docker").used
    first = create_shared_database(config, "s-fill", run_id, docker_client)
    second = create_shared_database(config, "s-other", run_id, docker_client)
    server = docker_client.containers.get(server_name(run_id))
    info = docker_client.api.inspect_container(server.id)
    host = info["HostConfig"]
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert WAL_DIR in host["Tmpfs"] and host["NanoCpus"] == 1_000_000_000
    [volume] = list_engine_volumes(docker_client, volume_id(run_id))
    assert volume.mode == "loop" and volume.limit_bytes == cap_mb * MiB
    assert any(m["Destination"] == DATA_MOUNT and m["Source"] == volume.db_dir
               for m in info["Mounts"])
    assert server.exec_run(["sh", "-c", "touch /owned"], user="postgres").exit_code != 0
    url, other = first.env["AGENT_DATABASE_URL"], second.env["AGENT_DATABASE_URL"]
    shown = server.exec_run(["psql", "-X", "-At", "-c", "show data_directory"], user="postgres")
    assert shown.output.decode() == f"{PGDATA}\n"
    assert _psql(server, url, "select rolconnlimit from pg_roles where rolname = current_user"
                 ) == (0, f"{connection_limit(config)}\n")
    assert connection_limit(config) == 197 // 10

    # Control: 60 MB fits, so the writes are real.
    fits = ("create table fits as select repeat(md5(g::text), 32) as pad "
            "from generate_series(1, 60000) g")
    assert _psql(server, url, fits)[0] == 0
    # The attack: a table of about 400 MB on a volume of 288 MiB.
    code, out = _psql(server, url, "create table fill as select repeat(md5(g::text), 32) "
                                   "as pad from generate_series(1, 400000) g")
    assert code != 0 and "No space left on device" in out, out
    df = server.exec_run(["df", "-m", DATA_MOUNT]).output.decode().split("\n")[1].split()
    assert int(df[1]) <= cap_mb, df
    assert shutil.disk_usage("/var/lib/docker").used - before < (cap_mb + 32) * MiB
    # The server goes on: the filler and its neighbour still get answers.
    assert _psql(server, other, "select 1") == (0, "1\n")
    assert _psql(server, url, "select count(*) from fits") == (0, "60000\n")
    stop_shared_server(run_id, docker_client)
    assert list_engine_volumes(docker_client, volume_id(run_id)) == []


def test_gc_removes_a_server_whose_start_a_kill_cut_short(
        docker_client: docker.DockerClient, run_id: str, tmp_path: Any) -> None:
    """Killed after the server's network and disk were made, before its container: gc of the
    repository (the run's owner gone) removes both, found by the network's labels."""
    import subprocess
    import sys

    from runtime.databases.postgres_server import server_labels
    from runtime.engine.engine_volumes import create_engine_volume
    from runtime.engine.labels import LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_REPO
    from runtime.engine.networks import create_internal_network
    from tests.conftest import make_repo

    repo = make_repo(tmp_path / "repo")
    dead_owner = {LABEL_REPO: str(repo), LABEL_OWNER_PID: "999999", LABEL_OWNER_START: "1"}
    labels = server_labels(run_id, dead_owner)
    create_internal_network(docker_client, server_name(run_id), labels)
    create_engine_volume(docker_client, volume_id(run_id), 16, 999, 999, labels=labels)
    # The control: what the kill left is there, and gc has something to find.
    assert docker_client.networks.list(names=[server_name(run_id)])
    assert list_engine_volumes(docker_client, volume_id(run_id))
    gc = subprocess.run([sys.executable, "-m", "runtime.cli", "gc", "--repo", str(repo)],
                        capture_output=True, text=True, timeout=120)
    assert gc.returncode == 0, gc.stderr
    assert not docker_client.networks.list(names=[server_name(run_id)]), gc.stdout
    assert not list_engine_volumes(docker_client, volume_id(run_id)), gc.stdout
