"""Quotas are enforced by the kernel, and one agent's excess never hurts its neighbours."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from runtime.config import ResourceLimits, Task
from runtime.models import SessionStatus
from tests.conftest import git
from tests.integration.helpers import by_task, run_tasks, sh

pytestmark = pytest.mark.docker

NEIGHBOUR = "sleep 2; echo fine > neighbour.txt"


def limits(**kw: int) -> ResourceLimits:
    base = dict(memory_mb=128, cpu_percent=100, time_seconds=60, disk_mb=64, pids=64)
    base.update(kw)
    return ResourceLimits(**base)


def test_memory_hog_is_oom_killed_and_neighbours_finish(repo: Path, runtime_name: str) -> None:
    hog = sh("hog", "python3 -c 'x = bytearray(512 * 1024 * 1024); print(len(x))'")
    report = run_tasks(repo, [hog, sh("calm", NEIGHBOUR)], resource_limits=limits(),
                       runtime=runtime_name)
    results = by_task(report)
    assert results["hog"].status is SessionStatus.OOM_KILLED, results["hog"]
    assert results["calm"].status is SessionStatus.SUCCEEDED
    assert results["hog"].peak_memory_bytes <= 130 * 1024 * 1024


def test_fork_bomb_is_held_at_pids_limit_and_host_can_still_fork(
    repo: Path, runtime_name: str
) -> None:
    bomb = sh("bomb", "for i in $(seq 1 200); do sleep 5 & done 2> fork-errors.txt; wait; "
                      "echo survived")
    report = run_tasks(repo, [bomb, sh("calm", NEIGHBOUR)], resource_limits=limits(pids=32),
                       runtime=runtime_name)
    results = by_task(report)
    assert results["calm"].status is SessionStatus.SUCCEEDED
    head = results["bomb"].head_commit or ""
    if runtime_name == "runc":
        # The shell could not create more than `pids` processes: forks failed inside it.
        assert "fork" in git(repo, "show", f"{head}:fork-errors.txt")
    else:
        # Under gVisor the sandbox's own threads share the cgroup: the bomb is stopped before
        # its shell can even report (measured: no output, exit 2), never "survived".
        assert results["bomb"].status is not SessionStatus.SUCCEEDED or \
            "fork" in git(repo, "show", f"{head}:fork-errors.txt")
    assert subprocess.run(["true"], check=False).returncode == 0


FORK_COUNTER = """
import os, time
children = []
try:
    for _ in range(200):
        pid = os.fork()
        if pid == 0:
            time.sleep(3)
            os._exit(0)
        children.append(pid)
except OSError as exc:
    print("fork failed:", exc)
open("count.txt", "w").write(str(len(children)))
for pid in children:
    os.waitpid(pid, 0)
"""


def test_fork_bomb_limit_is_visible_as_fork_failures(repo: Path) -> None:
    report = run_tasks(repo, [Task(id="bomb", command=["python3", "-c", FORK_COUNTER])],
                       resource_limits=limits(pids=20))
    result = by_task(report)["bomb"]
    from tests.conftest import git

    assert result.status is SessionStatus.SUCCEEDED
    assert int(git(repo, "show", f"{result.head_commit}:count.txt")) < 20


def test_disk_filler_gets_enospc_at_disk_mb_and_host_free_space_unchanged(
    repo: Path, runtime_name: str
) -> None:
    free_before = shutil.disk_usage(repo).free
    filler = sh("filler", "dd if=/dev/zero of=big bs=1M count=200 2>err.txt; "
                          "grep -q 'No space left' err.txt && echo ENOSPC > /tmp/seen; "
                          "test -f /tmp/seen && rm -f big && echo enospc > result.txt")
    report = run_tasks(repo, [filler], resource_limits=limits(disk_mb=40), runtime=runtime_name)
    result = by_task(report)["filler"]
    from tests.conftest import git

    assert git(repo, "show", f"{result.head_commit}:result.txt") == "enospc\n"
    # The volume was reserved up front and released: host free space is back where it was.
    assert abs(shutil.disk_usage(repo).free - free_before) < 30 * 1024 * 1024


def test_agent_that_fills_its_disk_and_fails_is_reported_disk_full(repo: Path) -> None:
    report = run_tasks(repo, [sh("filler", "dd if=/dev/zero of=big bs=1M count=200")],
                       resource_limits=limits(disk_mb=40))
    assert by_task(report)["filler"].status is SessionStatus.DISK_FULL


def test_tmp_filler_is_stopped_by_the_tmpfs_size(repo: Path, runtime_name: str) -> None:
    script = ("dd if=/dev/zero of=/tmp/fill bs=1M count=500 2>/dev/null; "
              "du -m /tmp/fill | cut -f1 > tmp_mb.txt")
    report = run_tasks(repo, [sh("tmp", script)], resource_limits=limits(memory_mb=256),
                       runtime=runtime_name)
    from tests.conftest import git

    result = by_task(report)["tmp"]
    assert int(git(repo, "show", f"{result.head_commit}:tmp_mb.txt")) <= 64


def test_agent_ignoring_sigterm_is_killed_at_deadline_plus_grace(
    repo: Path, runtime_name: str
) -> None:
    stubborn = sh("stubborn", "trap '' TERM; echo started > started.txt; "
                              "while true; do sleep 1; done")
    started = time.monotonic()
    report = run_tasks(repo, [stubborn], resource_limits=limits(time_seconds=3), grace=2,
                       runtime=runtime_name)
    elapsed = time.monotonic() - started
    result = by_task(report)["stubborn"]
    assert result.status is SessionStatus.TIMED_OUT
    assert 4.5 <= result.duration_s <= 12, result.duration_s
    assert elapsed < 30
    from tests.conftest import git

    # Work written before the kill is on the branch.
    assert git(repo, "show", f"{result.head_commit}:started.txt") == "started\n"


CPU_HOG = """
import time
wall0, cpu0 = time.monotonic(), time.process_time()
while time.monotonic() - wall0 < 4:
    pass
open("share.txt", "w").write(str((time.process_time() - cpu0) / (time.monotonic() - wall0)))
"""


def test_cpu_hog_uses_its_quota_within_ten_percent(repo: Path) -> None:
    report = run_tasks(repo, [Task(id="hog", command=["python3", "-c", CPU_HOG])],
                       resource_limits=limits(cpu_percent=50))
    result = by_task(report)["hog"]
    from tests.conftest import git

    # The kernel's CFS quota holds a busy loop to 50 % of one core, measured by the agent.
    share = float(git(repo, "show", f"{result.head_commit}:share.txt"))
    assert 0.45 <= share <= 0.55, share
    # The supervisor's own accounting saw that work too (sampled, so only roughly).
    assert 1.0 <= result.cpu_seconds <= 2.5, result.cpu_seconds
