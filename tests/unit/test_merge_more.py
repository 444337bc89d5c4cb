"""More merging on real git repositories (no Docker): distant edits, renames, a five-branch
matrix, the same line twice, and a merge killed with SIGKILL part-way through."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import pytest

from runtime.git.merge import check_merge, conflict_matrix
from runtime.git.safe_git import MainRepo
from runtime.run.merging import merge_agent_results
from tests.merge_helpers import (
    LINES,
    assert_no_merge_state,
    change_line,
    commit_branch,
    git,
    make_repo,
    session,
)


def raw_merge_tree(repo: Path, ours: str, theirs: str) -> tuple[bool, str, set[str]]:
    """Plain ``git merge-tree --write-tree``: (clean, tree, conflicted paths)."""
    proc = subprocess.run(
        ["git", "-C", str(repo), "merge-tree", "--write-tree", "--name-only", ours, theirs],
        capture_output=True, text=True, check=False,
        env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"})
    assert proc.returncode in (0, 1), proc.stderr
    tree, *rest = proc.stdout.split("\n\n", 1)[0].splitlines()
    return proc.returncode == 0, tree, set(rest)


def line_of(repo: Path, rev: str, path: str, line: int) -> str:
    return git(repo, "show", f"{rev}:{path}").splitlines()[line - 1]


# --- (a) one file, distant regions -----------------------------------------------------


def test_two_branches_editing_distant_lines_of_one_file_both_merge_in_auto(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path)
    commit_branch(repo, "agent/a/abc123", {"f.txt": change_line(LINES, 2, "two by a")})
    commit_branch(repo, "agent/b/abc123", {"f.txt": change_line(LINES, 19, "nineteen by b")})
    pair = ("agent/a/abc123", "agent/b/abc123")
    assert conflict_matrix(MainRepo(repo), list(pair)) == {pair: []}

    a, b = merge_agent_results([session("a"), session("b")], "auto", repo=repo)

    assert (a.merge.status, b.merge.status) == ("merged", "merged")
    both = change_line(change_line(LINES, 2, "two by a"), 19, "nineteen by b")
    assert (repo / "f.txt").read_text() == both  # the checked-out target followed
    assert git(repo, "show", "main:f.txt") == both.strip()
    assert git(repo, "status", "--porcelain") == ""
    assert_no_merge_state(repo)


# --- (b) rename against edit -----------------------------------------------------------

Files = dict[str, str | bytes | None]
RENAME_CASES: dict[str, tuple[Files, Files]] = {
    # name: (first branch's files, second branch's files; None deletes)
    "rename vs edit": ({"f.txt": None, "moved.txt": LINES}, {"f.txt": change_line(LINES, 5, "B")}),
    "rename+edit vs edit of that line": (
        {"f.txt": None, "moved.txt": change_line(LINES, 5, "A")},
        {"f.txt": change_line(LINES, 5, "B")},
    ),
    "rename vs delete": ({"f.txt": None, "moved.txt": LINES}, {"f.txt": None}),
    "rename vs rename elsewhere": ({"f.txt": None, "moved.txt": LINES},
                                   {"f.txt": None, "other.txt": LINES}),
}


@pytest.mark.parametrize("case", list(RENAME_CASES))
def test_rename_against_edit_is_reported_as_git_merge_tree_sees_it(
    tmp_path: Path, case: str
) -> None:
    repo = make_repo(tmp_path)
    first, second = RENAME_CASES[case]
    commit_branch(repo, "agent/r/abc123", first)
    commit_branch(repo, "agent/e/abc123", second)

    for ours, theirs in (("agent/r/abc123", "agent/e/abc123"),
                         ("agent/e/abc123", "agent/r/abc123")):
        result = check_merge(MainRepo(repo), ours, theirs)
        clean, tree, paths = raw_merge_tree(repo, ours, theirs)
        assert result.clean == clean, (ours, theirs)
        if clean:
            assert result.tree == tree and result.conflicts == []
        else:
            assert result.tree is None
            assert {c.path for c in result.conflicts} == paths


def test_a_clean_rename_and_an_edit_both_land_under_the_new_name(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    commit_branch(repo, "agent/r/abc123", {"f.txt": None, "moved.txt": LINES})
    commit_branch(repo, "agent/e/abc123", {"f.txt": change_line(LINES, 5, "B")})

    r, e = merge_agent_results([session("r"), session("e")], "auto", repo=repo)

    assert (r.merge.status, e.merge.status) == ("merged", "merged")
    assert not (repo / "f.txt").exists()
    assert (repo / "moved.txt").read_text() == change_line(LINES, 5, "B")
    # The final tree is exactly what git computes for the second merge.
    assert git(repo, "rev-parse", "main^{tree}") == raw_merge_tree(
        repo, "main^1", "agent/e/abc123")[1]
    assert_no_merge_state(repo)


# --- (c) the pairwise matrix of five branches -------------------------------------------


def test_matrix_of_five_branches_checks_each_pair_once_and_finds_exactly_the_conflicts(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path)
    plans: dict[str, Files] = {
        "a": {"f.txt": change_line(LINES, 3, "a")},
        "b": {"f.txt": change_line(LINES, 3, "b")},  # a × b: the same line
        "c": {"f.txt": change_line(LINES, 18, "c"), "new.txt": "from c\n"},  # far from a, b
        "d": {"keep.txt": None, "d.txt": "d\n"},
        "e": {"keep.txt": "edited by e\n", "new.txt": "from e\n"},  # d × e, c × e
    }
    for name, files in plans.items():
        commit_branch(repo, f"agent/{name}/abc123", files)
    branches = [f"agent/{name}/abc123" for name in plans]

    matrix = conflict_matrix(MainRepo(repo), branches)

    assert list(matrix) == list(combinations(branches, 2))  # 10 pairs, each once, in order
    kinds = {(x.split("/")[1], y.split("/")[1]): [(c.path, c.kind) for c in found]
             for (x, y), found in matrix.items() if found}
    assert kinds == {
        ("a", "b"): [("f.txt", "content")],
        ("c", "e"): [("new.txt", "add/add")],
        ("d", "e"): [("keep.txt", "modify/delete")],
    }
    for (first, second), found in matrix.items():
        assert all(c.with_branch == second for c in found)
        clean, _, paths = raw_merge_tree(repo, first, second)
        assert (not found) == clean and {c.path for c in found} == paths, (first, second)
    [ab] = matrix[("agent/a/abc123", "agent/b/abc123")]
    assert ab.ours_lines == ab.theirs_lines == [(3, 3)]
    [de] = matrix[("agent/d/abc123", "agent/e/abc123")]
    assert (de.ours_lines, de.theirs_lines) == ([], [(1, 1)])  # d deleted; e changed line 1


# --- (d) SIGKILL part-way through an automatic merge -------------------------------------

CHILD = """
import os, signal, sys
from runtime.run.merging import merge_agent_results
from runtime.models import SessionResult, SessionStatus

