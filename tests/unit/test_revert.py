"""`agentrt revert` undoes one agent's merge (or a run's) in one commit each, safely (real git,
real state database; no Docker)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from runtime import revert_session
from runtime.cli.main import main
from runtime.models import SessionResult, SessionStatus
from runtime.run.merging import merge_agent_results
from runtime.state.store import Store
from tests.unit.test_merge import LINES, commit_branch, commit_worktree, git, make_repo


def merged_run(repo: Path, changes: dict[str, dict[str, str | bytes | None]],
               run_id: str = "r1") -> list[SessionResult]:
    """A recorded run whose sessions' branches (one per task) were merged by `auto`."""
    results = []
    with Store(repo / ".git" / "agentrt" / "state.db") as store:
        store.create_run(run_id, str(repo), git(repo, "rev-parse", "main"), "main", "auto",
                         "{}", None, None, None)
        for task, files in changes.items():
            branch = f"agent/{task}/abc123"
            commit_branch(repo, branch, files)
            result = SessionResult(id=f"{task}-abc123", task_id=task, branch=branch,
                                   status=SessionStatus.SUCCEEDED)
            store.upsert_session(result, run_id)
            results.append(result)
        store.finish_run(run_id, "finished")
    merge_agent_results(results, "auto", repo, run_id=run_id)
    assert all(r.merge.status == "merged" for r in results)
    return results


def edited(line: int, text: str) -> str:
    lines = LINES.splitlines(keepends=True)
    lines[line - 1] = text + "\n"
    return "".join(lines)


def revert_cli(repo: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["revert", *args, "--repo", str(repo)])
    return result.exit_code, result.stdout, result.stderr


def test_revert_of_a_session_is_one_commit_undoing_its_merge_and_the_checkout_follows(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    first, second = merged_run(repo, {"add-file": {"new.txt": "new\n"},
                                      "edit": {"f.txt": edited(5, "five")}})
    before = git(repo, "rev-parse", "main")
    code, out, err = revert_cli(repo, first.id)
    assert code == 0, err
    assert f"reverted {first.id}" in out
    after = git(repo, "rev-parse", "main")
    assert git(repo, "rev-parse", f"{after}^") == before  # one commit, on top
    assert git(repo, "rev-list", "--count", f"{before}..{after}") == "1"
    assert "Reverts: " + str(first.merge.merge_commit) in git(repo, "log", "-1", "--format=%B")
    # The session's work is gone from the target and the checkout; the other session's stays.
    assert not (repo / "new.txt").exists()
    assert "new.txt" not in git(repo, "ls-tree", "--name-only", "main")
    assert (repo / "f.txt").read_text() == edited(5, "five")
    assert git(repo, "status", "--porcelain") == ""
    # agentrt report shows it (the run's notes and the session's warnings).
    report = CliRunner().invoke(main, ["report", "r1", "--json", "--repo", str(repo)])
    data = json.loads(report.stdout)
    assert any(f"session {first.id}" in w and "reverted" in w for w in data["warnings"])
    assert any("reverted" in w for w in data["sessions"][0]["warnings"])
    assert not data["sessions"][1]["warnings"]
    table = CliRunner().invoke(main, ["report", "r1", "--repo", str(repo)])
    assert "reverted by" in table.stdout
    # Twice is refused, nothing moves.
    code, _, err = revert_cli(repo, first.id)
    assert code == 2 and "already reverted" in err
    assert git(repo, "rev-parse", "main") == after
    del second


def test_revert_of_a_run_reverts_every_merged_session_newest_first(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    base_tree = git(repo, "rev-parse", "main^{tree}")
    results = merged_run(repo, {"one": {"a.txt": "a\n"}, "two": {"f.txt": edited(3, "3!")},
                                "three": {"keep.txt": None}})
    done = revert_session("r1", repo)
    assert [d.session_id for d in done] == [r.id for r in reversed(results)]
    subjects = git(repo, "log", "--format=%s", "-3", "main").splitlines()
    assert subjects == [f"agentrt: revert session {r.id} (task {r.task_id}, run r1)"
                        for r in results]  # newest commit first = the oldest merge's revert
    assert git(repo, "rev-parse", "main^{tree}") == base_tree
    assert (repo / "keep.txt").read_text() == "keep\n"
    assert git(repo, "status", "--porcelain") == ""


def test_a_revert_that_conflicts_with_later_work_changes_nothing_and_exits_3(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    (session,) = merged_run(repo, {"edit": {"f.txt": edited(5, "five")}})
    commit_worktree(repo, {"f.txt": edited(5, "FIVE, by hand")}, "later work on line 5")
    head = git(repo, "rev-parse", "main")
    code, _, err = revert_cli(repo, session.id)
    assert code == 3
    assert "conflicts with later work" in err and "f.txt" in err
    assert git(repo, "rev-parse", "main") == head
    assert git(repo, "status", "--porcelain") == ""
    assert not (repo / ".git" / "MERGE_HEAD").exists()
    assert (repo / "f.txt").read_text() == edited(5, "FIVE, by hand")


def test_a_revert_of_a_run_is_all_or_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    merged_run(repo, {"one": {"a.txt": "a\n"}, "two": {"f.txt": edited(5, "five")}})
    commit_worktree(repo, {"f.txt": edited(5, "FIVE")}, "later work")
    head = git(repo, "rev-parse", "main")
    code, _, err = revert_cli(repo, "r1")
    assert code == 3 and "two-abc123" in err
    assert git(repo, "rev-parse", "main") == head
    assert (repo / "a.txt").exists()  # the clean one was not reverted on its own either


def test_revert_refuses_a_dirty_checkout_and_sessions_without_a_merge_commit(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    (session,) = merged_run(repo, {"one": {"a.txt": "a\n"}})
    (repo / "keep.txt").write_text("local edit\n")
    head = git(repo, "rev-parse", "main")
    code, _, err = revert_cli(repo, session.id)
    assert code == 2 and "uncommitted changes" in err
    assert git(repo, "rev-parse", "main") == head
    assert (repo / "a.txt").exists() and (repo / "keep.txt").read_text() == "local edit\n"
    git(repo, "checkout", "--", "keep.txt")
    with Store(repo / ".git" / "agentrt" / "state.db") as store:
        store.create_run("r2", str(repo), head, "main", "review", "{}", None, None, None)
        store.upsert_session(SessionResult(id="late-abc123", task_id="late", branch="agent/x/y",
                                           status=SessionStatus.SUCCEEDED), "r2")
    code, _, err = revert_cli(repo, "late")
    assert code == 2 and "no merge commit to revert" in err
    code, _, err = revert_cli(repo, "nothing-like-this")
    assert code == 2 and "no session matches" in err


def test_revert_on_a_target_that_is_not_checked_out_touches_no_file(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    (session,) = merged_run(repo, {"one": {"a.txt": "a\n"}})
    git(repo, "switch", "-q", "-c", "elsewhere")
    git(repo, "switch", "-q", "--detach", "HEAD")
    done = revert_session(session, repo)
    assert done[0].target == "main"
    assert (repo / "a.txt").exists()  # the detached checkout is not the target
    assert "a.txt" not in git(repo, "ls-tree", "--name-only", "main")
