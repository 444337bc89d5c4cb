"""The merge gate: work lands only when the project's own check passes on the merged result,
each session gated on top of the landings before it; the target never moves on a refusal."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from runtime.config import ResourceLimits
from runtime.environments import Environment
from runtime.models import SessionStatus
from tests.conftest import git, make_repo
from tests.integration.helpers import agentrt, by_task, run_tasks, sh

pytestmark = pytest.mark.docker

# At most one feature file, and no BROKEN file: each feature alone passes, two together fail.
GATE = ["sh", "-c", 'n=$(ls features | wc -l); echo "gate: $n feature files"; '
        '[ -e BROKEN ] && echo "gate: BROKEN is present"; [ "$n" -le 1 ] && [ ! -e BROKEN ]']

TASKS = """
[run]
max_concurrent_agents = 3
merge = "auto"
merge_gate = {gate}
[run.resource_limits]
memory_mb = 128
disk_mb = 32
[[tasks]]
id = "feature-a"
command = ["sh", "-c", "echo a > features/a"]
[[tasks]]
id = "feature-b"
command = ["sh", "-c", "sleep 1.5; echo b > features/b"]
[[tasks]]
id = "breaks"
command = ["sh", "-c", "sleep 3; echo oops > BROKEN"]
"""


def gate_branches(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/agent/*-gate/").split()


def test_a_combination_that_breaks_the_gate_stays_off_the_target_and_merge_honours_it(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    (repo / "features").mkdir()
    (repo / "features" / ".keep").write_text("")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "features dir")
    before = git(repo, "rev-parse", "main").strip()
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(TASKS.format(gate=json.dumps(GATE)))

    run = agentrt("run", str(task_file), "--repo", str(repo), "--json")
    assert run.returncode == 1, run.stderr  # a gate failed: exit 1, like a failed session
    report = json.loads(run.stdout)
    sessions = {s["task_id"]: s for s in report["sessions"]}
    assert {t: s["status"] for t, s in sessions.items()} == dict.fromkeys(sessions, "succeeded")
    # feature-a landed (its gate saw one file); feature-b passes alone but not on top of it.
    assert sessions["feature-a"]["merge"]["status"] == "merged"
    assert sessions["feature-a"]["merge"]["gate"]["verdict"] == "passed"
    refused = sessions["feature-b"]["merge"]
    assert refused["status"] == "gate_failed"
    assert refused["gate"]["command"] == GATE
    assert refused["gate"]["exit_code"] == 1 and refused["gate"]["status"] == "failed"
    assert "gate: 2 feature files" in refused["gate"]["output_tail"]
    # The gate ran on the target with feature-a merged, plus feature-b: a merge queue.
    tested = refused["gate"]["tested_commit"]
    parents = git(repo, "rev-list", "--parents", "-n1", tested).split()[1:]
    assert parents == [sessions["feature-a"]["merge"]["merge_commit"],
                       sessions["feature-b"]["head_commit"]]
    breaks = sessions["breaks"]["merge"]
    assert breaks["status"] == "gate_failed"
    assert "BROKEN is present" in breaks["gate"]["output_tail"]
    # The target moved by feature-a's merge only; the refused work is on its branches.
    assert git(repo, "rev-list", "--parents", "-n1", "main").split()[1:] == [
        before, sessions["feature-a"]["head_commit"]]
    assert not (repo / "features" / "b").exists() and not (repo / "BROKEN").exists()
    for task in ("feature-b", "breaks"):
        assert git(repo, "rev-parse", sessions[task]["branch"]).strip() == \
            sessions[task]["head_commit"]
    assert gate_branches(repo) == []  # a gate's own branch goes with it

    # `agentrt merge` honours the recorded gate: still refused, target unchanged.
    main_now = git(repo, "rev-parse", "main").strip()
    again = agentrt("merge", report["run_id"], "--strategy", "auto", "--repo", str(repo), "--json")
    assert again.returncode == 1 and again.stdout, again.stderr
    statuses = {s["task_id"]: s["merge"]["status"] for s in json.loads(again.stdout)["sessions"]}
    assert statuses == {"feature-a": "merged", "feature-b": "gate_failed",
                        "breaks": "gate_failed"}
    assert git(repo, "rev-parse", "main").strip() == main_now

    # --no-gate lands them on purpose, and says so in the record.
    forced = agentrt("merge", report["run_id"], "--strategy", "auto", "--no-gate", "--repo",
                     str(repo), "--json")
    assert forced.returncode == 0, forced.stderr
    landed = {s["task_id"]: s["merge"] for s in json.loads(forced.stdout)["sessions"]}
    assert landed["feature-b"]["status"] == landed["breaks"]["status"] == "merged"
    assert landed["feature-b"]["gate"]["verdict"] == "skipped"
    assert (repo / "features" / "b").exists() and (repo / "BROKEN").exists()
    stored = json.loads(agentrt("report", report["run_id"], "--json", "--repo", str(repo)).stdout)
    assert {s["task_id"]: s["merge"]["gate"]["verdict"] for s in stored["sessions"]} == {
        "feature-a": "passed", "feature-b": "skipped", "breaks": "skipped"}
    assert gate_branches(repo) == []


def test_a_gate_over_its_memory_limit_is_reported_oom_and_the_target_stays(
    docker_client: object, repo: Path
) -> None:
    before = git(repo, "rev-parse", "main").strip()
    report = run_tasks(
        repo, [sh("grow", "echo more >> README.md")], merge="auto",
        merge_gate=["python3", "-c", "x = bytearray(400 * 1024 * 1024); print(len(x))"],
        merge_gate_limits={"memory_mb": 64})
    grow = by_task(report)["grow"]
    assert grow.status is SessionStatus.SUCCEEDED
    assert grow.merge.status == "gate_failed"
    assert grow.merge.gate is not None and grow.merge.gate.status == "oom_killed"
    assert report.exit_code() == 1
    assert git(repo, "rev-parse", "main").strip() == before
    assert gate_branches(repo) == []


def test_a_gate_on_a_clean_merge_without_a_gate_for_its_task_lands_it_ungated(
    docker_client: object, repo: Path
) -> None:
    """``merge_gate = []`` on a task turns the run's gate off for it (and only for it)."""
    report = run_tasks(
        repo, [sh("free", "echo free > FREE.md", merge_gate=[]),
               sh("gated", "sleep 1; echo gated > GATED.md")],
        merge="auto", merge_gate=["sh", "-c", "test ! -e GATED.md"])
    results = by_task(report)
    assert results["free"].merge.status == "merged" and results["free"].merge.gate is None
    assert results["gated"].merge.status == "gate_failed"
    assert git(repo, "show", "main:FREE.md") == "free\n"


