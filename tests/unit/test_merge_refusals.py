"""merge = "auto" says up front when it will be refused, refuses, and the run exits 3.

Real git repositories in the states users leave them in (dirty, detached, mid-rebase, mid-merge,
mid-cherry-pick); no Docker.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from runtime.errors import MergeError
from runtime.git.checkout_state import CheckoutState, merge_blocker
from runtime.git.merge import auto_merge_blocker, missed_merge_reason
from runtime.git.safe_git import MainRepo
from runtime.models import MergeInfo, RunReport, SessionResult, SessionStatus
from runtime.run.merging import merge_agent_results
from tests.merge_helpers import commit_branch, commit_worktree, git, make_repo, session

ROOT = Path("/repo")


# -- the decision (pure) -----------------------------------------------------------------------


@pytest.mark.parametrize(("state", "expected"), [
    (CheckoutState(ROOT, "main", "main", main_tree=ROOT), None),
    (CheckoutState(ROOT, None, None), "detached HEAD and no target"),
    (CheckoutState(ROOT, None, None, operation="rebase", operation_branch="main"),
     "detached HEAD (a rebase is in progress)"),
    (CheckoutState(ROOT, "nope", "main", target_exists=False), "does not exist"),
    (CheckoutState(ROOT, "main", "x", linked_worktree=Path("/w")), "linked worktree /w"),
    (CheckoutState(ROOT, "main", "main", dirty=True, main_tree=ROOT), "uncommitted changes"),
    (CheckoutState(ROOT, "main", "main", operation="merge", main_tree=ROOT),
     "a merge is in progress on 'main'"),
    (CheckoutState(ROOT, "main", None, operation="rebase", operation_branch="main"),
     "git rebase --abort"),
    (CheckoutState(ROOT, "main", "main", operation="cherry-pick", main_tree=ROOT),
     "cherry-pick"),
    # Another branch than the one checked out or being rebased: the checkout is not involved.
    (CheckoutState(ROOT, "release", "main", dirty=True, operation="merge", main_tree=ROOT), None),
    (CheckoutState(ROOT, "release", None, operation="rebase", operation_branch="main"), None),
    # A bare repository has no checkout to keep clean.
    (CheckoutState(ROOT, "main", "main", dirty=True), None),
])
def test_merge_blocker_decides_from_the_checkout_state(state: CheckoutState,
                                                       expected: str | None) -> None:
    reason = merge_blocker(state)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason, reason


def _report(merge: str, *statuses: str, **fields: object) -> RunReport:
    sessions = [SessionResult(id=f"s{i}", task_id=f"t{i}", branch=f"agent/t{i}/x",
                              status=SessionStatus.SUCCEEDED, merge=MergeInfo(status=st))  # type: ignore[arg-type]
                for i, st in enumerate(statuses)]
    return RunReport(run_id="r", repo="/repo", base_commit="0" * 40, target="main", merge=merge,
                     started_at=datetime.now(UTC), sessions=sessions, **fields)  # type: ignore[arg-type]


def test_an_auto_merge_that_did_not_happen_exits_3() -> None:
    assert _report("auto", "merged", "merged").exit_code() == 0
    assert _report("auto", "merged", "not_attempted").exit_code() == 3
    assert _report("auto", "not_attempted").auto_merge_missed
    assert _report("auto", "merged", merge_refused="dirty").exit_code() == 3
    assert _report("review", "not_attempted").exit_code() == 0
    assert _report("none", "not_attempted").exit_code() == 0
    assert _report("auto", "not_attempted", interrupted=True).exit_code() == 130
    failed = _report("auto", "not_attempted")
    failed.sessions[0].status = SessionStatus.FAILED
    assert failed.exit_code() == 1 and not failed.auto_merge_missed


def test_the_reason_of_a_missed_merge_comes_from_the_merge_first() -> None:
    assert missed_merge_reason(["radar", "merge: dirty tree"], "now", "before") == "dirty tree"
    assert missed_merge_reason([], "now", "before") == "now"
    assert missed_merge_reason([], None, "before") == "before"
    assert "did not run" in missed_merge_reason([], None, None)


# -- facts from real repositories --------------------------------------------------------------


def test_a_clean_checkout_is_not_blocked(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    (repo / "untracked.txt").write_text("allowed\n")
    assert auto_merge_blocker(repo, None) is None
    assert auto_merge_blocker(repo, "main") is None


def test_a_dirty_checkout_is_announced_unless_another_target_is_named(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    git(repo, "branch", "release")
    (repo / "keep.txt").write_text("local edit\n")
    reason = auto_merge_blocker(repo, None)
    assert reason is not None and "'main'" in reason and "uncommitted changes" in reason
    assert auto_merge_blocker(repo, "release") is None


def test_a_detached_head_without_target_is_announced(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    git(repo, "switch", "-q", "--detach")
    reason = auto_merge_blocker(repo, None)
    assert reason is not None and "detached HEAD" in reason
    assert auto_merge_blocker(repo, "main") is None


def test_missing_and_invalid_targets_are_announced(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    assert "does not exist" in (auto_merge_blocker(repo, "nope") or "")
    assert "invalid branch name" in (auto_merge_blocker(repo, "a..b") or "")


def _conflicting_side_branch(repo: Path) -> None:
    git(repo, "switch", "-q", "-c", "side")
    commit_worktree(repo, {"keep.txt": "side\n"}, "side")
    git(repo, "switch", "-q", "main")
    commit_worktree(repo, {"keep.txt": "main\n"}, "main")


def _fails(repo: Path, *args: str) -> None:
    with pytest.raises(AssertionError):
        git(repo, *args)


def test_a_rebase_in_progress_blocks_its_branch_and_the_merge_leaves_it_alone(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path)
    _conflicting_side_branch(repo)
    commit_branch(repo, "agent/a/abc123", {"a.txt": "a\n"})
    _fails(repo, "rebase", "side")  # stops on the conflict: HEAD detached, main mid-rebase
    head = git(repo, "rev-parse", "refs/heads/main")

    assert "detached HEAD (a rebase is in progress)" in (auto_merge_blocker(repo, None) or "")
    reason = auto_merge_blocker(repo, "main")
    assert reason is not None and "rebase is in progress on 'main'" in reason
    with pytest.raises(MergeError, match="rebase is in progress"):
        merge_agent_results([session("a")], "auto", repo=repo, target="main")
    # Moving main under the rebase would be undone, silently, by `git rebase --continue`.
    assert git(repo, "rev-parse", "refs/heads/main") == head
    assert auto_merge_blocker(repo, "side") is None


@pytest.mark.parametrize(("operation", "command"), [
    ("merge", ("merge", "-q", "side")),
    ("cherry-pick", ("cherry-pick", "side")),
])
def test_a_merge_or_cherry_pick_in_progress_blocks_the_checked_out_target(
    tmp_path: Path, operation: str, command: tuple[str, ...],
) -> None:
    repo = make_repo(tmp_path)
    _conflicting_side_branch(repo)
    commit_branch(repo, "agent/a/abc123", {"a.txt": "a\n"})
    _fails(repo, *command)
    # Resolve the conflict and stage it: the tree is "clean" against the index but mid-operation.
    (repo / "keep.txt").write_text("main\n")
    git(repo, "add", "keep.txt")
    head = git(repo, "rev-parse", "main")

    reason = auto_merge_blocker(repo, None)
    assert reason is not None and f"a {operation} is in progress on 'main'" in reason
    with pytest.raises(MergeError, match=f"{operation} is in progress"):
        merge_agent_results([session("a")], "auto", repo=repo)
    assert git(repo, "rev-parse", "main") == head


def test_a_target_in_a_linked_worktree_is_announced(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    git(repo, "switch", "-q", "-c", "elsewhere")
    git(repo, "worktree", "add", "-q", str(tmp_path / "linked"), "main")
    reason = auto_merge_blocker(MainRepo(repo), "main")
    assert reason is not None and "linked worktree" in reason
