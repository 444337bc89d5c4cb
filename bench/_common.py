"""Helpers shared by the benchmarks: statistics, tables, goals, raw-docker flags, clean-up.

Every benchmark prints agentrt and a raw baseline measured in the same run, as the median with
min–max over the runs, and the ratio of the medians. Nothing here is a timed unit test.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent))  # run from a checkout without installing

if TYPE_CHECKING:
    from runtime.config import ResourceLimits

IMAGE = "agentrt/base:latest"
LABEL_BENCH = "agentrt.bench"


# -- statistics and printing ------------------------------------------------------------------

def median(xs: Sequence[float]) -> float:
    """The median of ``xs``."""
    return statistics.median(xs)


def percentile(xs: Sequence[float], p: float) -> float:
    """The ``p``-th percentile of ``xs`` (nearest rank: a value that was measured)."""
    ordered = sorted(xs)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def fmt(xs: Sequence[float], unit: str = "s", digits: int = 2) -> str:
    """``median (min–max) unit``; seconds under one second are shown in ms."""
    if not xs:
        return "-"
    scale, unit = (1000.0, "ms") if unit == "s" and max(xs) < 1 else (1.0, unit)
    d = 0 if unit == "ms" else digits
    m, lo, hi = (v * scale for v in (median(xs), min(xs), max(xs)))
    return f"{m:.{d}f}{' ' if unit else ''}{unit} ({lo:.{d}f}–{hi:.{d}f})"


def ratio(a: Sequence[float], b: Sequence[float]) -> str:
    """Ratio of medians, ``a / b``."""
    return f"{median(a) / median(b):.2f}×" if median(b) else "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain, aligned text table (also valid Markdown)."""
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def goal(name: str, value: float, limit: float, unit: str = "×") -> str:
    """One line saying whether ``value`` met ``limit`` (lower is better), and by how much."""
    if unit == "ms":
        shown, lim, diff = f"{value:.0f} ms", f"{limit:.0f} ms", f"{abs(value - limit):.0f} ms"
    else:
        shown, lim = f"{value:.2f}{unit}", f"{limit:.2f}{unit}"
        diff = f"{abs(value - limit):.2f}{unit}"
    verdict = f"met (by {diff})" if value <= limit else f"MISSED by {diff}"
    return f"goal {name}: {shown} vs ≤ {lim}: {verdict}"


def parser(description: str, runs: int) -> argparse.ArgumentParser:
    """An argument parser with ``--runs``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--runs", type=int, default=runs, help=f"measured runs (default {runs})")
    return p


def machine() -> str:
    """One line describing this host: cores, OS, kernel, Docker and cgroup version."""
    os_name = platform.system()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    proc = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                          capture_output=True, text=True, check=False)
    cgroup = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"
    return (f"{os.cpu_count()} cores, {os_name}, kernel {platform.release()}, "
            f"dockerd {proc.stdout.strip() or '?'}, cgroup {cgroup}, "
            f"Python {platform.python_version()}")


def header(title: str, runs: int) -> None:
    """Print the benchmark's title and the machine it runs on."""
    print(f"== {title} ({runs} runs; median (min–max)) ==")
    print(f"machine: {machine()}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    others = subprocess.run(["docker", "ps", "-q"], capture_output=True, text=True,
                            check=False).stdout.split()
    print(f"at start: load average {load}; {len(others)} containers already running")
    import runtime

    print(f"runtime: {Path(runtime.__file__).parent}")


