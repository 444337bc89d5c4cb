"""Owner liveness: a recorded (pid, start time) is alive only while that very process runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from runtime.state.liveness import owner_alive, process_start_time

pytestmark = pytest.mark.skipif(
    sys.platform not in ("linux", "darwin"), reason="process start times are read on Linux/macOS"
)


def test_current_process_is_alive_with_its_real_start_time() -> None:
    started = process_start_time(os.getpid())
    assert started is not None
    assert started <= time.time()
    assert owner_alive(os.getpid(), started)


def test_start_time_of_a_new_child_is_when_it_was_spawned() -> None:
    before = time.time()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    after = time.time()
    try:
        started = process_start_time(child.pid)
        assert started is not None
        # Boot time is whole seconds on Linux and ps prints whole seconds on macOS.
        assert before - 1.5 <= started <= after + 1.5
        assert owner_alive(child.pid, started)
    finally:
        child.kill()
        child.wait()


def test_reaped_child_is_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_start_time(child.pid)
    child.wait()
    assert process_start_time(child.pid) is None
    assert not owner_alive(child.pid, started)
    assert not owner_alive(child.pid, None)


def test_live_pid_with_another_start_time_is_not_the_owner() -> None:
    """pid reuse: same pid, different process."""
    started = process_start_time(os.getpid())
    assert started is not None
    assert not owner_alive(os.getpid(), started - 3600)
    assert not owner_alive(os.getpid(), started + 5)


def test_start_time_within_one_second_still_matches() -> None:
    started = process_start_time(os.getpid())
    assert started is not None
    assert owner_alive(os.getpid(), started + 0.9)


@pytest.mark.skipif(sys.platform != "linux", reason="zombie state read from /proc")
def test_unreaped_zombie_counts_as_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = process_start_time(child.pid)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            with open(f"/proc/{child.pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
            time.sleep(0.02)
        assert not owner_alive(child.pid, started)
    finally:
        child.wait()


def test_unrecorded_start_time_falls_back_to_pid_existence() -> None:
    assert owner_alive(os.getpid(), None)


@pytest.mark.parametrize("pid", [None, 0, -1])
def test_no_pid_is_never_alive(pid: int | None) -> None:
    assert not owner_alive(pid, time.time())
    if pid is not None:
        assert process_start_time(pid) is None
