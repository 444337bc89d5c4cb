"""Locating a container's cgroup never falls back to another process's (or the root) cgroup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.engine import cgroups


def test_a_pid_outside_the_container_is_not_taken_for_it(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cg"
    (root / "memory").mkdir(parents=True)
    (root / "cpuacct").mkdir()
    # Give this process's own cgroups a directory in the fake hierarchy (the root, "/", too).
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, rel = line.split(":", 2)
        for controller in ("memory", "cpuacct"):
            if controller in controllers.split(","):
                (root / controller / rel.lstrip("/")).mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", root)
    # This test process is not in a cgroup named after the container: nothing must be found,
    # not this process's own cgroup and not the hierarchy's root.
    found = cgroups.ContainerCgroup.for_pid(os.getpid(), "c0ffee" * 10)
    assert found is None or (found.memory_dir is None and found.cpu_dir is None)


def test_the_container_cgroup_is_found_by_id(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cg"
    cid = "ab" * 32
    (root / "memory" / "docker" / cid).mkdir(parents=True)
    (root / "memory" / "docker" / cid / "memory.max_usage_in_bytes").write_text("4096\n")
    (root / "memory" / "docker" / cid / "memory.usage_in_bytes").write_text("1024\n")
    (root / "memory" / "docker" / cid / "memory.oom_control").write_text("oom_kill 2\n")
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", root)
    found = cgroups.ContainerCgroup.for_pid(os.getpid(), cid)
    assert found is not None and found.memory_dir == root / "memory" / "docker" / cid
    reading = found.read()
    assert (reading.peak_memory_bytes, reading.memory_bytes, reading.oom_kills) == (4096, 1024, 2)


def test_a_running_containers_cgroup_is_found_by_its_id_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cg"
    cid, other = "cd" * 32, "ef" * 32
    (root / "memory" / "docker" / cid).mkdir(parents=True)
    (root / "cpuacct" / "system.slice" / f"docker-{cid}.scope").mkdir(parents=True)
    (root / "memory" / "docker" / other).mkdir(parents=True)  # no cpuacct directory
    monkeypatch.setattr(cgroups, "CGROUP_ROOT", root)
    found = cgroups.ContainerCgroup.for_container(cid)
    assert found is not None and found.version == 1
    assert found.memory_dir == root / "memory" / "docker" / cid
    assert found.cpu_dir == root / "cpuacct" / "system.slice" / f"docker-{cid}.scope"
    # Half a hierarchy, an unknown id or none: not found (the caller asks the engine instead).
    assert cgroups.ContainerCgroup.for_container(other) is None
    assert cgroups.ContainerCgroup.for_container("12" * 32) is None
    assert cgroups.ContainerCgroup.for_container("") is None
    (root / "cgroup.controllers").write_text("memory cpu\n")  # the unified hierarchy (v2)
    (root / "system.slice" / f"docker-{other}.scope").mkdir(parents=True)
    unified = cgroups.ContainerCgroup.for_container(other)
    assert unified is not None and unified.version == 2
    assert unified.memory_dir == unified.cpu_dir == root / "system.slice" / f"docker-{other}.scope"
