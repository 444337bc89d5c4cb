"""Reading a container's cgroup (v1 and v2): peak memory, CPU time, OOM kills.

Docker does not report a container's cgroup path, so it is found from ``/proc/<pid>/cgroup`` of
the container's init process while it runs. Reads never raise: a vanished cgroup reads as None.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class CgroupReading:
    """One sample of a container's cgroup counters."""

    memory_bytes: int | None = None
    peak_memory_bytes: int | None = None
    cpu_seconds: float | None = None
    oom_kills: int | None = None


def cgroup_version() -> int:
    """2 on a unified hierarchy, else 1."""
    return 2 if (CGROUP_ROOT / "cgroup.controllers").exists() else 1


def _read(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        return path.read_text()
    return None


def _int(path: Path) -> int | None:
    text = _read(path)
    with contextlib.suppress(TypeError, ValueError):
        return int(str(text).strip())
    return None


def _keyed(path: Path, key: str) -> int | None:
    text = _read(path)
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            with contextlib.suppress(ValueError):
                return int(parts[1])
    return None


@dataclass
class ContainerCgroup:
    """Where one container's cgroup lives on this host."""

    version: int
    memory_dir: Path | None
    cpu_dir: Path | None

    @classmethod
    def for_pid(cls, pid: int, container_id: str = "") -> ContainerCgroup | None:
        """Locate the cgroup of process ``pid`` (the container's init); None if unknowable."""
        text = _read(Path(f"/proc/{pid}/cgroup")) if pid > 0 else None
        if not text:
            return None
        version = cgroup_version()
        memory_dir = cpu_dir = None
        for line in text.splitlines():
            _, controllers, rel = line.split(":", 2)
            rel = rel.lstrip("/")
            if version == 2 and controllers == "":
                memory_dir = cpu_dir = _existing(CGROUP_ROOT / rel, container_id, "")
            elif "memory" in controllers.split(","):
                memory_dir = _existing(CGROUP_ROOT / "memory" / rel, container_id, "memory")
            elif "cpuacct" in controllers.split(","):
                cpu_dir = _existing(CGROUP_ROOT / "cpuacct" / rel, container_id, "cpuacct")
        return cls(version, memory_dir, cpu_dir)

    @classmethod
    def for_container(cls, container_id: str) -> ContainerCgroup | None:
        """The cgroup of a running container found by its id where Docker's cgroupfs or
        systemd driver puts it (no engine call, no pid); None unless every controller's
        directory is there."""
        if not container_id:
            return None

        def at(base: Path) -> Path | None:
            for candidate in (base / "docker" / container_id,
                              base / "system.slice" / f"docker-{container_id}.scope"):
                if candidate.is_dir():
                    return candidate
            return None

        if cgroup_version() == 2:
            unified = at(CGROUP_ROOT)
            return cls(2, unified, unified) if unified else None
        memory_dir, cpu_dir = at(CGROUP_ROOT / "memory"), at(CGROUP_ROOT / "cpuacct")
        return cls(1, memory_dir, cpu_dir) if memory_dir and cpu_dir else None

    def read(self) -> CgroupReading:
        """Sample the counters now."""
        reading = CgroupReading()
        if self.version == 1:
            if self.memory_dir:
                reading.memory_bytes = _int(self.memory_dir / "memory.usage_in_bytes")
                reading.peak_memory_bytes = _int(self.memory_dir / "memory.max_usage_in_bytes")
                reading.oom_kills = _keyed(self.memory_dir / "memory.oom_control", "oom_kill")
            if self.cpu_dir:
                usage = _int(self.cpu_dir / "cpuacct.usage")
                reading.cpu_seconds = usage / 1e9 if usage is not None else None
        elif self.memory_dir:
            reading.memory_bytes = _int(self.memory_dir / "memory.current")
            reading.peak_memory_bytes = _int(self.memory_dir / "memory.peak")
            reading.oom_kills = _keyed(self.memory_dir / "memory.events", "oom_kill")
            usec = _keyed(self.memory_dir / "cpu.stat", "usage_usec")
            reading.cpu_seconds = usec / 1e6 if usec is not None else None
        return reading


def _existing(path: Path, container_id: str, controller: str) -> Path | None:
    """The cgroup directory, also when this process lives in a cgroup namespace.

    Inside a namespace ``/proc/<pid>/cgroup`` is relative to our own root, so fall back to
    searching the well-known Docker locations for the container id.
    """
    # Docker's cgroup paths (cgroupfs and systemd drivers alike) contain the container id; a
    # path without it belongs to some other process that reused the pid, or is the root.
    if path.is_dir() and (not container_id or container_id in str(path)):
        return path
    if not container_id:
        return None
    base = CGROUP_ROOT / controller if controller else CGROUP_ROOT
    for candidate in (
        base / "docker" / container_id,
        base / "system.slice" / f"docker-{container_id}.scope",
    ):
        if candidate.is_dir():
            return candidate
    with contextlib.suppress(OSError):
        for found in base.glob(f"**/*{container_id}*"):
            if found.is_dir():
                return found
    return None


def engine_stats_reading(stats: dict[str, Any]) -> CgroupReading:
    """A reading from the engine's stats API (``one_shot``), for an engine whose cgroup files
    are not on this host. Pure. cgroup v1 reports ``max_usage``; v2 engines do not."""
    memory = stats.get("memory_stats") or {}
    cpu = (stats.get("cpu_stats") or {}).get("cpu_usage") or {}
    usage = memory.get("usage")
    peak = memory.get("max_usage")
    total = cpu.get("total_usage")
    return CgroupReading(
        memory_bytes=int(usage) if usage is not None else None,
        peak_memory_bytes=int(peak) if peak is not None else None,
        cpu_seconds=int(total) / 1e9 if total is not None else None,
        oom_kills=int((memory.get("stats") or {}).get("oom_kill", 0)) or None,
    )
