"""The container's run arguments come from the limits by a pure function."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from docker.types import Mount

from runtime.backends.docker.trees import EngineTree, HostTree
from runtime.config import ResourceLimits
from runtime.engine.container import (
    RUNSC_PIDS_HEADROOM,
    ContainerPlan,
    container_spec,
    ended_at_deadline,
    tmpfs_mb,
)
from runtime.engine.engine_volumes import EngineVolume
from runtime.engine.volumes import Volume
from runtime.errors import SessionError


def plan(**kw: object) -> ContainerPlan:
    fields: dict[str, object] = dict(
        session_id="a-123456", run_id="r1", image="agentrt/base:latest", command=["true"],
        limits=ResourceLimits(memory_mb=512, cpu_percent=150, pids=64, disk_mb=100),
        mounts=tuple(HostTree(Volume(Path("/s"), "loop", 100 * 1024 * 1024), 1000, 1000,
                              Path("/repo/.git/objects")).agent_mounts()),
        uid=1000, gid=1000,
    )
    fields.update(kw)
    return ContainerPlan(**fields)  # type: ignore[arg-type]


def test_limits_become_cgroup_quotas_without_swap() -> None:
    spec = container_spec(plan())
    assert spec["mem_limit"] == spec["memswap_limit"] == 512 * 1024 * 1024
    assert spec["nano_cpus"] == 1_500_000_000
    assert spec["pids_limit"] == 64


def test_hardening_is_always_on() -> None:
    spec = container_spec(plan())
    assert spec["read_only"] is True
    assert spec["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in spec["security_opt"]
    assert not any("seccomp" in opt for opt in spec["security_opt"])  # the default profile
    assert spec["user"] == "1000:1000"
    assert spec["network_mode"] == "none"
    assert spec["tmpfs"]["/tmp"].startswith("rw,nosuid,nodev,size=128m")
    assert spec["log_config"]["Config"]["max-size"] == "10m"
    assert spec["labels"]["agentrt.session"] == "a-123456"
    assert spec["labels"]["agentrt.run"] == "r1"
    sources = [m["Source"] for m in spec["mounts"]]
    assert not any("docker.sock" in s for s in sources)
    readonly = {m["Target"]: m["ReadOnly"] for m in spec["mounts"]}
    # The object store at a neutral path, never its host path (which the uid may not reach).
    assert readonly == {"/workspace": False, "/agentrt/objects": True, "/agentrt/db": False}
    store = next(m for m in spec["mounts"] if m["Target"] == "/agentrt/objects")
    assert store["Source"] == "/repo/.git/objects"


def test_an_engine_side_tree_binds_paths_of_the_engines_host_and_has_no_store() -> None:
    volume = EngineVolume("a-123456", "agentrt-vol-a-123456", "loop", 1 << 20,
                          "/var/lib/docker/agentrt/sessions/a-123456/volume")
    tree = EngineTree(None, volume, 1000, 1000)  # type: ignore[arg-type]  # no engine call
    spec = container_spec(plan(mounts=tuple(tree.agent_mounts()),
                               secrets_mount=tree.secrets_mount({"K": "v"})))
    mounts = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in spec["mounts"]}
    assert mounts == {"/workspace": (volume.root + "/workspace", False),
                      "/agentrt/db": (volume.root + "/db", False),
                      "/run/agentrt": (volume.root + "/secrets", False)}
    assert tree.store is None
    assert {m["Target"]: m["ReadOnly"] for m in tree.harvest_mounts()} == {"/workspace": True}


def test_bridge_network_only_when_asked_and_runsc_gets_pids_headroom() -> None:
    spec = container_spec(plan(network="bridge", runtime="runsc"))
    assert spec["network_mode"] == "bridge"
    assert spec["runtime"] == "runsc"
    assert spec["pids_limit"] == 64 + RUNSC_PIDS_HEADROOM
    assert "runtime" not in container_spec(plan())


def test_root_is_refused() -> None:
    with pytest.raises(SessionError):
        container_spec(plan(uid=0))


def test_tmpfs_size_is_bounded() -> None:
    assert tmpfs_mb(ResourceLimits(memory_mb=16)) == 16
    assert tmpfs_mb(ResourceLimits(memory_mb=100_000)) == 512


def test_the_agents_argv_is_wrapped_by_the_entry_point_with_its_deadline() -> None:
    limits = ResourceLimits(memory_mb=512, time_seconds=30)
    spec = container_spec(plan(command=["claude", "-p", "do it; rm -rf /"], limits=limits,
                               grace_seconds=5))
    assert spec["command"][:2] == ["sh", "-c"]
    # The container's own deadline trails agentrt's by the grace; the argv is passed unchanged.
    assert spec["command"][3:] == ["agentrt-entry", "35", "5", "claude", "-p", "do it; rm -rf /"]
    assert "timeout -k" in spec["command"][2]
    assert spec["labels"]["agentrt.time_seconds"] == "30"
    assert spec["labels"]["agentrt.grace_seconds"] == "5"


def test_secrets_come_as_a_mounted_directory_never_in_the_environment() -> None:
    secrets = Mount("/run/agentrt", "/s/secrets", type="bind", read_only=False)
    spec = container_spec(plan(secrets_mount=secrets, env={"PLAIN": "1"}))
    assert spec["environment"] == {"HOME": "/tmp", "TMPDIR": "/tmp", "PLAIN": "1"}
    mounts = {m["Target"]: (m["Source"], m["ReadOnly"]) for m in spec["mounts"]}
    # Read-write so the entry point can delete the file once it has read it.
    assert mounts["/run/agentrt"] == ("/s/secrets", False)
    assert "/run/agentrt" not in {m["Target"] for m in container_spec(plan())["mounts"]}


def test_the_engine_record_of_an_own_deadline_stop() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    after = t0 + timedelta(seconds=13)
    assert ended_at_deadline(124, t0, after, 3)
    assert ended_at_deadline(137, t0, after, 3)
    assert not ended_at_deadline(124, t0, t0 + timedelta(seconds=2), 3)  # too early: its own 124
    assert not ended_at_deadline(1, t0, after, 3)
    assert not ended_at_deadline(124, None, after, 3)
