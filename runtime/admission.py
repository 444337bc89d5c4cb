"""Admission check: does the run's concurrent quota sum fit in what the engine offers?

The worst case is the ``max_concurrent_agents`` largest tasks running together. A run that
cannot fit fails before anything starts, with a message saying what would fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import docker

from runtime.config import RunConfig, Task
from runtime.errors import AdmissionError

# Leave room for the engine, the supervisor and page cache.
HEADROOM_BYTES = 512 * 1024 * 1024


def plan_fits(config: RunConfig, tasks: Sequence[Task], cpus: int, memory_bytes: int) -> str | None:
    """None when the run fits; else a message saying what fits and what to change. Pure."""
    if not tasks:
        return None
    slots = min(config.max_concurrent_agents, len(tasks))
    limits = [config.limits_for(t) for t in tasks]
    biggest_mem = sorted((lim.memory_mb for lim in limits), reverse=True)[:slots]
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
    widest = max(lim.cpu_percent for lim in limits)
    if widest > cpus * 100:
        return (
            f"cpu_percent {widest} asks for {math.ceil(widest / 100)} cores but the engine has "
            f"{cpus}; lower cpu_percent to at most {cpus * 100}"
        )
    return None


def check_admission(client: docker.DockerClient, config: RunConfig, tasks: Sequence[Task]) -> None:
    """Raise :class:`AdmissionError` if the run cannot fit in the engine."""
    from runtime.engine import engine_resources

    cpus, memory = engine_resources(client)
    message = plan_fits(config, tasks, cpus, memory)
    if message:
        raise AdmissionError(message)
