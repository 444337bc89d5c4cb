"""Throughput: N one-second tasks at concurrency C, agentrt against git worktree + docker run.

The goal (from the performance issue): N one-second tasks at concurrency C finish in at most
1.5 × ceil(N/C) × 1 s plus one session's set-up, on a 2,000-file repository; host CPU per
session ≤ 100 ms. Measured in one run, side by side:

* *agentrt*: ``AgentCoordinator(C, ...).run_agents(tasks)`` with N tasks ``sh -c 'sleep 1'``,
  ``merge = "none"``, limits memory 512 MB, cpu 100 %, 256 pids, disk 1024 MB. The wall time is
  the whole call: preflight, a branch, volume and checkout per session, the containers,
  harvest and clean-up. Every session must succeed. The session branches are deleted after
  each batch, outside the timing, so every batch starts from the same repository.
* *raw*: N tasks, C at a time (a thread pool of C), each ``git worktree add -b`` of HEAD, then
  ``docker run --rm`` of the same command with the same limits and hardening, the worktree
  bind-mounted, then ``git worktree remove --force`` and ``git branch -D``. The checkouts
  (``git worktree add``) run in parallel, as a user would run them; the removals do not work
  in parallel (a remove races the others' entries under ``.git/worktrees``: "fatal: Invalid
  path"), so they, and the branch deletions, are serialised by one ``threading.Lock``; the
  output says how long raw held that lock per batch.
  Raw worktrees go next to the repository (the same disk) unless ``--raw-dir`` says otherwise.
* *bare*: N bare ``docker run --rm`` of the same command, image, limits and hardening, C at a
  time (what ``xargs -P C`` does): no repository at all, the engine's own limit. The goal is
  agentrt / bare ≤ 1.25.
* *ideal*: ceil(N/C) × 1 s, the machine's limit for that work; the goal is agentrt's wall
  ≤ 1.5 × ideal + *set-up*, where set-up is measured in the same run as the wall time of a
  single-task batch of ``sh -c 'sleep 0'`` (agentrt's for agentrt; raw's shown next to it).
* *host CPU per session*: user + sys of this process (all threads) and of the children it
  waited for (git, the docker CLI), ``getrusage`` before and after the batch, divided by N.
  dockerd's, containerd's and the containers' own CPU are not included. Also sessions per
  minute, and this process's peak RSS (``ru_maxrss``, which only grows).

Run: ``.venv/bin/python bench/throughput.py [--tasks 40] [--concurrency 8] [--runs 3]
[--repo PATH]`` (``--repo``: a real repository instead of the synthetic one);
``--tasks`` and ``--concurrency`` take several values (every pair is measured), e.g.
``--tasks 40 100 --concurrency 4 8``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import resource
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common as c
import _repo
from lifecycle import host_cpu, repo_and_trees

from runtime import AgentCoordinator, ResourceLimits, RunConfig, Task

WORK = ["sh", "-c", "sleep 1"]
TASK_SECONDS = 1.0
SETUP = ["sh", "-c", "sleep 0"]
SLACK = 1.5
CPU_GOAL_MS = 100.0
SYSTEMS = ("agentrt", "raw", "bare")
#: Engine API calls and processes of each measured agentrt batch, and its number of sessions.
COUNTS: list[tuple[dict[str, Any], int]] = []


@dataclass(frozen=True)
class Sample:
    """One measured batch: wall seconds, host CPU seconds, tasks, and raw's git-lock seconds."""

    wall: float
    cpu: float
    tasks: int
    locked: float = 0.0

    @property
    def cpu_per_session(self) -> float:
        """Host CPU seconds per session."""
        return self.cpu / self.tasks

    @property
    def per_minute(self) -> float:
        """Sessions finished per minute."""
        return self.tasks / self.wall * 60


