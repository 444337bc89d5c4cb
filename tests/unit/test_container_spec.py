"""The container's run arguments come from the limits by a pure function."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import ResourceLimits
from runtime.engine.container import RUNSC_PIDS_HEADROOM, ContainerPlan, container_spec, tmpfs_mb
from runtime.errors import SessionError


def plan(**kw: object) -> ContainerPlan:
    fields: dict[str, object] = dict(
        session_id="a-123456", run_id="r1", image="agentrt/base:latest", command=["true"],
        limits=ResourceLimits(memory_mb=512, cpu_percent=150, pids=64, disk_mb=100),
        workspace=Path("/s/volume/workspace"), db_dir=Path("/s/volume/db"),
        objects_dir=Path("/repo/.git/objects"), uid=1000, gid=1000,
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
    assert readonly == {"/workspace": False, "/repo/.git/objects": True, "/agentrt/db": False}


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
