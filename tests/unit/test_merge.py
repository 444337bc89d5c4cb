"""Conflict detection and merging on real git repositories (no Docker)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest

from runtime.errors import MergeError
from runtime.git.merge import check_merge, conflict_matrix
from runtime.git.safe_git import MainRepo
from runtime.models import SessionResult, SessionStatus
from runtime.run.merging import merge_agent_results
from tests.merge_helpers import (
    LINES,
    assert_no_merge_state,
    change_line,
    commit_branch,
    commit_worktree,
    git,
    make_repo,
    session,
    snapshot,
    worktree_and_index,
)


def test_clean_branch_is_detected_clean(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    commit_branch(repo, "agent/a/000001", {"f.txt": change_line(LINES, 2, "two"), "n.txt": "n\n"})
    commit_worktree(repo, {"f.txt": change_line(LINES, 18, "eighteen")}, "target moves on")
    before = snapshot(repo)

    result = check_merge(MainRepo(repo), "main", "agent/a/000001")

    assert result.clean and result.conflicts == []
    assert result.tree is not None
    listing = git(repo, "ls-tree", "--name-only", result.tree).split()
    assert listing == ["f.txt", "keep.txt", "n.txt"]
    assert snapshot(repo) == before  # no working tree, index or ref touched


def test_content_conflict_reports_path_kind_and_line_ranges(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    # Both change line 5; ours changes line 8 while theirs turns line 7 into three lines
    # (adjacent changes conflict in git too); each side also changes a far line that merges.
    ours = change_line(change_line(change_line(LINES, 5, "5m"), 8, "8m"), 15, "15m")
    theirs = change_line(change_line(change_line(LINES, 10, "10a"), 7, "7a\n7b\n7c"), 5, "5a")
    commit_worktree(repo, {"f.txt": ours}, "target edit")
    commit_branch(repo, "agent/a/000001", {"f.txt": theirs}, start="main~1")

    result = check_merge(MainRepo(repo), "main", "agent/a/000001")

    assert not result.clean and result.tree is None
    [conflict] = result.conflicts
    assert conflict.path == "f.txt"
    assert conflict.kind == "content"
    assert conflict.ours_lines == [(5, 5), (8, 8)]  # not 15: it merges cleanly
    assert conflict.theirs_lines == [(5, 5), (7, 9)]  # in theirs' numbering; not 12 (was 10)
    assert conflict.with_branch is None


def test_add_add_modify_delete_and_binary_kinds(tmp_path: Path) -> None:
    repo = make_repo(tmp_path, {"f.txt": LINES, "gone.txt": "old\n", "b.bin": "x"})
    commit_worktree(repo, {"new.txt": "main 1\nsame\nmain 3\n", "gone.txt": "old\nmore\n"}, "t")
    (repo / "b.bin").write_bytes(b"\0main")
    git(repo, "commit", "-q", "-am", "binary on main")
    commit_branch(repo, "agent/a/000001",
                  {"new.txt": "agent 1\nsame\nagent 3\n", "gone.txt": None, "b.bin": b"\0agent"},
                  start="main~2")

    result = check_merge(MainRepo(repo), "main", "agent/a/000001")

    kinds = {c.path: c.kind for c in result.conflicts}
    assert kinds == {"new.txt": "add/add", "gone.txt": "modify/delete", "b.bin": "binary"}
    by_path = {c.path: c for c in result.conflicts}
    assert by_path["new.txt"].ours_lines == [(1, 1), (3, 3)]
    assert by_path["new.txt"].theirs_lines == [(1, 1), (3, 3)]
    assert by_path["gone.txt"].ours_lines == [(2, 2)]  # the target's modification
    assert by_path["gone.txt"].theirs_lines == []  # the branch deleted the file
    assert by_path["b.bin"].ours_lines == by_path["b.bin"].theirs_lines == []


def test_rename_conflict_is_named_rename(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    git(repo, "mv", "f.txt", "main.txt")
    git(repo, "commit", "-q", "-m", "rename on main")
    commit_branch(repo, "agent/a/000001", {"f.txt": None, "agent.txt": LINES}, start="main~1")

    result = check_merge(MainRepo(repo), "main", "agent/a/000001")

    assert not result.clean
    assert {c.kind for c in result.conflicts} == {"rename/rename"}
    # git's index would hold the base at f.txt (stage 1) and each side's name (stages 2, 3).
    assert {c.path for c in result.conflicts} == {"f.txt", "main.txt", "agent.txt"}


def test_pairwise_matrix_finds_only_the_conflicting_pair(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    a = commit_branch(repo, "agent/a/000001", {"f.txt": change_line(LINES, 3, "a")})
    commit_branch(repo, "agent/b/000002", {"f.txt": change_line(LINES, 3, "b")})
    commit_branch(repo, "agent/c/000003", {"other.txt": "c\n"})
    # d depends on a: it starts from a's work, so it does not conflict with a.
    commit_branch(repo, "agent/d/000004", {"d.txt": "d\n"}, start=a)

    matrix = conflict_matrix(MainRepo(repo), ["agent/a/000001", "agent/b/000002",
                                              "agent/c/000003", "agent/d/000004"])

    assert len(matrix) == 6  # each pair once
    conflicting = {pair for pair, found in matrix.items() if found}
    assert conflicting == {("agent/a/000001", "agent/b/000002"),
                           ("agent/b/000002", "agent/d/000004")}
    [c] = matrix[("agent/a/000001", "agent/b/000002")]
    assert (c.path, c.kind, c.with_branch) == ("f.txt", "content", "agent/b/000002")
    assert c.ours_lines == c.theirs_lines == [(3, 3)]


# --- merge_agent_results -------------------------------------------------------------------


def three_sessions(repo: Path) -> list[SessionResult]:
    """a and c merge cleanly; b conflicts with a on line 3 (but not with the target)."""
    commit_branch(repo, "agent/a/abc123", {"f.txt": change_line(LINES, 3, "a")})
    commit_branch(repo, "agent/b/abc123", {"f.txt": change_line(LINES, 3, "b")})
    commit_branch(repo, "agent/c/abc123", {"c.txt": "c\n"})
    return [session("a"), session("b"), session("c")]


def test_review_reports_target_and_pairwise_conflicts_and_changes_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    sessions = three_sessions(repo)
    commit_branch(repo, "agent/x/abc123", {"keep.txt": "x\n"})
    commit_worktree(repo, {"keep.txt": "main\n"}, "target edits keep.txt")
    failed = session("x", SessionStatus.FAILED)
    before = snapshot(repo)

    out = merge_agent_results([*sessions, failed], "review", repo=repo, run_id="r-1")

    assert out[:3] == sessions and out[3] is failed
    a, b, c = sessions
    assert c.merge.status == "clean" and c.merge.conflicts == []
    assert a.merge.status == b.merge.status == "conflicts"
    assert [(x.path, x.with_branch) for x in a.merge.conflicts] == [("f.txt", "agent/b/abc123")]
    assert [(x.path, x.with_branch) for x in b.merge.conflicts] == [("f.txt", "agent/a/abc123")]
    assert failed.merge.status == "not_attempted"  # failed sessions are not even checked
    assert snapshot(repo) == before  # refs, index, HEAD and working tree byte-identical


def test_review_names_conflicts_with_the_target_without_with_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    commit_branch(repo, "agent/a/abc123", {"keep.txt": "agent\n"})
    commit_worktree(repo, {"keep.txt": "main\n"}, "target edit")

    [a] = merge_agent_results([session("a")], "review", repo=MainRepo(repo))

    assert a.merge.status == "conflicts"
    assert [(c.path, c.kind, c.with_branch) for c in a.merge.conflicts] == [
        ("keep.txt", "content", None)
    ]


def test_none_strategy_checks_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    sessions = three_sessions(repo)
    merge_agent_results(sessions, "none", repo=repo)
    assert {s.merge.status for s in sessions} == {"not_attempted"}


def test_auto_merges_clean_branches_in_order_and_keeps_the_conflicting_one(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    git(repo, "switch", "-q", "-c", "elsewhere")  # target not checked out
    sessions = three_sessions(repo)
    b_head = git(repo, "rev-parse", "agent/b/abc123")
    old_main = git(repo, "rev-parse", "main")
    wt_before = worktree_and_index(repo)

    merge_agent_results(sessions, "auto", repo=repo, target="main", run_id="r-42")

    a, b, c = sessions
    assert (a.merge.status, b.merge.status, c.merge.status) == ("merged", "conflicts", "merged")
    assert [x.path for x in b.merge.conflicts] == ["f.txt"]
    assert b.merge.merge_commit is None
    assert git(repo, "rev-parse", "agent/b/abc123") == b_head  # work kept on its branch
    # main = merge(merge(old, a), c), in that order, each a real two-parent merge commit.
    assert git(repo, "rev-parse", "main") == c.merge.merge_commit
    assert git(repo, "rev-parse", f"{c.merge.merge_commit}^1") == a.merge.merge_commit
    assert git(repo, "rev-parse", f"{a.merge.merge_commit}^1") == old_main
    assert git(repo, "rev-parse", f"{a.merge.merge_commit}^2") == git(repo, "rev-parse",
                                                                      "agent/a/abc123")
    assert git(repo, "log", "-1", "--format=%s", "main") == (
        "agentrt: merge session c-abc123 (task c, run r-42)"
    )
    assert git(repo, "show", "main:f.txt") == change_line(LINES, 3, "a").strip()
    assert git(repo, "show", "main:c.txt") == "c"
    assert worktree_and_index(repo) == wt_before  # the checkout (another branch) untouched
    assert_no_merge_state(repo)


def test_auto_marks_an_already_contained_branch_merged_without_a_commit(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    git(repo, "branch", "agent/a/abc123")  # no work at all
    head = git(repo, "rev-parse", "main")
    [a] = merge_agent_results([session("a")], "auto", repo=repo)
    assert a.merge.status == "merged" and a.merge.merge_commit is None
    assert git(repo, "rev-parse", "main") == head


def test_auto_updates_a_clean_checked_out_target(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    commit_branch(repo, "agent/a/abc123", {"f.txt": change_line(LINES, 3, "a"), "a.txt": "a\n"})
    (repo / "notes.txt").write_text("untracked, out of the way\n")
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set())

    [a] = merge_agent_results([session("a")], "auto", repo=repo)

    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == mask  # Ctrl-C works again

    assert a.merge.status == "merged"
    assert git(repo, "rev-parse", "HEAD") == a.merge.merge_commit
    assert (repo / "a.txt").read_text() == "a\n"
    assert (repo / "f.txt").read_text() == change_line(LINES, 3, "a")
    assert (repo / "notes.txt").exists()
    assert git(repo, "status", "--porcelain", "--untracked-files=no") == ""
    assert_no_merge_state(repo)


def test_auto_refuses_a_dirty_checked_out_target_and_changes_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    commit_branch(repo, "agent/a/abc123", {"a.txt": "a\n"})
    (repo / "keep.txt").write_text("local edit\n")
    before = snapshot(repo)

    with pytest.raises(MergeError, match="checked out in .* with uncommitted changes"):
        merge_agent_results([session("a")], "auto", repo=repo)

    assert snapshot(repo) == before

    git(repo, "checkout", "--", "keep.txt")
    (repo / "f.txt").write_text("staged\n")
    git(repo, "add", "f.txt")
    before = snapshot(repo)
    with pytest.raises(MergeError, match="uncommitted changes"):
        merge_agent_results([session("a")], "auto", repo=repo)
    assert snapshot(repo) == before


def test_auto_refuses_a_target_checked_out_in_a_linked_worktree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    commit_branch(repo, "agent/a/abc123", {"a.txt": "a\n"})
    git(repo, "switch", "-q", "-c", "elsewhere")
    git(repo, "worktree", "add", "-q", str(tmp_path / "linked"), "main")
    head = git(repo, "rev-parse", "main")

    with pytest.raises(MergeError, match="linked worktree"):
        merge_agent_results([session("a")], "auto", repo=repo, target="main")

    assert git(repo, "rev-parse", "main") == head


def test_auto_refuses_when_an_untracked_file_is_in_the_way(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    commit_branch(repo, "agent/a/abc123", {"a.txt": "from the agent\n"})
    (repo / "a.txt").write_text("the user's own file\n")
    before = snapshot(repo)

    with pytest.raises(MergeError, match="cannot update the checkout"):
        merge_agent_results([session("a")], "auto", repo=repo)

    assert snapshot(repo) == before


def test_a_missing_or_detached_target_is_a_merge_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    commit_branch(repo, "agent/a/abc123", {"a.txt": "a\n"})
    with pytest.raises(MergeError, match="does not exist"):
        merge_agent_results([session("a")], "review", repo=repo, target="nope")
    git(repo, "switch", "-q", "--detach")
    with pytest.raises(MergeError, match="detached HEAD"):
        merge_agent_results([session("a")], "auto", repo=repo)


def plant_evil_attributes(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Branches whose .gitattributes select a filter and merge drivers that touch a canary.

    ``merge=global`` is defined only in a global config (which agentrt ignores); ``merge=evil``
    and ``filter=evil`` are defined in the repository config itself, the worst case: an agent
    choosing which of the user's commands runs on its content. Returns the canary's path.
    """
    canary = tmp_path / "canary"
    evil = f"touch {canary}; exit 0; :"
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(f'[merge "global"]\n\tdriver = {evil}\n')
    monkeypatch.setenv("HOME", str(home))
    git(repo, "config", "merge.evil.driver", evil)
    git(repo, "config", "filter.evil.clean", evil)
    git(repo, "config", "filter.evil.smudge", evil)
    git(repo, "config", "filter.evil.required", "true")
    attributes = "* merge=evil\n*.dat filter=evil\nkeep.txt merge=global\n"
    commit_branch(repo, "agent/a/abc123", {".gitattributes": attributes, "x.dat": "data\n"})
    # b and c start from a's work and change the same line of f.txt; d edits keep.txt.
    for name, extra in (("b", {"y.dat": "y\n"}), ("c", {}), ("d", {})):
        files: dict[str, str | bytes | None] = {"f.txt": change_line(LINES, 3, name), **extra}
        if name == "d":
            files = {"keep.txt": "agent d\n"}
        commit_branch(repo, f"agent/{name}/abc123", files, start="agent/a/abc123")
    commit_worktree(repo, {"keep.txt": "main\n"}, "target edits keep.txt")
    return canary


