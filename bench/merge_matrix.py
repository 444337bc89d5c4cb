"""Conflict detection on a 2,000-file repository: agentrt against plain ``git merge-tree``.

Five branches of the deterministic benchmark repository (``bench/_repo.py``) each change a few
files; three of the ten pairs conflict (same line twice, and a modify/delete), the rest touch
distinct files or distant lines of one file. agentrt: ``conflict_matrix(repo, branches)``
(every pair once, conflicts with paths, kinds and line ranges) and ``check_merge`` of each
branch against ``main``. Raw: the same number of ``git merge-tree --write-tree`` calls, run
directly (which answers only "clean or not" and which paths). A third row times the matrix's
ten merge-tree calls alone through agentrt's safe git, to show where the rest goes. The jobs
alternate their order from run to run.
Goal: the whole agentrt matrix ≤ 100 ms.
Run: ``.venv/bin/python bench/merge_matrix.py [--runs N]``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import _common as c
import _repo

import runtime.git.safe_git as gitops
from runtime.git.conflicts import SafeGit
from runtime.git.merge import check_merge, conflict_matrix
from runtime.git.safe_git import MainRepo

TARGET = "main"
# (branch, {path index: edit}); an edit is ("line", n, text), ("delete",) or ("add", text).
# Paths are indexes into the repository's sorted file list, so the plan is deterministic.
Edit = tuple[Any, ...]
PLAN: list[tuple[str, dict[int, Edit]]] = [
    ("agent/t1/a00001", {0: ("line", 10, "t1"), 1: ("line", 5, "t1"), -1: ("add", "t1\n")}),
    ("agent/t2/a00002", {0: ("line", 10, "t2"), 2: ("line", 20, "t2")}),  # t1 × t2: line 10
    ("agent/t3/a00003", {0: ("line", -5, "t3"), 3: ("line", 8, "t3")}),  # far from t1/t2
    ("agent/t4/a00004", {3: ("line", 8, "t4"), 4: ("line", 3, "t4"), 5: ("delete",)}),
    ("agent/t5/a00005", {5: ("line", 12, "t5"), 6: ("line", 2, "t5"), 1: ("line", -3, "t5")}),
]
EXPECTED = {("agent/t1/a00001", "agent/t2/a00002"), ("agent/t3/a00003", "agent/t4/a00004"),
            ("agent/t4/a00004", "agent/t5/a00005")}


def git(repo: Path, *args: str, data: bytes | None = None, index: Path | None = None) -> str:
    """The benchmark's own git (no user config), optionally on a private index file."""
    env = {**_repo.GIT_ENV, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "b@agentrt.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "b@agentrt.invalid"}
    if index is not None:
        env["GIT_INDEX_FILE"] = str(index)
    proc = subprocess.run(["git", "-C", str(repo), *args], input=data, capture_output=True,
                          env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode().strip()


def edited(text: bytes, line: int, new: str) -> bytes:
    """``text`` with one line (1-based; negative counts from the end) replaced by ``new``."""
    lines = text.split(b"\n")
    lines[line - 1 if line > 0 else line] = new.encode()
    return b"\n".join(lines)


def make_branches(repo: Path) -> list[str]:
    """Commit PLAN's branches from ``main`` without touching the checkout; return their names."""
    files = git(repo, "ls-tree", "-r", "--name-only", TARGET).splitlines()
    # Every fifth file of the larger half: enough lines for the edits above, spread over dirs.
    sizes = git(repo, "ls-tree", "-r", "-l", TARGET).splitlines()
    big = {line.split("\t")[1] for line in sizes if int(line.split()[3]) > 8000}
    pool = [f for f in files if f in big][::5]
    index = repo / ".git" / "bench-index"
    for branch, edits in PLAN:
        git(repo, "read-tree", TARGET, index=index)
        for slot, edit in edits.items():
            path = f"src/new/{branch.split('/')[1]}.py" if slot < 0 else pool[slot]
            if edit[0] == "delete":
                git(repo, "update-index", "--force-remove", "--", path, index=index)
                continue
            if edit[0] == "add":
                content = edit[1].encode()
            else:
                old = subprocess.run(["git", "-C", str(repo), "cat-file", "blob",
                                      f"{TARGET}:{path}"], capture_output=True, check=True)
                content = edited(old.stdout, edit[1], f"# {edit[2]} was here")
            blob = git(repo, "hash-object", "-w", "--stdin", data=content)
            git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}",
                index=index)
        tree = git(repo, "write-tree", index=index)
        commit = git(repo, "commit-tree", tree, "-p", TARGET, "-m", f"work on {branch}")
        git(repo, "update-ref", f"refs/heads/{branch}", commit)
    index.unlink()
    return [branch for branch, _ in PLAN]


def raw_merge_tree(repo: Path, ours: str, theirs: str) -> bool:
    """One plain ``git merge-tree --write-tree``; True if the two merge cleanly."""
    proc = subprocess.run(["git", "-C", str(repo), "merge-tree", "--write-tree", ours, theirs],
                          capture_output=True, env=_repo.GIT_ENV, check=False)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"git merge-tree {ours} {theirs}: {proc.stderr.decode()}")
    return proc.returncode == 0