@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` is the elapsed wall time in seconds."""
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)


# -- engine calls and processes -------------------------------------------------------------------

_ID = re.compile(r"/[0-9a-f]{12,64}(?=/|$)")


@contextlib.contextmanager
def counting() -> Iterator[dict[str, collections.Counter[str]]]:
    """Count, while inside the block, the engine API requests this process sends (``"POST
    /containers/{id}/start"``: every request through any docker client's transport, so the
    event stream counts once when opened) and the processes it spawns (``"git update-index"``,
    ``"umount"``: every ``subprocess.Popen``). Yields ``{"engine": ..., "processes": ...}``."""
    import subprocess as sp

    import requests

    counts: dict[str, collections.Counter[str]] = {"engine": collections.Counter(),
                                                   "processes": collections.Counter()}
    send, popen_init = requests.Session.send, sp.Popen.__init__

    def counted_send(self: requests.Session, request: requests.PreparedRequest,
                     **kwargs: object) -> requests.Response:
        path = (request.path_url or "").split("?", 1)[0]
        path = re.sub(r"^/v[0-9.]+", "", _ID.sub("/{id}", path))
        path = re.sub(r"^/(containers|volumes)/agentrt-[^/]+", r"/\1/{name}", path)
        counts["engine"][f"{request.method} {path}"] += 1
        return send(self, request, **kwargs)

    def counted_popen(self: sp.Popen[bytes], args: object, *rest: object,
                      **kwargs: object) -> None:
        argv = [str(a) for a in (args if isinstance(args, list | tuple) else [args])]
        name = os.path.basename(argv[0]) if argv else "?"
        words = [a for a in argv[1:] if not a.startswith("-") and "=" not in a][:1]
        counts["processes"][" ".join([name, *words]) if name == "git" else name] += 1
        popen_init(self, args, *rest, **kwargs)  # type: ignore[call-overload]

    setattr(requests.Session, "send", counted_send)  # noqa: B010 - patched for the block
    setattr(sp.Popen, "__init__", counted_popen)  # noqa: B010
    try:
        yield counts
    finally:
        setattr(requests.Session, "send", send)  # noqa: B010
        setattr(sp.Popen, "__init__", popen_init)  # noqa: B010


def count_table(counts: Sequence[dict[str, collections.Counter[str]]], kind: str,
                sessions: int | None = None) -> str:
    """A table of the mean count per session of each ``kind`` (``engine``/``processes``) entry
    over ``counts`` (:func:`counting` results; one per session unless ``sessions`` says how
    many sessions they cover in all), and the total."""
    total: collections.Counter[str] = collections.Counter()
    for one in counts:
        total.update(one[kind])
    n = max(1, sessions or len(counts))
    rows = [[name, f"{value / n:.1f}"] for name, value in total.most_common()]
    rows.append(["total", f"{sum(total.values()) / n:.1f}"])
    return table([kind if kind == "processes" else "engine API call", "per session"], rows)


# -- the raw baseline ---------------------------------------------------------------------------

def raw_docker_flags(limits: ResourceLimits, label: str) -> list[str]:
    """``docker run`` flags with the limits and hardening agentrt's container_spec applies."""
    from runtime.engine.container import tmpfs_mb

    mem = f"{limits.memory_mb}m"
    return [
        "--memory", mem, "--memory-swap", mem, "--cpus", f"{limits.cpu_percent / 100:g}",
        "--pids-limit", str(limits.pids), "--read-only",
        "--tmpfs", f"/tmp:rw,nosuid,nodev,size={tmpfs_mb(limits)}m,mode=1777",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--network", "none",
        "--init", "--user", "1000:1000", "--label", f"{LABEL_BENCH}={label}",
    ]


# -- clean-up -------------------------------------------------------------------------------------

def remove_containers(label_filter: str) -> None:
    """Force-remove every container matching ``label=<label_filter>``."""
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label_filter}"],
                         capture_output=True, text=True, check=False).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)


def _unmount_under(root: Path) -> None:
    mounts = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            target = line.split()[1].replace("\\040", " ")
            if target == str(root) or target.startswith(f"{root}/"):
                mounts.append(target)
    for target in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)
    if shutil.which("losetup"):
        out = subprocess.run(["losetup", "-a"], capture_output=True, text=True,
                             check=False).stdout
        for line in out.splitlines():
            if str(root) in line:
                subprocess.run(["losetup", "-d", line.split(":", 1)[0]], capture_output=True,
                               check=False)


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[Path]:
    """A temporary directory; on exit (even on failure) remove the containers labelled for it
    (raw ``agentrt.bench`` and agentrt's ``agentrt.repo`` of a repo inside it), unmount and
    detach every volume under it, and delete it."""
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so sessions and this clean-up still run.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix=f"agentrt-bench-{prefix}-")).resolve()
    try:
        yield root
    finally:
        remove_containers(f"{LABEL_BENCH}={root.name}")
        for repo in root.iterdir() if root.exists() else []:
            remove_containers(f"agentrt.repo={repo}")
        _unmount_under(root)
        shutil.rmtree(root, ignore_errors=True)
