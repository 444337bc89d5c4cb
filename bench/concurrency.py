"""1, 5 and 10 agents at once: AgentCoordinator against N parallel bare ``docker run``.

Two workloads, the same command in both systems, every agent at ``cpu_percent=50``:

* *sleep*: about 90 % sleep, 10 × (30 ms of CPU + 270 ms of sleep) = 3 s. Wall time of N
  agents against 1; goal ≤ 1.1×.
* *cpu*: a fixed-iteration Python loop (a fixed amount of CPU work). Wall time of N agents
  against (1 agent × ceil(N × 0.5 / cores)); goal ≤ 1.1×.

agentrt's time covers the whole ``run_agents`` call: preflight, a branch, volume and checkout
of the benchmark repository per session, the containers, snapshots and clean-up. The bare
time covers N parallel ``docker run --rm`` of the same commands, same image, limits and
hardening (no checkout at all): the engine's own limit. Both are measured in the same run,
alternating who goes first; the goal for sleepers is agentrt's N / 1 ratio ≤ bare's own + 0.1.
*Host CPU per session*: user + sys of this process (all threads) and of the children it waited
for (``getrusage`` RUSAGE_SELF + RUSAGE_CHILDREN around the call) divided by N; for bare, the
``docker`` CLI processes. dockerd's, containerd's and the containers' own CPU are not in it.
Run: ``.venv/bin/python bench/concurrency.py [--runs N] [--agents 1 5 10] [--workloads sleep]
[--repo PATH] [--engine swarm]``.

``--engine swarm`` instead starts a three-node Swarm of Docker-in-Docker engines (the test
suite's, ``tests/integration/swarm.py``) and runs :data:`SWARM_AGENTS` sleep agents there and on
the local engine, alternating, in the same run; the per-session overhead of Swarm (node
volume by a helper service, base in and work out through the run's exchange, the service
itself) is the 1-agent difference. The run's exchange is removed in the background after
``run_agents`` returns (the process exits only after it): that tail is waited for untimed
between runs and printed separately.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import _common as c
import _repo
from lifecycle import host_cpu

from runtime import AgentCoordinator, ResourceLimits, RunConfig, Task
from runtime.engine.discovery import engine_resources, get_client

AGENTS = (1, 5, 10)
SWARM_AGENTS = (1, 6)
QUOTA = 50
SLEEPY = """
import time
for _ in range(10):
    end = time.process_time() + 0.03
    while time.process_time() < end:
        pass
    time.sleep(0.27)
