"""The supervising process's own memory and CPU with 0, 1, 5 and 10 live sessions.

Each measurement runs in a fresh child process, so one does not inherit another's heap.
agentrt: ``AgentCoordinator`` in a thread runs N sessions that ``sleep 20``; once all N
containers run, the child samples its resident memory (VmRSS), its CPU time
(``time.process_time``, all threads) and its children's (the git commands of the conflict
radar) over ``--interval`` seconds (default 5, the radar's period), then cancels the run.
With 0 sessions it holds a started Supervisor (events, deadline and sampler threads).
Raw: a minimal hand-made supervisor, the docker SDK starting the same N containers with
the same limits and one thread per container blocked in ``container.wait()``.
Goals: ≤ 60 MB with 0 sessions and ≤ 5 MB per session.
Run: ``.venv/bin/python bench/footprint.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import _common as c
import _repo

SESSIONS = (0, 1, 5, 10)
COMMAND = ["sleep", "20"]


def rss_mb() -> float:
    """This process's resident set size in MiB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def children_cpu() -> float:
    """CPU seconds of this process's finished children (the git commands it ran)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(interval: float) -> dict[str, float]:
    """Peak RSS sampled every 0.25 s; CPU of this process (all threads) and of its children,
    as % of one core, over ``interval`` seconds."""
    time.sleep(1.0)  # settle after the last start
    cpu0, kids0, wall0, peak = time.process_time(), children_cpu(), time.perf_counter(), rss_mb()
    while time.perf_counter() - wall0 < interval:
        time.sleep(0.25)
        peak = max(peak, rss_mb())
    wall = time.perf_counter() - wall0
    return {"rss_mb": peak, "cpu_pct": (time.process_time() - cpu0) / wall * 100,
            "children_pct": (children_cpu() - kids0) / wall * 100}


def child_agentrt(n: int, repo: Path, interval: float) -> dict[str, float]:
    from runtime import AgentCoordinator, ResourceLimits, RunConfig, SessionStatus, Task
    from runtime.backends.docker.supervisor import Supervisor
    from runtime.engine.discovery import get_client

    client = get_client()
    if n == 0:
        with Supervisor(client, "bench-idle"):
            return measure(interval)
    limits = ResourceLimits(memory_mb=256, cpu_percent=50, pids=64, disk_mb=128)
    config = RunConfig(resource_limits=limits, merge="none")
    coordinator = AgentCoordinator(n, config=config, repo=repo, stop_grace_seconds=0)
    tasks = [Task(id=f"idle{i}", command=COMMAND) for i in range(n)]
    thread = threading.Thread(target=coordinator.run_agents, args=(tasks,), daemon=True)
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        live = coordinator.live_sessions()
        if len(live) == n and all(s.result.status == SessionStatus.RUNNING for s in live):
            break
        time.sleep(0.1)
    else:
        raise RuntimeError(f"only {len(coordinator.live_sessions())} of {n} sessions started")
    try:
        return measure(interval)
    finally:
        coordinator.cancel(force=True)
        thread.join(timeout=120)


def child_raw(n: int, label: str, interval: float) -> dict[str, float]:
    import docker

    client = docker.from_env()
    client.ping()
    flags = dict(mem_limit="256m", memswap_limit="256m", nano_cpus=500_000_000, pids_limit=64,
                 read_only=True, tmpfs={"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"},
                 cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
                 network_mode="none", init=True, user="1000:1000",
                 labels={c.LABEL_BENCH: label})
    containers = [client.containers.run(c.IMAGE, COMMAND, detach=True, **flags)
                  for _ in range(n)]
    waiters = [threading.Thread(target=ct.wait, daemon=True) for ct in containers]
    for w in waiters:
        w.start()
    try:
        return measure(interval)
    finally:
        for ct in containers:
            ct.remove(force=True)


BARE = "print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"


def run_child(argv: list[str]) -> dict[str, float]:
    """Run this script as a measuring child; its last stdout line is JSON."""
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {argv} failed:\n{out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], runs=3)
    p.add_argument("--interval", type=float, default=5.0,
                   help="seconds measured per point (default 5: one conflict-radar period)")
    p.add_argument("--child", choices=["agentrt", "raw"], help=argparse.SUPPRESS)
    p.add_argument("--sessions", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--repo", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--label", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "agentrt":
        print(json.dumps(child_agentrt(args.sessions, args.repo, args.interval)))
        return
    if args.child == "raw":
        print(json.dumps(child_raw(args.sessions, args.label, args.interval)))
        return
    c.header(f"footprint: supervisor RSS and CPU with {SESSIONS} live sessions", args.runs)
    data: dict[tuple[str, int], list[dict[str, float]]] = {}
    bare = []
    with c.scratch("footprint") as root:
        repo = _repo.clone(root / "repo")
        common = ["--interval", str(args.interval), "--repo", str(repo), "--label", root.name]
        for _ in range(args.runs):
            bare.append(int(subprocess.run([sys.executable, "-c", BARE], capture_output=True,
                                           text=True, check=True).stdout) / 1024)
            for n in SESSIONS:
                for system in ("agentrt", "raw"):
                    data.setdefault((system, n), []).append(
                        run_child(["--child", system, "--sessions", str(n), *common]))
    rows = []
    for n in SESSIONS:
        row: list[object] = [n]
        for system in ("agentrt", "raw"):
            rss = [d["rss_mb"] for d in data[(system, n)]]
            cpu = [d["cpu_pct"] for d in data[(system, n)]]
            kids = [d["children_pct"] for d in data[(system, n)]]
            base = c.median([d["rss_mb"] for d in data[(system, 0)]])
            per = f"{(c.median(rss) - base) / n:.2f} MB" if n else "-"
            row += [c.fmt(rss, "MB", 1), per, c.fmt(cpu, "%", 1), c.fmt(kids, "%", 1)]
        row.append(c.ratio([d["rss_mb"] for d in data[("agentrt", n)]],
                           [d["rss_mb"] for d in data[("raw", n)]]))
        rows.append(row)
    print(c.table(["sessions", "agentrt RSS", "per session", "CPU", "children CPU",
                   "raw RSS", "per session", "CPU", "children CPU", "RSS agentrt / raw"], rows))
    print("CPU: % of one core used by the supervising process itself (all threads); children:"
          " by the commands it ran meanwhile (git for the conflict radar)")
    print(f"bare Python interpreter: {c.fmt(bare, 'MB', 1)}")
    base = c.median([d["rss_mb"] for d in data[("agentrt", 0)]])
    top = c.median([d["rss_mb"] for d in data[("agentrt", SESSIONS[-1])]])
    print(c.goal("agentrt RSS with 0 sessions ≤ 60 MB", base, 60, " MB"))
    print(c.goal(f"agentrt RSS per session ({SESSIONS[-1]} sessions) ≤ 5 MB",
                 (top - base) / SESSIONS[-1], 5, " MB"))


if __name__ == "__main__":
    main()
