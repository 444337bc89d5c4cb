"""One session's lifecycle: agentrt against git worktree + docker run by hand.

agentrt: ``IsolatedAgentSession`` create → the container writes a timestamp and exits →
harvest container + verified bundle import → clean-up. Raw: ``git worktree add`` +
``docker run --rm`` with the same limits and
hardening, the worktree bind-mounted + ``git worktree remove --force`` + branch delete.

*ready* is the time from the start of creation until the agent's first instruction runs (the
command's own ``date +%s.%N``); *teardown* is the time from that instruction until everything
is released. Raw worktrees go next to the repository (the same disk) unless ``--raw-dir``
says otherwise (``--raw-dir /dev/shm`` gives raw a RAM-backed checkout: its best case).
Run: ``.venv/bin/python bench/lifecycle.py [--runs N] [--raw-dir DIR] [--engine dind]``.
``--engine dind`` also starts a Docker-in-Docker engine (an engine that does not share this
disk, standing in for Colima's VM or a remote host) and prints agentrt's lifecycle there next
to the local engine's, in the same run.
"""

from __future__ import annotations

import contextlib
import functools
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _common as c
import _repo
import docker

import runtime.backends.docker.trees as tree_mod
import runtime.engine.volumes as volumes_mod
import runtime.git.harvest as harvest_mod
import runtime.git.object_store as object_store_mod
import runtime.git.work_home as work_home_mod
import runtime.git.workspace as workspace_mod
import runtime.run.session as session_mod
import runtime.run.session_parts as parts_mod
from runtime import IsolatedAgentSession, ResourceLimits, RunConfig, Task
from runtime.backends.docker.supervisor import Supervisor
from runtime.engine.container import AgentContainer
from runtime.git.safe_git import MainRepo

STAMP = ["sh", "-c", "date +%s.%N > /workspace/t0"]
CHECKOUT = "checkout (git init + reset --hard + chown)"
# Where agentrt's time goes, measured by wrapping these names (runtime/ is not modified).
PHASES: list[tuple[Any, str, str]] = [
    (session_mod, "create_branch", "create branch"),
    (object_store_mod, "ensure_store", "run object store (first session of a run only)"),
    (tree_mod, "create_volume", "volume: fallocate+mkfs+mount"),
    (tree_mod, "create_workspace", CHECKOUT),
    (workspace_mod, "_chown_tree", "  of which chown of the tree"),
    (parts_mod, "create_sqlite", "private SQLite file"),
    (AgentContainer, "create", "container create"),
    (AgentContainer, "start", "container start"),
    (Supervisor, "start", "supervisor start (events stream)"),
    (session_mod, "bring_work_home", "bring work home (all of the below)"),
    (tree_mod, "run_harvest", "  harvest: container + snapshot + bundles (bound directory)"),
    (harvest_mod, "fetch_file", "    of which get_archive of a bundle (engine elsewhere)"),
    (work_home_mod, "import_bundle", "  verify + index-pack --strict + adopt"),
    (AgentContainer, "remove", "container remove"),
    (volumes_mod.Volume, "remove", "volume: umount + rm"),
]


@contextlib.contextmanager
def phase_timers() -> Iterator[dict[str, float]]:
    """Accumulate the time spent in each of PHASES while inside the block."""
    spent: dict[str, float] = {}
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in PHASES]

    def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
        return wrapper

    for owner, name, label in PHASES:
        setattr(owner, name, timed(label, getattr(owner, name)))
    try:
        yield spent
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


Times = dict[str, float]


#: What :func:`agentrt_once` counted per session (engine API calls, processes spawned).
COUNTS: list[dict[str, Any]] = []


def agentrt_once(repo: Path, config: RunConfig, n: int,
                 client: Any = None) -> tuple[Times, Times]:
    """Lifecycle, ready and teardown seconds of one session, and its phase times; its engine
    calls and processes are appended to :data:`COUNTS`."""
    with phase_timers() as phases, c.counting() as counts:
        cpu = host_cpu()
        start = time.time()
        with IsolatedAgentSession(Task(id=f"life{n}", command=STAMP), config, repo=repo,
                                  client=client) as s:
            result = s.run()
            final = time.time()
        end = time.time()
        cpu = host_cpu() - cpu
    COUNTS.append(counts)
    if result.status.value != "succeeded":
        raise RuntimeError(f"session {s.session_id} {result.status.value}: {result.reason}")
    t0 = float(_repo.git("show", f"{s.branch}:t0", cwd=repo))
    _repo.git("branch", "-q", "-D", s.branch, cwd=repo)
    # An engine that does not share this disk checks out inside the engine (not this phase).
    return times(start, t0, final, end, phases.get(CHECKOUT, 0.0), cpu), phases