@contextlib.contextmanager
def counting_git() -> Iterator[list[str]]:
    """Record the subcommand of every git command agentrt runs inside the block (untimed)."""
    verbs: list[str] = []
    real = gitops.run_git

    def run_git(args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        verbs.append(next((a for a in args if not a.startswith("-")), "?"))
        return real(args, **kwargs)

    gitops.run_git = run_git
    try:
        yield verbs
    finally:
        gitops.run_git = real


def timed(fn: Callable[[], object]) -> float:
    """Wall time of one call, in seconds."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    args = c.parser(__doc__.splitlines()[0], runs=15).parse_args()
    c.header("merge matrix: conflict_matrix and check_merge vs git merge-tree", args.runs)
    with c.scratch("merge-matrix") as root:
        repo = _repo.clone(root / "repo")
        branches = make_branches(repo)
        main_repo = MainRepo(repo)
        pairs = list(combinations(branches, 2))
        count = len(git(repo, "ls-tree", "-r", "--name-only", TARGET).splitlines())
        print(f"repository: {count} files at {git(repo, 'rev-parse', '--short', TARGET)}; "
              f"{len(branches)} branches, {len(pairs)} pairs")

        # Correctness first (untimed): agentrt and raw git agree on every pair.
        matrix = conflict_matrix(main_repo, branches)
        found = {pair for pair, conflicts in matrix.items() if conflicts}
        raw_found = {(a, b) for a, b in pairs if not raw_merge_tree(repo, a, b)}
        if found != EXPECTED or raw_found != EXPECTED:
            raise RuntimeError(f"unexpected conflicts: agentrt {found}, raw {raw_found}")
        for (first, second), conflicts in sorted(matrix.items()):
            for conflict in conflicts:
                print(f"  {first.split('/')[1]} × {second.split('/')[1]}: {conflict.path} "
                      f"{conflict.kind} ours {conflict.ours_lines} theirs "
                      f"{conflict.theirs_lines}")
        if not all(check_merge(main_repo, TARGET, b).clean for b in branches):
            raise RuntimeError("every branch should merge cleanly into main on its own")
        with counting_git() as verbs:
            conflict_matrix(main_repo, branches)
        spawned = ", ".join(f"{verbs.count(v)} {v}" for v in sorted(set(verbs)))
        print(f"git processes per matrix: agentrt {len(verbs)} ({spawned}), raw {len(pairs)}")

        # Where the matrix's time goes: its ten merge-tree calls alone, through agentrt's git.
        safe = SafeGit(main_repo)
        heads = {b: safe.commit(b) for b in branches}
        jobs: dict[str, Callable[[], object]] = {
            "matrix": lambda: conflict_matrix(main_repo, branches),
            "raw10": lambda: [raw_merge_tree(repo, a, b) for a, b in pairs],
            "safe10": lambda: [safe.run("merge-tree", "--write-tree", "-z", heads[a], heads[b],
                                        check=False) for a, b in pairs],
            "check": lambda: [check_merge(main_repo, TARGET, b) for b in branches],
            "raw5": lambda: [raw_merge_tree(repo, TARGET, b) for b in branches],
        }
        series: dict[str, list[float]] = {name: [] for name in jobs}
        for fn in jobs.values():
            fn()  # warm the page cache and the pack index
        for run in range(args.runs):
            # Alternate which side goes first, so neither always meets a warmer cache.
            order = list(jobs) if run % 2 == 0 else ["raw10", "safe10", "matrix", "raw5", "check"]
            for name in order:
                series[name].append(timed(jobs[name]))

    rows = [
        [f"conflict_matrix, {len(branches)} branches ({len(pairs)} pairs)",
         c.fmt(series["matrix"]), f"{len(pairs)} × merge-tree", c.fmt(series["raw10"]),
         c.ratio(series["matrix"], series["raw10"])],
        ["  of which its 10 merge-tree (agentrt's safe git, no parsing)", c.fmt(series["safe10"]),
         f"{len(pairs)} × merge-tree", c.fmt(series["raw10"]),
         c.ratio(series["safe10"], series["raw10"])],
        [f"check_merge × {len(branches)} (each branch vs {TARGET})", c.fmt(series["check"]),
         f"{len(branches)} × merge-tree", c.fmt(series["raw5"]),
         c.ratio(series["check"], series["raw5"])],
    ]
    print(c.table(["agentrt", "time", "raw baseline", "time", "agentrt / raw"], rows))
    per_pair = [t / len(pairs) for t in series["raw10"]]
    print(f"one raw merge-tree on this repository: {c.fmt(per_pair)}; "
          f"{os.cpu_count()} cores")
    print(c.goal("conflict_matrix of 5 branches ≤ 100 ms", c.median(series["matrix"]) * 1000,
                 100, "ms"))


if __name__ == "__main__":
    main()
