"""The shared PostgreSQL server's container, disk and connection rules (pure)."""

from __future__ import annotations

from runtime.config import ResourceLimits, RunConfig
from runtime.databases.postgres import AGENT_CONNECTION_LIMIT, connection_limit
from runtime.databases.postgres_server import (
    DATA_MOUNT,
    SERVER_BASE_MB,
    WAL_DIR,
    server_disk_mb,
    server_spec,
)
from runtime.engine.engine_volumes import EngineVolume
from runtime.engine.services import ImageFacts


def test_the_server_disk_is_the_sessions_budgets_plus_the_cluster() -> None:
    config = RunConfig(max_concurrent_agents=3, resource_limits=ResourceLimits(disk_mb=100))
    assert server_disk_mb(config) == SERVER_BASE_MB + 300


def test_a_role_gets_its_share_of_the_servers_connections() -> None:
    assert connection_limit(RunConfig(max_concurrent_agents=2, warm_pool=1)) == \
        AGENT_CONNECTION_LIMIT
    assert connection_limit(RunConfig(max_concurrent_agents=18, warm_pool=2)) == 197 // 20
    assert connection_limit(RunConfig(max_concurrent_agents=500, warm_pool=0)) == 2
    assert connection_limit(RunConfig(max_concurrent_agents=500,
                                      database_url="postgresql://a@h/d")) == \
        AGENT_CONNECTION_LIMIT


def test_the_server_writes_only_its_volume_and_small_tmpfs() -> None:
    volume = EngineVolume("db-r1", "agentrt-vol-db-r1", "loop", 1, "/st/sessions/db-r1/volume")
    spec = server_spec("r1", volume, ImageFacts(user="postgres", uid=100, gid=102), "v")
    assert spec["read_only"] is True and spec["cap_drop"] == ["ALL"] and "cap_add" not in spec
    assert spec["user"] == "postgres" and spec["nano_cpus"] == 1_000_000_000
    [mount] = spec["mounts"]  # type: ignore[misc]
    assert (mount["Target"], mount["Source"]) == (DATA_MOUNT, "/st/sessions/db-r1/volume/db")
    tmpfs = spec["tmpfs"]
    assert isinstance(tmpfs, dict) and set(tmpfs) == {WAL_DIR, "/run/postgresql", "/tmp"}
    assert "uid=100,gid=102" in tmpfs[WAL_DIR]