def warm_ready_once(repo: Path, config: RunConfig, n: int, supervisor: Supervisor,
                    run_id: str) -> float:
    """Ready of a session prepared ahead (what the coordinator's warm pool does while slots
    are busy): from ``run()`` to the agent's first instruction. Checkout excluded."""
    session = IsolatedAgentSession(Task(id=f"warm{n}", command=STAMP), config, repo=repo,
                                   run_id=run_id, supervisor=supervisor)
    try:
        session.prepare()
        session.stand_by()
        start = time.time()
        result = session.run()
    finally:
        session.close()
    if result.status.value != "succeeded":
        raise RuntimeError(f"session {session.session_id} {result.status.value}")
    t0 = float(_repo.git("show", f"{session.branch}:t0", cwd=repo))
    _repo.git("branch", "-q", "-D", session.branch, cwd=repo)
    return t0 - start


def warm_ready(repo: Path, config: RunConfig, runs: int) -> list[float]:
    """``runs`` warm readies, with one supervisor running throughout (as in a run)."""
    from runtime.git.object_store import remove_run_stores
    from runtime.run.identity import new_run_id

    run_id = new_run_id()
    client = docker.from_env()
    try:
        with Supervisor(client, run_id) as supervisor:
            return [warm_ready_once(repo, config, n, supervisor, run_id)
                    for n in range(runs + 1)][1:]  # the first one warms up
    finally:
        remove_run_stores(MainRepo(repo), run_id)


def host_cpu() -> float:
    """CPU seconds used so far by this process (all threads) and its waited-for children."""
    own, kids = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                      resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def times(start: float, t0: float, final: float, end: float, checkout: float,
          cpu: float) -> Times:
    """The reported metrics from the instants of one lifecycle (``final``: the work is
    available, agentrt's result final or raw's container gone; ``end``: all released)."""
    return {"lifecycle": end - start, "ready": t0 - start, "teardown": end - t0,
            "until the work is available": final - start,
            "checkout": checkout, "ready − checkout": t0 - start - checkout,
            "host CPU (self + children)": cpu}


def raw_once(repo: Path, trees: Path, limits: ResourceLimits, label: str, n: int) -> Times:
    """The same metrics for git worktree + docker run by hand, the worktree under ``trees``."""
    tree, branch = trees / f"raw-wt{n}", f"raw/life{n}"
    cpu = host_cpu()
    start = time.time()
    _repo.git("worktree", "add", "-q", "-b", branch, str(tree), "HEAD", cwd=repo)
    checkout = time.time() - start
    tree.chmod(0o777)  # the agent (uid 1000) must be able to write its timestamp
    subprocess.run(["docker", "run", "--rm", *c.raw_docker_flags(limits, label),
                    "-v", f"{tree}:/workspace", "-w", "/workspace", c.IMAGE, *STAMP],
                   check=True, capture_output=True)
    final = time.time()
    t0 = float((tree / "t0").read_text())
    _repo.git("worktree", "remove", "--force", str(tree), cwd=repo)
    _repo.git("branch", "-q", "-D", branch, cwd=repo)
    end = time.time()
    return times(start, t0, final, end, checkout, host_cpu() - cpu)


def filesystem(path: Path) -> str:
    """The filesystem type ``path`` lives on (``df --output=fstype``)."""
    out = subprocess.run(["df", "--output=fstype", str(path)], capture_output=True, text=True,
                         check=False).stdout.split()
    return out[-1] if out else "?"


def repo_and_trees(root: Path, args: Any, stack: contextlib.ExitStack) -> tuple[Path, Path]:
    """The benchmark repository's clone under ``root``, and where raw worktrees go (next to
    it, or in a temporary directory under ``--raw-dir``); says both."""
    repo = _repo.clone(root / "repo", files=args.files, megabytes=args.megabytes,
                       source=args.repo)
    files = len(_repo.git("ls-files", cwd=repo).splitlines())
    print(f"repository: {args.repo or 'synthetic'} ({files} files)")
    trees = root
    if args.raw_dir:
        trees = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.raw_dir)))
    print(f"raw worktrees in {trees} ({filesystem(trees)}); agentrt volumes: loop ext4 "
          f"images in {repo}/.git/agentrt ({filesystem(repo)})")
    return repo, trees


