"""Admission check: does the run's concurrent quota sum fit in what the engine offers?

The worst case is the ``max_concurrent_agents`` largest tasks running together. A run that
cannot fit fails before anything starts, with a message saying what would fit.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from runtime.config import RunConfig, Task
from runtime.engine.types import EngineClient
from runtime.engine.volumes import VOLUMES_DIR_ENV
from runtime.errors import AdmissionError

# Leave room for the engine, the supervisor and page cache.
HEADROOM_BYTES = 512 * 1024 * 1024


def plan_fits(config: RunConfig, tasks: Sequence[Task], cpus: int, memory_bytes: int,
              free_disk_bytes: int | None = None,
              volumes_dir: Path | None = None) -> str | None:
    """None when the run fits; else a message saying what fits and what to change. Pure.

    Volumes are fully allocated up front (loop mode), so the filesystem holding them
    (``volumes_dir``, named in the message) must have ``free_disk_bytes`` for the largest
    ``max_concurrent_agents`` volumes at once, plus the ``warm_pool`` prepared ahead.
    """
    if not tasks:
        return None
    slots = min(config.max_concurrent_agents, len(tasks))
    limits = [config.limits_for(t) for t in tasks]
    # Each session's services run beside it: their memory counts with the session's.
    services_mb = sum(s.memory_mb for s in config.services)
    biggest_mem = sorted((lim.memory_mb + services_mb for lim in limits), reverse=True)[:slots]
    usable = max(0, memory_bytes - HEADROOM_BYTES)
    need = sum(biggest_mem) * 1024 * 1024
    if need > usable:
        per = max(biggest_mem)
        fit = usable // (per * 1024 * 1024)
        return (
            f"[run] max_concurrent_agents: {slots} agents of up to {per} MB need {need >> 20} MB "
            f"but the engine offers {usable >> 20} MB (after {HEADROOM_BYTES >> 20} MB headroom); "
            f"at most {fit} agents of {per} MB fit. Lower max_concurrent_agents or memory_mb, "
            f"or on macOS run `agentrt colima up --agents {slots}`"
        )
    # Sessions prepared ahead (the warm pool) hold their volumes too.
    volumes = min(slots + config.warm_pool, len(tasks))
    biggest_disk = sorted((lim.disk_mb for lim in limits), reverse=True)[:volumes]
    if free_disk_bytes is not None and sum(biggest_disk) * 1024 * 1024 > free_disk_bytes:
        return (
            f"disk_mb: {volumes} volumes of up to {max(biggest_disk)} MB need "
            f"{sum(biggest_disk)} MB but only {free_disk_bytes >> 20} MB are free in "
            f"{volumes_dir or 'the volumes directory'}; lower disk_mb or max_concurrent_agents, "
            f"free space, lower warm_pool, or put volumes elsewhere ({VOLUMES_DIR_ENV} or [run] "
            "volumes_dir)"
        )
    widest = max(lim.cpu_percent for lim in limits)
    if widest > cpus * 100:
        return (
            f"cpu_percent {widest} asks for {math.ceil(widest / 100)} cores but the engine has "
            f"{cpus}; lower cpu_percent to at most {cpus * 100}"
        )
    return None


def volumes_free_bytes(volumes_dir: Path) -> int:
    """Free bytes of the filesystem that will hold ``volumes_dir`` (its nearest existing
    ancestor when it does not exist yet)."""
    existing = next((p for p in (volumes_dir, *volumes_dir.parents) if p.exists()), Path("/"))
    return shutil.disk_usage(existing).free


def check_admission(client: EngineClient, config: RunConfig, tasks: Sequence[Task],
                    state_dir: Path | None = None) -> None:
    """Raise :class:`AdmissionError` if the run cannot fit in the engine (or on the disk).

    The disk measured is the one the volumes go to (``AGENTRT_VOLUMES_DIR``, else
    ``[run] volumes_dir``, else ``state_dir``); ConfigError if that path is relative.
    """
    from runtime.engine.discovery import engine_resources
    from runtime.engine.volumes import default_mode, resolve_volumes_root

    cpus, memory = engine_resources(client)
    free = None
    root = None
    if state_dir is not None and default_mode() == "loop":
        root = resolve_volumes_root(state_dir, config.volumes_dir,
                                    os.environ.get(VOLUMES_DIR_ENV))
        free = volumes_free_bytes(root)
    message = plan_fits(config, tasks, cpus, memory, free, root)
    if message:
        raise AdmissionError(message)
