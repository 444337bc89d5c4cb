"""`agentrt run` end to end: real containers, real git, the JSON report, no leftovers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import git
from tests.integration.helpers import agentrt

pytestmark = pytest.mark.docker

TASKS = """
[run]
max_concurrent_agents = 2
[run.resource_limits]
memory_mb = 256
time_seconds = 120
disk_mb = 64
[[tasks]]
id = "fmt"
command = ["sh", "-c", "printf 'x = 1\\n' > src/app.py && git commit -qam 'fmt: rewrite app'"]
[[tasks]]
id = "tests"
command = ["sh", "-c", "mkdir -p tests && echo 'def test_ok(): pass' > tests/test_app.py"]
[[tasks]]
id = "docs"
prompt = "rewrite the readme"
command = ["sh", "-c", "echo \\"$AGENT_TASK by $AGENT_TASK_ID on $AGENT_BRANCH\\" > README.md"]
"""



def test_three_task_run_reports_commits_each_branch_and_leaves_main_alone(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(TASKS)
    main_before = git(repo, "rev-parse", "main").strip()
    status_before = git(repo, "status", "--porcelain")

    proc = agentrt("run", str(task_file), "--repo", str(repo), "--json")

    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # stderr is not a terminal here: plain timestamped lines, no live table, no escape codes.
    assert "\x1b[" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line[:2].isdigit()]
    # The closing hint works from any directory: it names the repository.
    assert f"--repo {repo.resolve()}` shows it again" in proc.stderr, proc.stderr[-500:]
    # The first line names the run (its id is what `stop`, `report` and `merge` take).
    assert re.match(r"^\d\d:\d\d:\d\d run r\d{8}-\d{6}-[0-9a-f]{4} ", lines[0]), lines[0]
    progress = lines[1:]
    assert len(progress) >= 9
    assert all(re.match(r"^\d\d:\d\d:\d\d \S+ +(starting|running|succeeded)", line)
               for line in progress), progress
    assert report["base_commit"] == main_before
    assert report["target"] == "main"
    sessions = {s["task_id"]: s for s in report["sessions"]}
    assert set(sessions) == {"fmt", "tests", "docs"}
    for task_id, s in sessions.items():
        assert s["status"] == "succeeded" and s["exit_code"] == 0
        assert s["branch"].startswith(f"agent/{task_id}/") and len(s["branch"].split("/")[2]) == 6
        assert s["image_digest"].startswith("sha256:")
        assert git(repo, "rev-parse", s["branch"]).strip() == s["head_commit"]
        assert s["head_commit"] != main_before
        for key in ("started_at", "finished_at", "duration_s", "peak_memory_bytes",
                    "cpu_seconds", "disk_used_bytes", "merge"):
            assert key in s
    assert git(repo, "show", f"{sessions['fmt']['branch']}:src/app.py") == "x = 1\n"
    assert "fmt: rewrite app" in git(repo, "log", "--format=%s", sessions["fmt"]["branch"])
    assert "def test_ok" in git(repo, "show", f"{sessions['tests']['branch']}:tests/test_app.py")
    docs = git(repo, "show", f"{sessions['docs']['branch']}:README.md")
    assert docs.startswith("rewrite the readme by docs on agent/docs/")
    # The user's branch and working tree did not move (merge defaults to review).
    assert git(repo, "rev-parse", "main").strip() == main_before
    assert git(repo, "status", "--porcelain") == status_before
    assert sessions["fmt"]["merge"]["status"] == "clean"
    # Containers and working trees are gone, branches stay.
    sessions_dir = repo / ".git" / "agentrt" / "sessions"
    assert not sessions_dir.exists() or not any(sessions_dir.iterdir())
    assert not docker_client.containers.list(  # type: ignore[attr-defined]
        all=True, filters={"label": f"agentrt.repo={repo.resolve()}"})


def test_failing_task_makes_run_exit_1_and_others_still_finish(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(
        '[[tasks]]\nid = "bad"\ncommand = ["sh", "-c", "echo half > half.txt; exit 7"]\n'
        '[[tasks]]\nid = "good"\ncommand = ["sh", "-c", "echo ok > ok.txt"]\n'
    )
    proc = agentrt("run", str(task_file), "--repo", str(repo), "--json")
    assert proc.returncode == 1, proc.stderr
    sessions = {s["task_id"]: s for s in json.loads(proc.stdout)["sessions"]}
    assert sessions["bad"]["status"] == "failed" and sessions["bad"]["exit_code"] == 7
    assert sessions["good"]["status"] == "succeeded"
    # Even a failed agent's work is kept on its branch.
    assert git(repo, "show", f"{sessions['bad']['branch']}:half.txt") == "half\n"


def test_missing_image_exits_2_before_anything_is_created(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text('[run]\nimage = "agentrt/does-not-exist:1"\n'
                         '[[tasks]]\nid = "a"\ncommand = ["true"]\n')
    proc = agentrt("run", str(task_file), "--repo", str(repo))
    assert proc.returncode == 2
    assert "`docker pull agentrt/does-not-exist:1`" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "agent/" not in git(repo, "branch", "--list")
    assert not (repo / ".git" / "agentrt" / "sessions").exists()