def collect(into: dict[str, list[float]], sample: dict[str, float]) -> None:
    """Append each value of ``sample`` to its list in ``into``."""
    for key, value in sample.items():
        into.setdefault(key, []).append(value)


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], runs=7)
    p.add_argument("--disk-mb", type=int, default=1024, help="agentrt volume size (MiB)")
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--megabytes", type=int, default=25)
    p.add_argument("--repo", type=Path,
                   help="a real repository to clone instead of the synthetic one (e.g. mypy)")
    p.add_argument("--raw-dir", type=Path,
                   help="where raw worktrees go (default: next to the repository, same disk)")
    p.add_argument("--warm-runs", type=int, default=10,
                   help="sessions prepared ahead, for ready with the warm pool (p50/p95)")
    p.add_argument("--engine", choices=["local", "dind"], default="local",
                   help="dind: also measure agentrt on an engine that does not share this disk")
    args = p.parse_args()
    limits = ResourceLimits(memory_mb=512, cpu_percent=100, pids=256, disk_mb=args.disk_mb)
    config = RunConfig(resource_limits=limits)
    c.header(f"lifecycle: {args.files} files, {args.megabytes} MB, disk_mb={args.disk_mb}",
             args.runs)
    a: dict[str, list[float]] = {}
    r: dict[str, list[float]] = {}
    phases: dict[str, list[float]] = {}
    with c.scratch("lifecycle") as root, contextlib.ExitStack() as stack:
        repo, trees = repo_and_trees(root, args, stack)
        agentrt_once(repo, config, 0)  # warm-up: page cache, image layers, imports
        raw_once(repo, trees, limits, root.name, 0)
        for n in range(1, args.runs + 1):
            order = (0, 1) if n % 2 else (1, 0)  # alternate who goes first
            for which in order:
                if which == 0:
                    sample, spent = agentrt_once(repo, config, n)
                    collect(a, sample)
                    collect(phases, spent)
                else:
                    collect(r, raw_once(repo, trees, limits, root.name, n))
        warm = warm_ready(repo, config, args.warm_runs) if args.warm_runs else []
    if args.engine == "dind":
        remote_lifecycle(args, config, repo_args=(args.files, args.megabytes), local=a)
    rows = [[k, c.fmt(a[k]), c.fmt(r[k]), c.ratio(a[k], r[k])] for k in a]
    print(c.table(["metric", "agentrt", "raw (worktree + docker run)", "agentrt / raw"], rows))
    print("\nagentrt phases (per session):")
    print(c.table(["phase", "time"], [[label, c.fmt(phases[label])]
                                      for _, _, label in PHASES if label in phases]))
    measured = COUNTS[1:args.runs + 1]  # the warm-up's first session is not one of them
    print("\nper session (agentrt):")
    print(c.count_table(measured, "engine"))
    print(c.count_table(measured, "processes"))
    checkout = c.median(a["checkout"])
    print("(raw checkout = git worktree add; agentrt checkout = the phase above)\n")
    print(c.goal("lifecycle ≤ 1.3× raw (issue 31: raw on tmpfs, synthetic 2,000 files)",
                 c.median(a["lifecycle"]) / c.median(r["lifecycle"]), 1.3))
    print(c.goal(f"ready p50 ≤ 400 ms + agentrt's checkout ({checkout * 1000:.0f} ms)",
                 c.median(a["ready"]) * 1000, 400 + checkout * 1000, "ms"))
    if warm:
        p50, p95 = c.percentile(warm, 50) * 1000, c.percentile(warm, 95) * 1000
        print(f"\nready with the warm pool (prepared ahead; run() to the first instruction), "
              f"{len(warm)} sessions: p50 {p50:.0f} ms, p95 {p95:.0f} ms, "
              f"min {min(warm) * 1000:.0f} ms")
        print(c.goal("ready p50 ≤ 50 ms with the warm pool", p50, 50, "ms"))
        print(c.goal("ready p95 ≤ 100 ms with the warm pool", p95, 100, "ms"))


def remote_lifecycle(args: Any, config: RunConfig, repo_args: tuple[int, int],
                     local: dict[str, list[float]]) -> None:
    """agentrt's lifecycle on a dind engine (volumes made there, the base shipped as a
    bundle), printed next to the local engine's samples of this same run."""
    import docker

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.integration.dind import start_dind, stop_dind

    engine = start_dind(docker.from_env())
    remote: dict[str, list[float]] = {}
    try:
        with c.scratch("lifecycle-remote") as root:
            repo = _repo.clone(root / "repo", files=repo_args[0], megabytes=repo_args[1])
            agentrt_once(repo, config, 0, engine.client)  # warm-up
            for n in range(1, args.runs + 1):
                collect(remote, agentrt_once(repo, config, n, engine.client)[0])
    finally:
        stop_dind(engine)
    keys = ["lifecycle", "ready", "teardown", "host CPU (self + children)"]
    print(c.table(["metric", "agentrt, local engine", "agentrt, dind engine", "dind / local"],
                  [[k, c.fmt(local[k]), c.fmt(remote[k]), c.ratio(remote[k], local[k])]
                   for k in keys]))
    print()


if __name__ == "__main__":
    main()
