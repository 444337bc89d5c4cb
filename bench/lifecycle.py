"""One session's lifecycle: agentrt against git worktree + docker run by hand.

agentrt: ``IsolatedAgentSession`` create → the container writes a timestamp and exits →
snapshot → clean-up. Raw: ``git worktree add`` + ``docker run --rm`` with the same limits and
hardening, the worktree bind-mounted + ``git worktree remove --force`` + branch delete.

*ready* is the time from the start of creation until the agent's first instruction runs (the
command's own ``date +%s.%N``); *teardown* is the time from that instruction until everything
is released. Run: ``.venv/bin/python bench/lifecycle.py [--runs N]``.
"""

from __future__ import annotations

import contextlib
import functools
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _common as c
import _repo

import runtime.session as session_mod
import runtime.volumes as volumes_mod
import runtime.workspace as workspace_mod
from runtime import IsolatedAgentSession, ResourceLimits, RunConfig, Task
from runtime.container import AgentContainer
from runtime.supervisor import Supervisor

STAMP = ["sh", "-c", "date +%s.%N > /workspace/t0"]
# Where agentrt's time goes, measured by wrapping these names (runtime/ is not modified).
PHASES: list[tuple[Any, str, str]] = [
    (session_mod, "create_branch", "create branch"),
    (session_mod, "create_volume", "volume: fallocate+mkfs+mount"),
    (session_mod, "create_workspace", "checkout (git init + reset --hard + chown)"),
    (workspace_mod, "_chown_tree", "  of which chown of the tree"),
    (session_mod, "create_sqlite", "private SQLite file"),
    (AgentContainer, "create", "container create"),
    (AgentContainer, "start", "container start"),
    (Supervisor, "start", "supervisor start (events stream)"),
    (session_mod, "snapshot", "snapshot (fetch + add -A + commit)"),
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


def agentrt_once(repo: Path, config: RunConfig, n: int) -> tuple[float, float, float, dict[str, float]]:
    """(lifecycle, ready, teardown) seconds of one session, and its phase times."""
    with phase_timers() as phases:
        start = time.time()
        with IsolatedAgentSession(Task(id=f"life{n}", command=STAMP), config, repo=repo) as s:
            result = s.run()
        end = time.time()
    if result.status.value != "succeeded":
        raise RuntimeError(f"session {s.session_id} {result.status.value}: {result.reason}")
    t0 = float(_repo.git("show", f"{s.branch}:t0", cwd=repo))
    _repo.git("branch", "-q", "-D", s.branch, cwd=repo)
    return end - start, t0 - start, end - t0, phases


def raw_once(repo: Path, limits: ResourceLimits, label: str, n: int) -> tuple[float, ...]:
    """(lifecycle, ready, teardown, checkout) seconds of worktree + docker run by hand."""
    tree, branch = repo.parent / f"raw-wt{n}", f"raw/life{n}"
    start = time.time()
    _repo.git("worktree", "add", "-q", "-b", branch, str(tree), "HEAD", cwd=repo)
    checkout = time.time() - start
    tree.chmod(0o777)  # the agent (uid 1000) must be able to write its timestamp
    subprocess.run(["docker", "run", "--rm", *c.raw_docker_flags(limits, label),
                    "-v", f"{tree}:/workspace", "-w", "/workspace", c.IMAGE, *STAMP],
                   check=True, capture_output=True)
    t0 = float((tree / "t0").read_text())
    _repo.git("worktree", "remove", "--force", str(tree), cwd=repo)
    _repo.git("branch", "-q", "-D", branch, cwd=repo)
    end = time.time()
    return end - start, t0 - start, end - t0, checkout


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], runs=7)
    p.add_argument("--disk-mb", type=int, default=1024, help="agentrt volume size (MiB)")
    p.add_argument("--files", type=int, default=2000)
    p.add_argument("--megabytes", type=int, default=25)
    args = p.parse_args()
    limits = ResourceLimits(memory_mb=512, cpu_percent=100, pids=256, disk_mb=args.disk_mb)
    config = RunConfig(resource_limits=limits)
    c.header(f"lifecycle: {args.files} files, {args.megabytes} MB, disk_mb={args.disk_mb}",
             args.runs)
    a: dict[str, list[float]] = {"lifecycle": [], "ready": [], "teardown": []}
    r: dict[str, list[float]] = {"lifecycle": [], "ready": [], "teardown": [], "checkout": []}
    phases: dict[str, list[float]] = {}
    with c.scratch("lifecycle") as root:
        repo = _repo.clone(root / "repo", files=args.files, megabytes=args.megabytes)
        agentrt_once(repo, config, 0)  # warm-up: page cache, image layers, imports
        raw_once(repo, limits, root.name, 0)
        for n in range(1, args.runs + 1):
            order = (0, 1) if n % 2 else (1, 0)  # alternate who goes first
            for which in order:
                if which == 0:
                    *values, spent = agentrt_once(repo, config, n)
                    for key, value in zip(a, values):
                        a[key].append(value)
                    for label, value in spent.items():
                        phases.setdefault(label, []).append(value)
                else:
                    for key, value in zip(r, raw_once(repo, limits, root.name, n)):
                        r[key].append(value)
    rows = [[k, c.fmt(a[k]), c.fmt(r[k]), c.ratio(a[k], r[k])] for k in a]
    print(c.table(["metric", "agentrt", "raw (worktree + docker run)", "agentrt / raw"], rows))
    print("\nagentrt phases (per session):")
    print(c.table(["phase", "time"], [[k, c.fmt(v)] for k, v in phases.items()]))
    checkout = c.median(phases["checkout (git init + reset --hard + chown)"])
    print(f"raw checkout (git worktree add): {c.fmt(r['checkout'])}")
    print()
    print(c.goal("lifecycle ≤ 1.0× raw", c.median(a["lifecycle"]) / c.median(r["lifecycle"]), 1.0))
    print(c.goal(f"ready p50 ≤ 400 ms + agentrt's checkout ({checkout * 1000:.0f} ms)",
                 c.median(a["ready"]) * 1000, 400 + checkout * 1000, "ms"))


if __name__ == "__main__":
    main()