def test_the_gate_runs_the_repositorys_own_pytest_in_its_python_environment(
    docker_client: object, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "calc", {
        "calc.py": "def add(a, b):\n    return a + b\n",
        "test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
        # The project's toolchain: Debian's pytest on agentrt's base (cached by content).
        "env/Dockerfile": f"# gate test {secrets.token_hex(4)}\nFROM agentrt/base:latest\n"
                          "USER root\nRUN apt-get update -q && DEBIAN_FRONTEND=noninteractive "
                          "apt-get install -y -q --no-install-recommends python3-pytest "
                          "&& rm -rf /var/lib/apt/lists/*\n",
    })
    before = git(repo, "rev-parse", "main").strip()
    report = run_tasks(
        repo, [sh("docs", "echo '# calc' > README.md"),
               sh("bug", "sleep 1; sed -i 's/a + b/a - b/' calc.py")],
        merge="auto", merge_gate=["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        environment=Environment(dockerfile="env/Dockerfile"),
        resource_limits=ResourceLimits(memory_mb=256, cpu_percent=100, time_seconds=120,
                                       disk_mb=64, pids=128))
    results = by_task(report)
    assert results["docs"].merge.status == "merged", results["docs"].merge
    bug = results["bug"].merge
    assert bug.status == "gate_failed" and bug.gate is not None
    assert "1 failed" in bug.gate.output_tail and "assert -1 == 5" in bug.gate.output_tail
    assert git(repo, "show", "main:calc.py") == "def add(a, b):\n    return a + b\n"
    assert git(repo, "rev-list", "--count", f"{before}..main", "--first-parent").strip() == "1"
    assert gate_branches(repo) == []
