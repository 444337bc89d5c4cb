"""The merge gate's cost: agentrt's gate session against running the same check by hand.

agentrt: :class:`runtime.run.merge_gate.MergeGate` on a would-be merge commit (a fresh hardened
session: branch, volume, checkout, container, harvest, clean-up; the gate's branch deleted).
Raw: ``git worktree add --detach`` of the same commit + ``docker run --rm`` of the same command
in the same image with the same limits and hardening, the worktree bind-mounted +
``git worktree remove --force``. Both on the same disk, alternating, in one run.

Run: ``.venv/bin/python bench/merge_gate.py [--runs N] [--repo PATH]`` (``--repo``: a real
repository, e.g. a clone of python/mypy; default: the synthetic 2,000-file repository).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import _common as c
import _repo

from runtime.config import ResourceLimits, RunConfig
from runtime.git.safe_git import MainRepo
from runtime.models import SessionResult, SessionStatus
from runtime.run.merge_gate import MergeGate

CHECK = ["sh", "-c", "ls -R . > /dev/null"]
LIMITS = ResourceLimits(memory_mb=256, cpu_percent=100, time_seconds=120, disk_mb=1024,
                        pids=128)


def would_be_merge(repo: Path) -> tuple[SessionResult, str]:
    """A session branch with one commit, and the merge commit of it into main (no ref)."""
    _repo.git("switch", "-q", "-c", "agent/work/abc123", cwd=repo)
    (repo / "GATE.md").write_text("gate bench\n")
    _repo.git("add", "GATE.md", cwd=repo)
    _repo.git("commit", "-q", "-m", "work", cwd=repo)
    _repo.git("switch", "-q", "main", cwd=repo)
    tree = _repo.git("merge-tree", "--write-tree", "main", "agent/work/abc123", cwd=repo).split()[0]
    commit = _repo.git("commit-tree", tree, "-p", "main", "-p", "agent/work/abc123", "-m",
                       "merge", cwd=repo).strip()
    session = SessionResult(id="work-abc123", task_id="work", branch="agent/work/abc123",
                            status=SessionStatus.SUCCEEDED, image=c.IMAGE)
    return session, commit


def raw_gate(repo: Path, commit: str, where: Path, label: str) -> int:
    """The check by hand: a detached worktree of ``commit``, ``docker run``, remove."""
    tree = where / "raw-gate"
    _repo.git("worktree", "add", "-q", "--detach", str(tree), commit, cwd=repo)
    try:
        return subprocess.run(
            ["docker", "run", "--rm", *c.raw_docker_flags(LIMITS, label),
             "-v", f"{tree}:/workspace", "-w", "/workspace", c.IMAGE, *CHECK],
            capture_output=True, check=False).returncode
    finally:
        _repo.git("worktree", "remove", "--force", str(tree), cwd=repo)


def main() -> None:
    p = c.parser("merge gate overhead", runs=5)
    p.add_argument("--repo", type=Path, help="a real repository to clone (default: synthetic)")
    args = p.parse_args()
    c.header("merge gate: agentrt's gate session vs the check by hand", args.runs)
    with c.scratch("gate") as root:
        repo = _repo.clone(root / "repo", source=args.repo)
        files = len(_repo.git("ls-files", cwd=repo).splitlines())
        print(f"repository: {args.repo or 'synthetic'} ({files} files)")
        session, commit = would_be_merge(repo)
        gate = MergeGate(MainRepo(repo), RunConfig(merge_gate=CHECK, resource_limits=LIMITS), {})
        gate(session, commit)  # warm-up: images, caches
        agentrt: list[float] = []
        raw: list[float] = []
        for _ in range(args.runs):
            with c.stopwatch() as t:
                verdict = gate(session, commit)
            if verdict is None or verdict.verdict != "passed":
                raise SystemExit(f"the gate did not pass: {verdict}")
            agentrt.append(t[0])
            with c.stopwatch() as t:
                code = raw_gate(repo, commit, root, root.name)
            if code != 0:
                raise SystemExit(f"the raw check failed: exit {code}")
            raw.append(t[0])
        print(c.table(["", "wall", "vs raw"], [
            ["agentrt gate session", c.fmt(agentrt), c.ratio(agentrt, raw)],
            ["worktree + docker run (by hand)", c.fmt(raw), "1.00×"],
        ]))
        print(f"overhead per gated merge: {c.median(agentrt) - c.median(raw):.2f} s")


if __name__ == "__main__":
    main()
