"""merge = "auto" into a target that cannot take it (dirty checkout, detached HEAD, missing
branch, a rebase in progress) is refused before any agent starts: exit 2, nothing made; and
`agentrt run --target BRANCH` names one that can."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git
from tests.integration.helpers import agentrt

pytestmark = pytest.mark.docker


MERGE_TASKS = """
[run]
merge = "auto"
conflict_radar_seconds = 0
[run.resource_limits]
memory_mb = 128
disk_mb = 32
[[tasks]]
id = "writer"
command = ["sh", "-c", "echo work > WORK.md"]
"""


def refused(repo: Path, tmp_path: Path, expected: str, *args: str) -> None:
    """Run the one-task file (with ``args``); assert exit 2 naming ``expected``, nothing made."""
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(MERGE_TASKS)
    proc = agentrt("run", str(tasks), "--repo", str(repo), *args)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr, proc.stderr
    assert "starting" not in proc.stderr  # no session line: nothing ran
    assert git(repo, "branch", "--list", "agent/*").strip() == ""


@pytest.mark.parametrize(("spoil", "expected"), [
    (lambda repo: (repo / "README.md").write_text("the user's unsaved edit\n"),
     "uncommitted changes"),
    (lambda repo: git(repo, "switch", "-q", "--detach"), "detached HEAD"),
], ids=["dirty", "detached"])
def test_an_auto_merge_target_that_cannot_take_it_is_refused_before_any_agent_starts(
        repo: Path, docker_client: Any, tmp_path: Path, spoil: Any, expected: str) -> None:
    spoil(repo)
    refused(repo, tmp_path, expected)
    # --target names a branch that can take it: the run goes ahead and merges there.
    git(repo, "branch", "release", "main")
    proc = agentrt("run", str(tmp_path / "tasks.toml"), "--repo", str(repo), "--target",
                   "release")
    assert proc.returncode == 0, proc.stderr
    assert git(repo, "show", "release:WORK.md") == "work\n"


def test_a_missing_target_branch_is_refused_before_any_agent_starts(
        repo: Path, docker_client: Any, tmp_path: Path) -> None:
    refused(repo, tmp_path, "field merge: merge = \"auto\" cannot merge into the target: "
            "target branch 'nope' does not exist", "--target", "nope")
    refused(repo, tmp_path, "--target: invalid branch name", "--target", "a..b")


def test_auto_merge_into_a_branch_being_rebased_is_refused_before_any_agent_starts(
        docker_client: object, repo: Path, tmp_path: Path) -> None:
    git(repo, "switch", "-q", "-c", "side")
    (repo / "README.md").write_text("side\n")
    git(repo, "commit", "-qam", "side")
    git(repo, "switch", "-q", "main")
    (repo / "README.md").write_text("main\n")
    git(repo, "commit", "-qam", "main")
    with pytest.raises(subprocess.CalledProcessError):
        git(repo, "rebase", "side")  # stops on the conflict, main mid-rebase
    refused(repo, tmp_path, "rebase is in progress on 'main'", "--target", "main")
    assert (repo / ".git" / "rebase-merge").is_dir(), "the user's rebase must be left alone"