repo, target, when, *tasks = sys.argv[1:]
if when == "after-update-ref":
    # The worst moment for a checked-out target: the branch has moved, its tree not yet.
    import runtime.git.conflicts
    real = runtime.git.conflicts.SafeGit.run
    def run(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if args[0] == "update-ref":
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    runtime.git.conflicts.SafeGit.run = run
sessions = [SessionResult(id=f"{t}-abc123", task_id=t, branch=f"agent/{t}/abc123",
                          status=SessionStatus.SUCCEEDED) for t in tasks]
print("ready", flush=True)
merge_agent_results(sessions, "auto", repo=repo, target=target, run_id="r-kill")
print("done", flush=True)
"""
TASKS = [f"t{i}" for i in range(8)]


def start_merge(repo: Path, when: str = "any") -> subprocess.Popen[str]:
    """The merge in a child process, its own session; returns once the imports are done."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(repo), "main", when, *TASKS],
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert child.stdout is not None and child.stdout.readline() == "ready\n"
    return child


def alive_in_group(pgid: int) -> bool:
    """True while a process of group ``pgid`` runs (zombies, whose reaping by PID 1 may lag,
    have finished and do not count where /proc tells them apart)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ")".
        fields = stat.rpartition(")")[2].split()
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def wait_for_orphans(pgid: int, timeout: float = 10.0) -> None:
    """Wait until the git commands a killed child had started have finished too."""
    deadline = time.monotonic() + timeout
    while alive_in_group(pgid):
        if time.monotonic() > deadline:
            raise AssertionError(f"processes of group {pgid} still running after {timeout} s")
        time.sleep(0.01)


def reap(child: subprocess.Popen[str]) -> int:
    """Wait for the killed child and for the git commands it left running; its status."""
    status = child.wait()
    if child.stdout is not None:
        child.stdout.close()
    wait_for_orphans(child.pid)
    return status


def assert_old_or_whole_merges(repo: Path, old: str) -> int:
    """main is ``old`` or a first-parent chain of complete agentrt merges on it; return its
    length. Each merge commit's tree must be exactly what merge-tree gives for its parents."""
    commit, count = git(repo, "rev-parse", "main"), 0
    while commit != old:
        count += 1
        assert count <= len(TASKS), "main's first-parent chain does not lead back to old"
        first, second = git(repo, "rev-list", "--parents", "-n1", commit).split()[1:]
        assert git(repo, "log", "-1", "--format=%s", commit).startswith("agentrt: merge session")
        clean, tree, _ = raw_merge_tree(repo, first, second)
        assert clean and git(repo, "rev-parse", f"{commit}^{{tree}}") == tree
        commit = first
    return count


def assert_repository_sound(repo: Path) -> None:
    git(repo, "fsck", "--no-dangling", "--no-progress")  # raises on any error
    assert_no_merge_state(repo)
    # merge.lock is an flock file that stays on purpose; git's own locks must not linger.
    stale = [p for p in (repo / ".git").rglob("*.lock") if p.name != "merge.lock"]
    assert stale == []


def test_sigkill_during_auto_merge_leaves_the_old_target_or_whole_merges_and_a_rerun_lands_the_rest(
    tmp_path: Path,
) -> None:
    landed: set[int] = set()
    # On a loaded machine the merges start later: longer delays follow, until a kill lands
    # part-way (they are skipped once one has).
    delays = (0.0, 0.01, 0.03, 0.06, 0.1) * 2 + (0.2, 0.4, 0.8, 1.6, 3.2)
    for attempt, delay in enumerate(delays):
        if attempt >= 10 and any(0 < count < len(TASKS) for count in landed):
            break
        (tmp_path / f"k{attempt}").mkdir()
        repo = make_repo(tmp_path / f"k{attempt}")
        # Not checked out: a checked-out target has one gap, pinned down by the next test.
        git(repo, "switch", "-q", "-c", "elsewhere")
        for name in TASKS:
            commit_branch(repo, f"agent/{name}/abc123", {f"{name}.txt": f"{name}\n"})
        old = git(repo, "rev-parse", "main")

        child = start_merge(repo)
        time.sleep(delay)
        os.kill(child.pid, signal.SIGKILL)
        reap(child)

        landed.add(assert_old_or_whole_merges(repo, old))
        assert_repository_sound(repo)
        again = merge_agent_results([session(n) for n in TASKS], "auto", repo=repo,
                                    target="main", run_id="r-again")
        assert {s.merge.status for s in again} == {"merged"}
        assert assert_old_or_whole_merges(repo, old) == len(TASKS)  # each branch once
        for name in TASKS:
            assert git(repo, "show", f"main:{name}.txt") == name
        assert_repository_sound(repo)
    # At least one kill fell part-way: after some merges had landed and before the last.
    assert any(0 < count < len(TASKS) for count in landed), landed


def test_sigkill_after_moving_a_checked_out_target_before_its_tree_is_recovered_by_a_rerun(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path)
    for name in TASKS:
        commit_branch(repo, f"agent/{name}/abc123", {f"{name}.txt": f"{name}\n"})
    old = git(repo, "rev-parse", "main")

    child = start_merge(repo, when="after-update-ref")
    assert reap(child) == -signal.SIGKILL
    assert assert_old_or_whole_merges(repo, old) == 1  # the ref itself is consistent

    again = merge_agent_results([session(n) for n in TASKS], "auto", repo=repo, run_id="r")
    assert {s.merge.status for s in again} == {"merged"}
    assert git(repo, "status", "--porcelain") == ""
    assert all((repo / f"{name}.txt").exists() for name in TASKS)


# --- (e) the same line twice ------------------------------------------------------------


def test_two_agents_changing_the_same_line_one_merges_the_other_reports_path_and_lines(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path)
    commit_branch(repo, "agent/a/abc123", {"f.txt": change_line(LINES, 7, "seven by a")})
    # b's line 7 becomes two lines, so the two sides' ranges differ.
    commit_branch(repo, "agent/b/abc123", {"f.txt": change_line(LINES, 7, "seven by b\nand more")})
    b_head = git(repo, "rev-parse", "agent/b/abc123")

    a, b = merge_agent_results([session("a"), session("b")], "auto", repo=repo)

    assert (a.merge.status, b.merge.status) == ("merged", "conflicts")
    [conflict] = b.merge.conflicts
    assert (conflict.path, conflict.kind, conflict.with_branch) == ("f.txt", "content", None)
    assert conflict.ours_lines == [(7, 7)]  # the target's line 7, as a left it
    assert conflict.theirs_lines == [(7, 8)]  # b's two lines
    assert b.merge.merge_commit is None
    assert git(repo, "rev-parse", "agent/b/abc123") == b_head  # b's work kept on its branch
    assert git(repo, "rev-parse", "main") == a.merge.merge_commit
    assert line_of(repo, "main", "f.txt", 7) == "seven by a"
    assert (repo / "f.txt").read_text() == change_line(LINES, 7, "seven by a")
    assert git(repo, "status", "--porcelain") == ""
    assert_no_merge_state(repo)