def test_attributes_planted_by_an_agent_never_run_a_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path)
    canary = plant_evil_attributes(repo, tmp_path, monkeypatch)
    sessions = [session(n) for n in "abcd"]

    merge_agent_results(sessions, "review", repo=repo)
    assert not canary.exists()
    merge_agent_results(sessions, "auto", repo=repo)  # checked out: the tree is updated too

    assert not canary.exists()
    a, b, c, d = sessions
    assert (a.merge.status, b.merge.status) == ("merged", "merged")
    # c's and b's line 3 would be "resolved" by the evil driver; agentrt reports a conflict.
    assert c.merge.status == "conflicts"
    assert [(x.path, x.kind) for x in d.merge.conflicts] == [("keep.txt", "content")]
    # The checkout got the agent's files as stored: no smudge filter ran.
    assert (repo / "x.dat").read_text() == "data\n" and (repo / "y.dat").read_text() == "y\n"
    assert_no_merge_state(repo)


def test_the_attribute_canary_does_fire_without_agentrts_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: the planted attributes are a real attack when the overrides are missing."""
    import runtime.git.conflicts

    repo = make_repo(tmp_path)
    canary = plant_evil_attributes(repo, tmp_path, monkeypatch)
    monkeypatch.setattr(runtime.git.conflicts, "driver_overrides", lambda repo: ())

    merge_agent_results([session(n) for n in "abc"], "auto", repo=repo)

    assert canary.exists()


def test_concurrent_auto_merges_each_land_exactly_once(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    names = [f"t{i}" for i in range(6)]
    for name in names:
        commit_branch(repo, f"agent/{name}/abc123", {f"{name}.txt": f"{name}\n"})
    errors: list[BaseException] = []
    results: list[SessionResult] = []

    def worker(name: str) -> None:
        # Each thread merges its own session; t0 is also merged by every thread, so it races.
        try:
            mine = [session("t0"), session(name)] if name != "t0" else [session(name)]
            results.extend(merge_agent_results(mine, "auto", repo=repo, run_id="r"))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert {r.merge.status for r in results} == {"merged"}
    merges = git(repo, "log", "--merges", "--format=%s", "main").splitlines()
    assert sorted(merges) == sorted(f"agentrt: merge session {n}-abc123 (task {n}, run r)"
                                    for n in names)
    assert {r.merge.merge_commit for r in results if r.merge.merge_commit} == set(
        git(repo, "log", "--merges", "--format=%H", "main").splitlines()
    )
    for name in names:
        assert (repo / f"{name}.txt").read_text() == f"{name}\n"
    assert git(repo, "status", "--porcelain") == ""
    assert_no_merge_state(repo)
