"""A no-op session as whole processes: ``agentrt run`` against a worktree + ``docker run`` by hand.

*agentrt*: ``python -m runtime.cli run task.toml --repo R --json`` of one task whose command is
``true`` (``merge = "none"``): the whole process, import and engine discovery included, then
its session branch is deleted (untimed). *raw*: the same by hand as processes on the same disk:
``git worktree add -b`` of HEAD next to the repository, ``docker run --rm`` of ``true`` with the
same image, limits and hardening, the worktree bound, ``git worktree remove --force`` and
``git branch -D``. Alternating who goes first, in one run; median (min–max) and the ratio.
The goal of issue 31 for python/mypy: agentrt / raw ≤ 0.8.

Run: ``.venv/bin/python bench/noop_process.py [--runs 7] [--repo PATH]`` (a real repository,
e.g. python/mypy, cloned once into the scratch directory; without it the synthetic one).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import _common as c
import _repo

from runtime import ResourceLimits

LIMITS = ResourceLimits(memory_mb=512, cpu_percent=100, pids=256, disk_mb=1024)
TASK = f"""[run]
merge = "none"

[run.resource_limits]
memory_mb = {LIMITS.memory_mb}
cpu_percent = {LIMITS.cpu_percent}
pids = {LIMITS.pids}
disk_mb = {LIMITS.disk_mb}

[[tasks]]
id = "noop"
command = ["true"]
"""


def agentrt_once(repo: Path, task_file: Path) -> float:
    """Wall seconds of one ``agentrt run`` process; its branch deleted afterwards."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "runtime.cli", "run", str(task_file),
                           "--repo", str(repo), "--json"], capture_output=True, text=True,
                          cwd=c.BENCH_DIR.parent, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"agentrt run exited {proc.returncode}: {proc.stderr[-2000:]}")
    for session in json.loads(proc.stdout)["sessions"]:
        _repo.git("branch", "-q", "-D", session["branch"], cwd=repo)
    return wall


def raw_once(repo: Path, trees: Path, label: str, n: int) -> float:
    """Wall seconds of worktree add + ``docker run --rm`` + worktree remove + branch delete."""
    tree, branch = trees / f"raw-wt{n}", f"raw/noop{n}"
    start = time.perf_counter()
    _repo.git("worktree", "add", "-q", "-b", branch, str(tree), "HEAD", cwd=repo)
    subprocess.run(["docker", "run", "--rm", *c.raw_docker_flags(LIMITS, label),
                    "-v", f"{tree}:/workspace", "-w", "/workspace", c.IMAGE, "true"],
                   check=True, capture_output=True)
    _repo.git("worktree", "remove", "--force", str(tree), cwd=repo)
    _repo.git("branch", "-q", "-D", branch, cwd=repo)
    return time.perf_counter() - start


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], runs=7)
    p.add_argument("--repo", type=Path, help="a real repository to clone (e.g. python/mypy)")
    args = p.parse_args()
    c.header("a no-op session as whole processes", args.runs)
    walls: dict[str, list[float]] = {"agentrt": [], "raw": []}
    with c.scratch("noop") as root:
        repo = _repo.clone(root / "repo", files=200, megabytes=2, source=args.repo)
        files = len(_repo.git("ls-files", cwd=repo).splitlines())
        print(f"repository: {args.repo or 'synthetic'} ({files} files); raw worktrees next to it")
        task_file = root / "noop.toml"
        task_file.write_text(TASK)
        agentrt_once(repo, task_file)  # warm-up
        raw_once(repo, root, root.name, 0)
        for n in range(1, args.runs + 1):
            for system in (("agentrt", "raw") if n % 2 else ("raw", "agentrt")):
                walls[system].append(agentrt_once(repo, task_file) if system == "agentrt"
                                     else raw_once(repo, root, root.name, n))
    print(c.table(["system", "wall", "agentrt / raw"],
                  [["agentrt run (whole process)", c.fmt(walls["agentrt"]),
                    c.ratio(walls["agentrt"], walls["raw"])],
                   ["git worktree + docker run --rm (processes)", c.fmt(walls["raw"]), "1.00×"]]))
    print(c.goal("no-op session / raw worktree + docker run (same disk)",
                 c.median(walls["agentrt"]) / c.median(walls["raw"]), 0.8))


if __name__ == "__main__":
    main()
