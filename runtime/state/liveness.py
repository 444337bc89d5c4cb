"""Is the process that owns a run or a session still alive?

A pid alone cannot answer that: after the owner dies the kernel may hand the same pid to an
unrelated process. So an owner is recorded as ``(pid, start_time)`` and is alive only when a
process with that pid exists *and* started at that time (within :data:`START_TIME_TOLERANCE`).

Only meaningful on the host that recorded the owner; callers compare ``owner_host`` first.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from functools import cache
from typing import Any

#: Start times are compared with this slack in seconds. Linux gives clock ticks against a boot
#: time rounded to the second, and macOS ``ps`` prints whole seconds, so exact equality would
#: declare a live owner dead.
START_TIME_TOLERANCE = 1.0


def process_start_time(pid: int) -> float | None:
    """The start time of process ``pid`` as a unix timestamp, or None if it cannot be read.

    None means "no such process" or "this platform gives no way to tell"; callers that need
    to tell the two apart check existence separately (as :func:`owner_alive` does).
    """
    if pid <= 0:
        return None
    if sys.platform.startswith("linux"):
        stat = _linux_stat(pid)
        boot = _linux_boot_time()
        if stat is None or boot is None:
            return None
        return boot + stat[1] / _clock_ticks()
    if sys.platform == "darwin":
        return _darwin_start_time(pid)
    return None


def owner_alive(pid: int | None, start_time: float | None) -> bool:
    """True if process ``pid`` exists and started at ``start_time`` (within 1 s).

    A zombie (exited, not yet reaped) counts as dead. When ``start_time`` is None (not
    recorded) or the current start time cannot be read, existence of the pid decides: it is
    safer to think an owner alive than to clean up under a running one.
    """
    if pid is None or pid <= 0 or not _pid_exists(pid):
        return False
    if sys.platform.startswith("linux"):
        stat = _linux_stat(pid)
        if stat is None:  # exited between the two checks
            return False
        if stat[0] in ("Z", "X"):
            return False
    if start_time is None:
        return True
    actual = process_start_time(pid)
    if actual is None:
        return True
    return abs(actual - start_time) <= START_TIME_TOLERANCE


def recorded_alive(pid: Any, start: Any) -> bool:
    """:func:`owner_alive` of an owner as a label or a record gives it (strings, None or
    ""); a value that is no number counts as dead."""
    try:
        return owner_alive(int(pid) if pid not in (None, "") else None,
                           float(start) if start not in (None, "") else None)
    except (TypeError, ValueError):
        return False


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The process exists but belongs to someone else: that still counts as existing.
        return True
    except OSError as exc:
        return exc.errno != errno.ESRCH
    return True


def _linux_stat(pid: int) -> tuple[str, int] | None:
    """(state, starttime in clock ticks) from /proc/<pid>/stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            raw = handle.read()
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may itself contain spaces or ')', so split after
    # the last ')'. What follows starts at field 3 (state); field 22 (starttime) is index 19.
    fields = raw[raw.rfind(")") + 2 :].split()
    if len(fields) < 20:
        return None
    try:
        return fields[0], int(fields[19])
    except ValueError:
        return None


@cache
def _clock_ticks() -> int:
    ticks = os.sysconf("SC_CLK_TCK")
    return ticks if ticks > 0 else 100


def _linux_boot_time() -> float | None:
    # Not cached: the boot time is fixed, but reading it is cheap, and tests may fork.
    try:
        with open("/proc/stat", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _darwin_start_time(pid: int) -> float | None:
    # LC_ALL=C so the day and month names are English whatever the user's locale.
    try:
        out = subprocess.run(
            ["ps", "-o", "lstart=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    try:
        # e.g. "Tue Mar  5 10:11:12 2024", in local time.
        return time.mktime(time.strptime(" ".join(out.split()), "%a %b %d %H:%M:%S %Y"))
    except (ValueError, OverflowError):
        return None
