"""Working with one session the way people work with a branch: merge it alone, apply it as
unstaged edits, check it out, read its log, remove it; and one-off runs without a task file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import git
from tests.integration.helpers import agentrt

pytestmark = pytest.mark.docker

THREE = """
[run]
merge = "none"
[run.resource_limits]
memory_mb = 128
disk_mb = 32
[[tasks]]
id = "one"
command = ["sh", "-c", "echo one > ONE.md && git add ONE.md && git commit -qm 'one: add ONE.md'"]
[[tasks]]
id = "two"
command = ["sh", "-c", "echo two >> README.md"]
[[tasks]]
id = "three"
command = ["sh", "-c", "echo three > THREE.md"]
"""


@pytest.fixture
def three(docker_client: object, repo: Path, tmp_path: Path) -> dict[str, dict[str, object]]:
    """A finished run of three sessions, nothing merged; its sessions by task."""
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(THREE)
    run = agentrt("run", str(task_file), "--repo", str(repo), "--json")
    assert run.returncode == 0, run.stderr
    return {s["task_id"]: s for s in json.loads(run.stdout)["sessions"]}


def test_merge_one_session_of_three_leaves_the_others_on_their_branches(
    three: dict[str, dict[str, object]], repo: Path
) -> None:
    before = git(repo, "rev-parse", "main").strip()
    merged = agentrt("merge", str(three["one"]["id"]), "--strategy", "auto", "--repo", str(repo),
                     "--json")
    assert merged.returncode == 0, merged.stderr
    report = json.loads(merged.stdout)
    assert [(s["task_id"], s["merge"]["status"]) for s in report["sessions"]] == [
        ("one", "merged")]
    assert git(repo, "rev-parse", "main^1").strip() == before
    assert (repo / "ONE.md").exists() and not (repo / "THREE.md").exists()
    # The others are untouched in the record too.
    stored = json.loads(agentrt("report", report["run_id"], "--json", "--repo", str(repo)).stdout)
    assert {s["task_id"]: s["merge"]["status"] for s in stored["sessions"]} == {
        "one": "merged", "two": "not_attempted", "three": "not_attempted"}


def test_apply_writes_unstaged_edits_and_refuses_a_dirty_overlap(
    three: dict[str, dict[str, object]], repo: Path
) -> None:
    head = git(repo, "rev-parse", "HEAD").strip()
    (repo / "README.md").write_text("my own edit\n")  # dirty, in the file "two" changed
    refused = agentrt("apply", str(three["two"]["id"]), "--repo", str(repo))
    assert refused.returncode == 2
    assert "uncommitted changes in files this session changed: README.md" in refused.stderr
    assert (repo / "README.md").read_text() == "my own edit\n"
    git(repo, "checkout", "--", "README.md")

    applied = agentrt("apply", str(three["two"]["id"]), "--repo", str(repo))
    assert applied.returncode == 0, applied.stderr
    assert (repo / "README.md").read_text().endswith("two\n")
    assert git(repo, "status", "--porcelain") == " M README.md\n"  # unstaged, not committed
    assert git(repo, "rev-parse", "HEAD").strip() == head
    # A second apply of the same work no longer applies: refused, nothing written.
    git(repo, "stash")
    (repo / "README.md").write_text("rewritten\n")
    git(repo, "commit", "-qam", "rewrite README")
    again = agentrt("apply", str(three["two"]["id"]), "--repo", str(repo))
    assert again.returncode == 2 and "do not apply to your checkout" in again.stderr
    assert (repo / "README.md").read_text() == "rewritten\n"


def test_checkout_and_log_show_the_sessions_branch(
    three: dict[str, dict[str, object]], repo: Path, tmp_path: Path
) -> None:
    logged = agentrt("log", str(three["one"]["id"]), "--repo", str(repo))
    assert logged.returncode == 0, logged.stderr
    assert "one: add ONE.md" in logged.stdout
    where = tmp_path / "look at one"
    made = agentrt("checkout", str(three["one"]["id"]), "--path", str(where), "--repo", str(repo))
    assert made.returncode == 0, made.stderr
    assert (where / "ONE.md").read_text() == "one\n"
    assert git(where, "branch", "--show-current").strip() == three["one"]["branch"]
    # The branch is in a worktree: rm refuses to delete it until the worktree goes.
    removed = agentrt("rm", str(three["one"]["id"]), "--force", "--repo", str(repo))
    assert removed.returncode == 2 and "checked out in" in removed.stderr
    git(repo, "worktree", "remove", str(where))


def test_rm_refuses_unmerged_work_without_force_and_forgets_merged_sessions(
    three: dict[str, dict[str, object]], repo: Path
) -> None:
    one, three_ = three["one"], three["three"]
    assert agentrt("merge", str(one["id"]), "--strategy", "auto",
                   "--repo", str(repo)).returncode == 0
    dry = agentrt("rm", str(one["id"]), str(three_["id"]), "--dry-run", "--repo", str(repo))
    assert dry.returncode == 0
    assert f"would remove {three_['id']}" in dry.stdout and "NOT merged" in dry.stdout
    refused = agentrt("rm", str(one["id"]), str(three_["id"]), "--repo", str(repo))
    assert refused.returncode == 2 and "only copy" in refused.stderr
    assert git(repo, "rev-parse", "--verify", "-q", str(three_["branch"])).strip()  # kept
    assert agentrt("rm", str(one["id"]), "--repo", str(repo)).returncode == 0  # merged: fine
    forced = agentrt("rm", str(three_["id"]), "--force", "--repo", str(repo))
    assert forced.returncode == 0, forced.stderr
    for gone in (one, three_):
        assert git(repo, "branch", "--list", str(gone["branch"])) == ""
    listed = json.loads(agentrt("ps", "--all", "--json", "--repo", str(repo)).stdout)
    assert sorted(s["task_id"] for s in listed) == ["two"]
    assert (repo / "ONE.md").exists()  # the merged work stays on main


def test_a_one_off_run_without_a_task_file_using_agentrt_repo(
    docker_client: object, repo: Path
) -> None:
    run = agentrt("run", "-p", "echo hi > HI.md", "--agent", "shell", "--id", "hi",
                  "--merge", "auto", "--memory-mb", "128", "--disk-mb", "32", "--json",
                  env={"AGENTRT_REPO": str(repo)}, cwd=Path("/"))
    assert run.returncode == 0, run.stderr
    session = json.loads(run.stdout)["sessions"][0]
    assert session["task_id"] == "hi" and session["merge"]["status"] == "merged"
    assert (repo / "HI.md").read_text() == "hi\n"
    bad = agentrt("run", "-p", "x", "--agent", "shell", "--pids", "0", "--repo", str(repo))
    assert bad.returncode == 2 and "resource_limits.pids" in bad.stderr
    both = agentrt("run", "tasks.toml", "-p", "x", "--repo", str(repo))
    assert both.returncode == 2 and "not both" in both.stderr
    no_agent = agentrt("run", "-p", "Add error handling", "--repo", str(repo))
    assert no_agent.returncode == 2 and "needs --agent" in no_agent.stderr


def test_version_is_printed() -> None:
    out = agentrt("--version")
    assert out.returncode == 0 and out.stdout.startswith("agentrt, version ")


def test_gc_merged_branches_deletes_only_branches_the_target_contains(
    three: dict[str, dict[str, object]], repo: Path
) -> None:
    assert agentrt("merge", str(three["one"]["id"]), "--strategy", "auto",
                   "--repo", str(repo)).returncode == 0
    gc = agentrt("gc", "--merged-branches", "--json", "--repo", str(repo))
    assert gc.returncode == 0, gc.stderr
    assert json.loads(gc.stdout)["deleted_branches"] == [three["one"]["branch"]]
    assert git(repo, "branch", "--list", "agent/*").split() == sorted(
        [str(three["two"]["branch"]), str(three["three"]["branch"])])


def test_delete_merged_branches_after_an_automatic_merge(docker_client: object, repo: Path,
                                                          tmp_path: Path) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(THREE.replace('merge = "none"',
                                       'merge = "auto"\ndelete_merged_branches = true'))
    run = agentrt("run", str(task_file), "--repo", str(repo), "--json")
    assert run.returncode == 0, run.stderr
    assert git(repo, "branch", "--list", "agent/*") == ""
    assert (repo / "ONE.md").exists() and (repo / "THREE.md").exists()
