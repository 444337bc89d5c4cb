"""Colima (macOS, also Linux): size the ``agentrt`` profile from the per-agent limits.

The VM must hold ``max_concurrent_agents`` × the per-agent limits plus headroom for the engine,
the page cache and the images. Sizing is a pure function; :func:`colima_up` runs ``colima``.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from dataclasses import dataclass

from runtime.config import ResourceLimits
from runtime.errors import ConfigError, EngineError

PROFILE = "agentrt"
MEMORY_HEADROOM_MB = 2048
DISK_HEADROOM_GB = 20


@dataclass(frozen=True)
class ColimaSize:
    """CPUs, memory (GiB) and disk (GiB) of a Colima VM."""

    cpus: int
    memory_gib: int
    disk_gib: int

    def start_command(self, profile: str = PROFILE, platform: str = sys.platform) -> list[str]:
        """The ``colima start`` argv creating or resizing the profile."""
        argv = ["colima", "start", profile, "--cpu", str(self.cpus), "--memory",
                str(self.memory_gib), "--disk", str(self.disk_gib)]
        if platform == "darwin":
            # vz + virtiofs: the fastest file sharing; worktrees live on a shared mount.
            argv += ["--vm-type", "vz", "--mount-type", "virtiofs"]
        return argv


def size_for(agents: int, limits: ResourceLimits) -> ColimaSize:
    """The VM size that fits ``agents`` concurrent agents with ``limits`` each. Pure."""
    if agents < 1:
        raise ConfigError("--agents must be at least 1")
    cpus = max(2, math.ceil(agents * limits.cpu_percent / 100) + 1)
    memory_mb = agents * limits.memory_mb + MEMORY_HEADROOM_MB
    disk_gb = math.ceil(agents * limits.disk_mb / 1024) + DISK_HEADROOM_GB
    return ColimaSize(cpus=cpus, memory_gib=math.ceil(memory_mb / 1024), disk_gib=disk_gb)


def colima_up(size: ColimaSize, dry_run: bool = False) -> list[str]:
    """Create or resize the agentrt profile; return the command that was (or would be) run."""
    argv = size.start_command()
    if dry_run:
        return argv
    if shutil.which("colima") is None:
        raise EngineError("colima is not installed: `brew install colima docker`, then run "
                          "`agentrt colima up` again")
    # Resizing needs a stopped VM; stopping a profile that is not running is harmless.
    subprocess.run(["colima", "stop", PROFILE], check=False, capture_output=True)
    proc = subprocess.run(argv, check=False)
    if proc.returncode != 0:
        raise EngineError(f"`{' '.join(argv)}` failed with exit code {proc.returncode}")
    return argv
