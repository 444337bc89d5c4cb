"""merge = "auto" into a checkout that cannot take it: said up front, nothing merged, exit 3."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import git
from tests.integration.helpers import agentrt

pytestmark = pytest.mark.docker


def task_file(tmp_path: Path, target: str | None = None) -> Path:
    path = tmp_path / "tasks.toml"
    path.write_text(
        '[run]\nmerge = "auto"\nconflict_radar_seconds = 0\n'
        + (f'target = "{target}"\n' if target else "")
        + '[run.resource_limits]\nmemory_mb = 128\ndisk_mb = 32\n'
        + '[[tasks]]\nid = "writer"\ncommand = ["sh", "-c", "echo work > WORK.md"]\n')
    return path


def run_refused(repo: Path, tmp_path: Path, target: str | None = None) -> dict[str, object]:
    """Run the one-task file; assert the refusal is announced, then reported, with exit 3."""
    main_before = git(repo, "rev-parse", "refs/heads/main").strip()
    run = agentrt("run", str(task_file(tmp_path, target)), "--repo", str(repo), "--json")
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 3, run.stderr
    lines = run.stderr.splitlines()
    announced = [i for i, line in enumerate(lines) if "will be refused" in line]
    started = [i for i, line in enumerate(lines) if "writer" in line and "starting" in line]
    assert announced and started and announced[0] < started[0], run.stderr
    assert any(line.startswith("agentrt: warning: not merged: ") for line in lines), run.stderr
    report = json.loads(run.stdout)
    session = report["sessions"][0]
    assert session["status"] == "succeeded"
    assert session["merge"]["status"] == "not_attempted"
    assert report["merge_refused"]
    # Nothing merged: main did not move, and the work is on the session's branch.
    assert git(repo, "rev-parse", "refs/heads/main").strip() == main_before
    assert git(repo, "show", f"{session['branch']}:WORK.md") == "work\n"
    return report


def test_auto_merge_into_a_dirty_checkout_is_announced_refused_and_exits_3(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    (repo / "README.md").write_text("the user's unsaved edit\n")
    report = run_refused(repo, tmp_path)
    assert "uncommitted changes" in str(report["merge_refused"])
    assert (repo / "README.md").read_text() == "the user's unsaved edit\n"
    shown = agentrt("report", str(report["run_id"]), "--repo", str(repo))
    assert shown.returncode == 0, shown.stderr
    assert "not merged" in shown.stdout and "uncommitted changes" in shown.stdout


def test_auto_merge_on_a_detached_head_is_announced_refused_and_exits_3(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    git(repo, "switch", "-q", "--detach")
    report = run_refused(repo, tmp_path)
    assert "detached HEAD" in str(report["merge_refused"])


def test_auto_merge_into_a_branch_being_rebased_is_refused_and_exits_3(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    git(repo, "switch", "-q", "-c", "side")
    (repo / "README.md").write_text("side\n")
    git(repo, "commit", "-qam", "side")
    git(repo, "switch", "-q", "main")
    (repo / "README.md").write_text("main\n")
    git(repo, "commit", "-qam", "main")
    with pytest.raises(subprocess.CalledProcessError):
        git(repo, "rebase", "side")  # stops on the conflict, main mid-rebase
    report = run_refused(repo, tmp_path, target="main")
    assert "rebase is in progress on 'main'" in str(report["merge_refused"])
    assert (repo / ".git" / "rebase-merge").is_dir(), "the user's rebase must be left alone"