def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MB (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ideal(n: int, concurrency: int) -> float:
    """The machine's limit: ceil(N/C) rounds of one task each."""
    return math.ceil(n / concurrency) * TASK_SECONDS


# -- agentrt --------------------------------------------------------------------------------------

def delete_branches(repo: Path, branches: list[str]) -> None:
    """Delete those of ``branches`` that exist in ``repo``."""
    existing = set(_repo.git("for-each-ref", "--format=%(refname:short)", "refs/heads/",
                             cwd=repo).split())
    gone = [b for b in branches if b in existing]
    if gone:
        _repo.git("branch", "-q", "-D", *gone, cwd=repo)


def agentrt_batch(repo: Path, config: RunConfig, command: list[str], n: int,
                  concurrency: int) -> Sample:
    """One ``run_agents`` call of ``n`` tasks at ``concurrency``; raise unless all succeeded."""
    tasks = [Task(id=f"t{i}", command=command) for i in range(n)]
    coordinator = AgentCoordinator(concurrency, config=config, repo=repo, stop_grace_seconds=1)
    cpu = host_cpu()
    with c.stopwatch() as t, c.counting() as counts:
        report = coordinator.run_agents(tasks)
    cpu = host_cpu() - cpu
    if command is WORK:
        COUNTS.append((counts, n))
    bad = [f"{s.task_id}: {s.status.value} {s.reason}" for s in report.sessions
           if s.status.value != "succeeded"]
    if bad or len(report.sessions) != n:
        raise RuntimeError(f"agentrt: {len(report.sessions)} of {n} sessions reported; "
                           "failed: " + "; ".join(bad))
    delete_branches(repo, [s.branch for s in report.sessions])
    return Sample(t[0], cpu, n)


# -- raw: git worktree + docker run ---------------------------------------------------------------

class RawBatch:
    """N tasks by hand, C at a time: worktree add, ``docker run --rm``, worktree remove.

    The removals share one lock: parallel ``git worktree remove`` trips over git's own shared
    state (``.git/worktrees``). ``locked`` accumulates the seconds the lock was held."""

    def __init__(self, repo: Path, trees: Path, limits: ResourceLimits, label: str) -> None:
        self.repo, self.trees = repo, trees
        self.docker_flags = c.raw_docker_flags(limits, label)
        self.lock = threading.Lock()
        self.locked = 0.0

    def git(self, *args: str) -> None:
        """Run one git command in the repository under the lock, timing how long it held it."""
        with self.lock:
            start = time.perf_counter()
            try:
                _repo.git(*args, cwd=self.repo)
            finally:
                self.locked += time.perf_counter() - start

    def one(self, name: str, command: list[str]) -> None:
        """One task: its worktree and branch, the container, then both removed."""
        tree, branch = self.trees / f"raw-{name}", f"raw/{name}"
        _repo.git("worktree", "add", "-q", "-b", branch, str(tree), "HEAD", cwd=self.repo)
        proc = subprocess.run(["docker", "run", "--rm", *self.docker_flags,
                               "-v", f"{tree}:/workspace", "-w", "/workspace", c.IMAGE,
                               *command], capture_output=True, text=True, check=False)
        self.git("worktree", "remove", "--force", str(tree))
        self.git("branch", "-q", "-D", branch)
        if proc.returncode != 0:
            raise RuntimeError(f"raw docker run {name} exited {proc.returncode}: {proc.stderr}")

    def run(self, command: list[str], n: int, concurrency: int) -> Sample:
        """``n`` tasks through a pool of ``concurrency`` threads; raise if any failed."""
        self.locked = 0.0
        cpu = host_cpu()
        with c.stopwatch() as t, ThreadPoolExecutor(concurrency) as pool:
            futures = [pool.submit(self.one, f"t{i}", command) for i in range(n)]
            for future in futures:
                future.result()
        return Sample(t[0], host_cpu() - cpu, n, self.locked)


# -- bare: the engine itself --------------------------------------------------------------------

class BareBatch:
    """N bare ``docker run --rm`` of the same image, limits and hardening, C at a time (what
    ``xargs -P C`` does): no repository, no checkout; the engine's own limit."""

    def __init__(self, limits: ResourceLimits, label: str) -> None:
        self.docker_flags = c.raw_docker_flags(limits, label)

    def one(self, command: list[str]) -> None:
        proc = subprocess.run(["docker", "run", "--rm", *self.docker_flags, c.IMAGE, *command],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"bare docker run exited {proc.returncode}: {proc.stderr}")

    def run(self, command: list[str], n: int, concurrency: int) -> Sample:
        """``n`` containers through a pool of ``concurrency`` threads; raise if any failed."""
        cpu = host_cpu()
        with c.stopwatch() as t, ThreadPoolExecutor(concurrency) as pool:
            for future in [pool.submit(self.one, command) for _ in range(n)]:
                future.result()
        return Sample(t[0], host_cpu() - cpu, n)


# -- the run ---------------------------------------------------------------------------------------

Key = tuple[str, int, int]  # (system, N, C)
Results = tuple[dict[str, list[Sample]], dict[Key, list[Sample]]]  # set-up, batches


def measure(system: str, repo: Path, config: RunConfig, raw: RawBatch, bare: BareBatch,
            command: list[str], n: int, concurrency: int) -> Sample:
    """One batch of ``system``."""
    if system == "agentrt":
        return agentrt_batch(repo, config, command, n, concurrency)
    if system == "bare":
        return bare.run(command, n, concurrency)
    return raw.run(command, n, concurrency)


def ordered(shift: int) -> tuple[str, ...]:
    """Every system, in an order that rotates with ``shift`` (who goes first alternates)."""
    k = shift % len(SYSTEMS)
    return SYSTEMS[k:] + SYSTEMS[:k]


def run_all(repo: Path, config: RunConfig, raw: RawBatch, bare: BareBatch, runs: int,
            pairs: list[tuple[int, int]]) -> Results:
    """Every run: set-up of every system, then every (N, C) of each; who goes first rotates."""
    setup: dict[str, list[Sample]] = {}
    batches: dict[Key, list[Sample]] = {}
    for run in range(runs):
        for system in ordered(run):
            setup.setdefault(system, []).append(
                measure(system, repo, config, raw, bare, SETUP, 1, 1))
        for k, (n, concurrency) in enumerate(pairs):
            for system in ordered(run + k + 1):
                sample = measure(system, repo, config, raw, bare, WORK, n, concurrency)
                batches.setdefault((system, n, concurrency), []).append(sample)
                print(f"  run {run + 1}: {system:7} N={n} C={concurrency}: {sample.wall:.2f} s, "
                      f"{sample.cpu_per_session * 1000:.0f} ms CPU/session", flush=True)
    return setup, batches


def walls(samples: list[Sample]) -> list[float]:
    """The wall times of ``samples``."""
    return [s.wall for s in samples]


def report(setup: dict[str, list[Sample]], batches: dict[Key, list[Sample]],
           pairs: list[tuple[int, int]]) -> None:
    """Print the tables and the goal lines."""
    setup_a, setup_r = walls(setup["agentrt"]), walls(setup["raw"])
    print("\none session's set-up (a single-task batch of `sh -c 'sleep 0'`):")
    print(c.table(["system", "set-up wall", "host CPU"],
                  [[s, c.fmt(walls(setup[s])), c.fmt([x.cpu for x in setup[s]])]
                   for s in SYSTEMS]))
    print(f"agentrt / raw set-up: {c.ratio(setup_a, setup_r)}")
    rows, more = [], []
    for n, conc in pairs:
        a, r = batches[("agentrt", n, conc)], batches[("raw", n, conc)]
        b = batches[("bare", n, conc)]
        best = [ideal(n, conc)]
        rows.append([n, conc, c.fmt(walls(a)), c.fmt(walls(r)), c.fmt(walls(b)),
                     f"{best[0]:.2f} s", c.ratio(walls(a), best), c.ratio(walls(a), walls(r)),
                     c.ratio(walls(a), walls(b))])
        more.append([n, conc, f"{SLACK * best[0] + c.median(setup_a):.2f} s",
                     c.fmt([s.per_minute for s in a], "/min", 1),
                     c.fmt([s.per_minute for s in r], "/min", 1),
                     c.fmt([s.cpu_per_session for s in a]),
                     c.fmt([s.cpu_per_session for s in r]),
                     c.fmt([s.locked for s in r])])
    print("\nthroughput (wall time of the whole batch):")
    print(c.table(["N", "C", "agentrt wall", "raw wall", "bare docker run wall", "ideal",
                   "agentrt / ideal", "agentrt / raw", "agentrt / bare engine"], rows))
    print()
    print(c.table(["N", "C", "agentrt bound (1.5×ideal + set-up)", "agentrt sessions",
                   "raw sessions", "agentrt host CPU/session", "raw host CPU/session",
                   "raw git lock held"], more))
    print("(host CPU = getrusage SELF + CHILDREN user+sys / N: this process and the git and "
          "docker CLI processes it ran; dockerd's CPU is not included. Raw's git worktree "
          "remove and branch -D are serialised by one lock, because they fail in parallel on "
          "git's own shared state; 'git lock held' is that serialised time per batch.)\n")
    for n, conc in pairs:
        for system, set_up in (("agentrt", setup_a), ("raw", setup_r)):  # bare has no set-up
            wall = c.median(walls(batches[(system, n, conc)]))
            bound = SLACK * ideal(n, conc) + c.median(set_up)
            print(c.goal(f"N={n} C={conc} {system} throughput ≤ 1.5× ideal + set-up",
                         wall, bound, " s"))
    for n, conc in pairs:
        a, b = walls(batches[("agentrt", n, conc)]), walls(batches[("bare", n, conc)])
        print(c.goal(f"N={n} C={conc} agentrt / bare docker run", c.median(a) / c.median(b),
                     1.25))
    for n, conc in pairs:
        for system in ("agentrt", "raw"):
            cpu = c.median([s.cpu_per_session for s in batches[(system, n, conc)]])
            print(c.goal(f"N={n} C={conc} {system} host CPU per session ≤ 100 ms",
                         cpu * 1000, CPU_GOAL_MS, "ms"))


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], runs=3)
    p.add_argument("--tasks", type=int, nargs="+", default=[40],
                   help="tasks per batch, N (several values allowed; default 40)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[8],
                   help="tasks at once, C (several values allowed; default 8)")
    p.add_argument("--files", type=int, default=2000, help="files in the benchmark repository")
    p.add_argument("--megabytes", type=int, default=25, help="size of the benchmark repository")
    p.add_argument("--repo", type=Path,
                   help="a real repository to clone instead of the synthetic one (e.g. mypy)")
    p.add_argument("--raw-dir", type=Path,
                   help="where raw worktrees go (default: next to the repository, same disk)")
    args = p.parse_args()
    pairs = list(itertools.product(args.tasks, args.concurrency))
    limits = ResourceLimits(memory_mb=512, cpu_percent=100, pids=256, disk_mb=1024)
    config = RunConfig(resource_limits=limits, merge="none")
    c.header(f"throughput: one-second tasks, (N, C) in {pairs}, repository of {args.files} "
             f"files, {args.megabytes} MB", args.runs)
    with c.scratch("throughput") as root, contextlib.ExitStack() as stack:
        repo, trees = repo_and_trees(root, args, stack)
        raw = RawBatch(repo, trees, limits, root.name)
        bare = BareBatch(limits, root.name)
        agentrt_batch(repo, config, SETUP, 1, 1)  # warm-up: page cache, image layers, imports
        raw.run(SETUP, 1, 1)
        rss_start = peak_rss_mb()
        setup, batches = run_all(repo, config, raw, bare, args.runs, pairs)
    report(setup, batches, pairs)
    sessions = sum(n for _, n in COUNTS)
    print("\nper session in the batches (agentrt: seeded volumes, the warm pool):")
    print(c.count_table([one for one, _ in COUNTS], "engine", sessions))
    print(c.count_table([one for one, _ in COUNTS], "processes", sessions))
    print(f"\npeak RSS of this process (ru_maxrss): {rss_start:.0f} MB after the warm-up, "
          f"{peak_rss_mb():.0f} MB at the end (it includes raw's threads, which hold little)")


if __name__ == "__main__":
    main()