"""
BUSY = "x = 0\nfor i in range({iterations}):\n    x += i\n"


#: On Swarm: how long each run's exchange was still being removed after ``run_agents``
#: returned (the process would exit only after that).
EXCHANGE_TAILS: list[float] = []
#: Host CPU seconds per session of each measured call, by (system, agents).
HOST_CPU: dict[tuple[str, int], list[float]] = {}


def agentrt_wall(repo: Path, config: RunConfig, command: list[str], n: int,
                 client: Any = None) -> float:
    """Wall time of one ``run_agents`` call with ``n`` identical agents."""
    tasks = [Task(id=f"a{i}", command=command) for i in range(n)]
    coordinator = AgentCoordinator(n, config=config, repo=repo, stop_grace_seconds=1,
                                   client=client)
    cpu = host_cpu()
    with c.stopwatch() as t:
        report = coordinator.run_agents(tasks)
    HOST_CPU.setdefault(("agentrt", n), []).append((host_cpu() - cpu) / n)
    if config.engine == "swarm":
        # The run's exchange is removed in the background (the process would not exit
        # before it is gone): wait here, untimed, so it does not slow the next run down.
        from runtime.backends.swarm.backend import wait_for_exchanges

        with c.stopwatch() as tail:
            wait_for_exchanges(120)
        EXCHANGE_TAILS.append(tail[0])
    bad = [f"{s.task_id}: {s.status.value} {s.reason}" for s in report.sessions
           if s.status.value != "succeeded"]
    if bad:
        raise RuntimeError("agentrt sessions failed: " + "; ".join(bad))
    return t[0]


def raw_wall(limits: ResourceLimits, label: str, command: list[str], n: int) -> float:
    """Wall time of ``n`` parallel bare ``docker run --rm`` of ``command``."""
    argv = ["docker", "run", "--rm", *c.raw_docker_flags(limits, label), c.IMAGE, *command]
    cpu = host_cpu()
    with c.stopwatch() as t:
        procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL) for _ in range(n)]
        codes = [p.wait() for p in procs]
    HOST_CPU.setdefault(("bare", n), []).append((host_cpu() - cpu) / n)
    if any(codes):
        raise RuntimeError(f"raw docker run failed: exit codes {codes}")
    return t[0]


def expected(workload: str, n: int, cores: int) -> int:
    """How many times the 1-agent wall time ``n`` agents may take: 1 for sleepers, else
    ceil(n × quota / cores)."""
    return 1 if workload == "sleep" else math.ceil(n * QUOTA / 100 / cores)


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], runs=3)
    p.add_argument("--iterations", type=int, default=35_000_000,
                   help="loop iterations of the cpu workload (default 35M)")
    p.add_argument("--files", type=int, default=2000, help="files in the benchmark repository")
    p.add_argument("--megabytes", type=int, default=25, help="size of the benchmark repository")
    p.add_argument("--agents", type=int, nargs="+", default=list(AGENTS),
                   help="agent counts to measure (the first is the reference; default 1 5 10)")
    p.add_argument("--workloads", nargs="+", choices=["sleep", "cpu"], default=["sleep", "cpu"])
    p.add_argument("--repo", type=Path,
                   help="a real repository to clone instead of the synthetic one (e.g. mypy)")
    p.add_argument("--engine", choices=["local", "swarm"], default="local",
                   help="swarm: sleep agents on a 3-node dind Swarm vs the local engine")
    args = p.parse_args()
    cores = engine_resources(get_client())[0]
    limits = ResourceLimits(memory_mb=512, cpu_percent=QUOTA, pids=256, disk_mb=512)
    config = RunConfig(resource_limits=limits, merge="none")
    if args.engine == "swarm":
        swarm_main(args, config)
        return
    every = {
        "sleep": ["python3", "-c", SLEEPY],
        "cpu": ["python3", "-c", BUSY.format(iterations=args.iterations)],
    }
    workloads = {name: every[name] for name in args.workloads}
    agents = tuple(args.agents)
    c.header(f"concurrency: {agents} agents at cpu_percent={QUOTA} on {cores} cores, "
             f"repository of {args.files} files, {args.megabytes} MB", args.runs)
    walls: dict[tuple[str, str, int], list[float]] = {}
    with c.scratch("concurrency") as root:
        repo = _repo.clone(root / "repo", files=args.files, megabytes=args.megabytes,
                           source=args.repo)
        print(f"repository: {args.repo or 'synthetic'}")
        raw_wall(limits, root.name, ["true"], 1)  # warm-up
        agentrt_wall(repo, config, ["true"], 1)
        for run in range(args.runs):
            for name, command in workloads.items():
                for n in agents:
                    first_raw = (run + n) % 2 == 0  # alternate who goes first
                    for system in ("raw", "agentrt") if first_raw else ("agentrt", "raw"):
                        wall = (raw_wall(limits, root.name, command, n) if system == "raw"
                                else agentrt_wall(repo, config, command, n))
                        walls.setdefault((name, system, n), []).append(wall)
    report(walls, workloads, agents, cores)


def report(walls: dict[tuple[str, str, int], list[float]], workloads: dict[str, list[str]],
           agents: tuple[int, ...], cores: int) -> None:
    """Print each workload's table (N agents against the first count, agentrt and bare
    ``docker run``), the goals, and host CPU per session."""
    one = agents[0]
    for name in workloads:
        rows = []
        for n in agents:
            bound = expected(name, n, cores)
            a, r = walls[(name, "agentrt", n)], walls[(name, "raw", n)]
            a1, r1 = walls[(name, "agentrt", one)], walls[(name, "raw", one)]
            rows.append([n, c.fmt(a), c.ratio(a, a1), c.fmt(r), c.ratio(r, r1), bound,
                         c.ratio(a, r)])
        print(f"\n{name} workload:")
        print(c.table(["agents", "agentrt wall", f"ratio vs {one}", "bare docker run wall",
                       f"ratio vs {one}", "expected ×", "agentrt / bare"], rows))
        for n in agents[1:]:
            bound = expected(name, n, cores)
            ratios = {system: c.median(walls[(name, system, n)]) /
                      c.median(walls[(name, system, one)]) for system in ("agentrt", "raw")}
            if name == "sleep":
                print(c.goal(f"sleep {n} agents / {one}: agentrt ≤ bare's own ratio + 0.1",
                             ratios["agentrt"], ratios["raw"] + 0.1))
            else:
                for system, value in ratios.items():
                    print(c.goal(f"{name} {system} {n} agents ≤ 1.1 × {bound}", value / bound,
                                 1.1))
    print("\nhost CPU per session (this process + its children, all workloads):")
    print(c.table(["agents", "agentrt", "bare docker run (the CLI)", "agentrt / bare"],
                  [[n, c.fmt(HOST_CPU[("agentrt", n)]), c.fmt(HOST_CPU[("bare", n)]),
                    c.ratio(HOST_CPU[("agentrt", n)], HOST_CPU[("bare", n)])]
                   for n in agents]))
    every = [v for (system, _), vs in HOST_CPU.items() if system == "agentrt" for v in vs]
    print(c.goal("host CPU per session ≤ 80 ms", c.median(every) * 1000, 80, "ms"))


def swarm_main(args: Any, config: RunConfig) -> None:
    """Sleep agents on a three-node Swarm against the local engine, alternating, one run."""
    import docker

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.integration.swarm import start_swarm, stop_swarm

    limits = config.resource_limits.model_copy(update={"disk_mb": 64})
    local_config = config.model_copy(update={"resource_limits": limits})
    swarm_config = local_config.model_copy(update={"engine": "swarm"})
    command = ["python3", "-c", SLEEPY]
    c.header(f"swarm: {SWARM_AGENTS} sleep agents on a 3-node dind Swarm vs the local engine",
             args.runs)
    cluster = start_swarm(docker.from_env())
    manager = cluster.manager.client
    walls: dict[tuple[str, int], list[float]] = {}
    try:
        with c.scratch("concurrency-swarm") as root:
            repo = _repo.clone(root / "repo", files=args.files, megabytes=args.megabytes)
            agentrt_wall(repo, swarm_config, ["true"], 1, manager)  # warm-up
            agentrt_wall(repo, local_config, ["true"], 1)
            for run in range(args.runs):
                for n in SWARM_AGENTS:
                    order = ("local", "swarm") if (run + n) % 2 == 0 else ("swarm", "local")
                    for system in order:
                        wall = (agentrt_wall(repo, swarm_config, command, n, manager)
                                if system == "swarm" else
                                agentrt_wall(repo, local_config, command, n))
                        walls.setdefault((system, n), []).append(wall)
    finally:
        stop_swarm(cluster)
    rows = [[n, c.fmt(walls[("local", n)]), c.fmt(walls[("swarm", n)]),
             c.ratio(walls[("swarm", n)], walls[("local", n)])] for n in SWARM_AGENTS]
    print(c.table(["agents", "local engine", "3-node Swarm", "swarm / local"], rows))
    overhead = c.median(walls[("swarm", 1)]) - c.median(walls[("local", 1)])
    print(f"Swarm's overhead per session (1 agent, swarm - local): {overhead:.2f} s")
    if EXCHANGE_TAILS:
        print("the exchange's removal after run_agents returned (in the background; the "
              f"process exits after it): {c.fmt(EXCHANGE_TAILS)}")


if __name__ == "__main__":
    main()
