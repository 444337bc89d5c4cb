"""Admission check and Colima sizing are pure arithmetic over the limits."""

from __future__ import annotations

from pathlib import Path

from runtime.backends.docker.admission import plan_fits
from runtime.config import ResourceLimits, RunConfig, Task
from runtime.engine.colima import size_for

GIB = 1024**3


def tasks(n: int) -> list[Task]:
    return [Task(id=f"t{i}", command=["true"]) for i in range(n)]


def test_run_that_fits_passes() -> None:
    config = RunConfig(max_concurrent_agents=3, resource_limits=ResourceLimits(memory_mb=1024))
    assert plan_fits(config, tasks(5), cpus=4, memory_bytes=8 * GIB) is None


def test_run_that_does_not_fit_says_what_fits() -> None:
    config = RunConfig(max_concurrent_agents=5, resource_limits=ResourceLimits(memory_mb=2048))
    message = plan_fits(config, tasks(5), cpus=4, memory_bytes=8 * GIB)
    assert message is not None
    assert "at most 3 agents of 2048 MB fit" in message
    assert "agentrt colima up --agents 5" in message


def test_only_as_many_slots_as_tasks_count() -> None:
    config = RunConfig(max_concurrent_agents=10, resource_limits=ResourceLimits(memory_mb=2048))
    assert plan_fits(config, tasks(2), cpus=2, memory_bytes=8 * GIB) is None


def test_cpu_quota_wider_than_the_engine_is_refused() -> None:
    config = RunConfig(resource_limits=ResourceLimits(memory_mb=64, cpu_percent=400))
    message = plan_fits(config, tasks(1), cpus=2, memory_bytes=8 * GIB)
    assert message is not None and "at most 200" in message


def test_volumes_that_do_not_fit_on_the_disk_are_refused() -> None:
    config = RunConfig(max_concurrent_agents=4,
                       resource_limits=ResourceLimits(memory_mb=64, disk_mb=5120))
    message = plan_fits(config, tasks(4), cpus=2, memory_bytes=8 * GIB,
                        free_disk_bytes=10 * GIB)
    assert message is not None and "4 volumes of up to 5120 MB need 20480 MB" in message
    assert plan_fits(config, tasks(1), cpus=2, memory_bytes=8 * GIB,
                     free_disk_bytes=10 * GIB) is None


def test_a_disk_refusal_names_where_volumes_live_and_how_to_move_them() -> None:
    config = RunConfig(resource_limits=ResourceLimits(memory_mb=64, disk_mb=5120))
    message = plan_fits(config, tasks(1), cpus=2, memory_bytes=8 * GIB,
                        free_disk_bytes=1 * GIB, volumes_dir=Path("/data/vols"))
    assert message is not None
    assert "only 1024 MB are free in /data/vols" in message
    assert "AGENTRT_VOLUMES_DIR or [run] volumes_dir" in message


def test_colima_profile_fits_agents_plus_headroom() -> None:
    size = size_for(5, ResourceLimits(memory_mb=2048, cpu_percent=100, disk_mb=5120))
    assert size.cpus == 6
    assert size.memory_gib == 12  # 5 × 2 GiB + 2 GiB headroom
    assert size.disk_gib == 25 + 20
    argv = size.start_command(platform="darwin")
    assert argv[:3] == ["colima", "start", "agentrt"] and "virtiofs" in argv


def test_sessions_prepared_ahead_count_their_volumes_on_the_disk() -> None:
    # 2 slots + a warm pool of 2: four volumes at once, when there are tasks to fill them.
    config = RunConfig(max_concurrent_agents=2, warm_pool=2,
                       resource_limits=ResourceLimits(memory_mb=64, disk_mb=1024))
    message = plan_fits(config, tasks(6), cpus=2, memory_bytes=8 * GIB,
                        free_disk_bytes=3 * GIB)
    assert message is not None and "4 volumes of up to 1024 MB need 4096 MB" in message
    assert "lower warm_pool" in message
    no_pool = config.model_copy(update={"warm_pool": 0})
    assert plan_fits(no_pool, tasks(6), cpus=2, memory_bytes=8 * GIB,
                     free_disk_bytes=3 * GIB) is None
    # No more volumes than tasks.
    assert plan_fits(config, tasks(2), cpus=2, memory_bytes=8 * GIB,
                     free_disk_bytes=3 * GIB) is None
