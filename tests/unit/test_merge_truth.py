"""A session's merge status comes from where its work is, not from its branch being contained in
the target (real git repositories, no Docker)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from runtime.git.safe_git import MainRepo
from runtime.models import MergeInfo, RunReport, SessionStatus, WorkState, settle_merge
from runtime.run.merging import merge_agent_results
from runtime.state.store import Store
from tests.merge_helpers import commit_branch, git, make_repo, session

OFF_BRANCH = [WorkState.KEPT, WorkState.REFUSED, WorkState.LOST]


@pytest.mark.parametrize("strategy", ["auto", "review", "none"])
@pytest.mark.parametrize("work", OFF_BRANCH)
def test_work_off_its_branch_is_not_merged_whatever_the_strategy(
        tmp_path: Path, strategy: str, work: WorkState) -> None:
    repo = make_repo(tmp_path)
    git(repo, "branch", "agent/a/abc123")  # left at the base: contained in the target
    head = git(repo, "rev-parse", "main")
    result = session("a")
    result.work = work
    [a] = merge_agent_results([result], strategy, repo=repo)  # type: ignore[arg-type]
    assert a.merge.status == "not_merged" and a.merge.merge_commit is None
    assert a.merge.reason and work.value in a.merge.reason
    assert git(repo, "rev-parse", "main") == head


def test_home_work_at_the_base_is_still_merged_and_a_control_for_the_above(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    git(repo, "branch", "agent/a/abc123")
    result = session("a")
    result.work = WorkState.HOME
    [a] = merge_agent_results([result], "auto", repo=repo)
    assert a.merge.status == "merged" and a.merge.reason is None


def test_a_branch_reset_away_from_the_sessions_commits_is_not_merged(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    head = commit_branch(repo, "agent/a/abc123", {"a.txt": "a\n"})
    git(repo, "branch", "-f", "agent/a/abc123", "main")  # reset to the base since
    result = session("a")
    result.work, result.head_commit = WorkState.HOME, head
    main = git(repo, "rev-parse", "main")
    [a] = merge_agent_results([result], "auto", repo=repo)
    assert a.merge.status == "not_merged" and "no longer carries" in str(a.merge.reason)
    assert git(repo, "rev-parse", "main") == main


def test_a_branch_moved_on_from_the_sessions_commits_merges(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    head = commit_branch(repo, "agent/a/abc123", {"a.txt": "a\n"})
    commit_branch(repo, "agent/a/abc123", {"fix.txt": "fixed by hand\n"})
    result = session("a")
    result.work, result.head_commit = WorkState.HOME, head
    [a] = merge_agent_results([result], "auto", repo=repo)
    assert a.merge.status == "merged" and a.merge.merge_commit


def test_work_that_came_home_later_is_attempted_again() -> None:
    result = session("a")
    result.work = WorkState.KEPT
    settle_merge([result])
    assert result.merge.status == "not_merged"
    result.work = WorkState.HOME  # agentrt recover
    settle_merge([result])
    assert result.merge == MergeInfo()


def test_lost_work_fails_the_run() -> None:
    result = session("a")
    result.work = WorkState.LOST
    report = RunReport(run_id="r", repo="/r", base_commit="b", target="main", merge="auto",
                       started_at=datetime.now(UTC), sessions=[result])
    assert report.exit_code() == 1


def test_a_stored_merged_record_of_kept_work_is_reported_not_merged(tmp_path: Path) -> None:
    repo = MainRepo(make_repo(tmp_path))
    result = session("a")
    result.work = WorkState.KEPT
    result.merge = MergeInfo(status="merged")  # what the old rule wrote
    with Store(repo.state_dir / "state.db") as store:
        store.create_run("r1", str(repo.root), "b" * 40, "main", "auto", "{}", None, None, None)
        store.upsert_session(result, "r1")
        [reported] = store.run_report("r1").sessions
    assert reported.status is SessionStatus.SUCCEEDED
    assert reported.merge.status == "not_merged"
