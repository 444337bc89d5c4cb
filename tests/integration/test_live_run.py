"""A run that takes tasks while it runs: submit(), `agentrt add`, budgets, dependency notes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from runtime.config import ResourceLimits, RunConfig
from runtime.errors import ConfigError
from runtime.models import SessionStatus
from runtime.run.budget import RunBudget
from runtime.run.coordinator import AgentCoordinator
from tests.integration.helpers import agentrt, sh

pytestmark = pytest.mark.docker

LIMITS = ResourceLimits(memory_mb=256, cpu_percent=100, time_seconds=120, disk_mb=64, pids=128)


def live(repo: Path, max_concurrent: int = 1, **budget: float) -> AgentCoordinator:
    config = RunConfig(resource_limits=LIMITS, merge="none", max_concurrent_agents=max_concurrent)
    return AgentCoordinator(config=config, repo=repo, stop_grace_seconds=2,
                            budget=RunBudget(**budget))  # type: ignore[arg-type]


def test_tasks_submitted_to_a_live_run_respect_the_limit_and_dependencies(
        repo: Path, docker_client: object) -> None:
    coordinator = live(repo, max_concurrent=1)
    running: list[int] = []
    peak = [0]
    lock = threading.Lock()

    def listener(event: str, result: object) -> None:
        with lock:
            if event == "running":
                running.append(1)
                peak[0] = max(peak[0], len(running))
            elif event == "finished" and running:
                running.pop()

    coordinator.listener = listener
    coordinator.start([sh("first", "echo one > one.txt; sleep 1")])
    coordinator.submit(sh("second", "echo two > two.txt"))
    # Depends on a task still running (or just finished): starts from its work.
    coordinator.submit(sh("third", "test -f one.txt && echo three > three.txt",
                          deps=["first"]))
    with pytest.raises(ConfigError, match="field id"):
        coordinator.submit(sh("second", "true"))
    with pytest.raises(ConfigError, match="unknown task 'nope'"):
        coordinator.submit(sh("fourth", "true", deps=["nope"]))
    report = coordinator.close(timeout=300)
    status = {s.task_id: s.status for s in report.sessions}
    assert status == {"first": SessionStatus.SUCCEEDED, "second": SessionStatus.SUCCEEDED,
                      "third": SessionStatus.SUCCEEDED}
    assert peak[0] == 1  # max_concurrent_agents = 1 held for the added tasks too
    with pytest.raises(ConfigError, match="not taking tasks"):
        coordinator.submit(sh("late", "true"))


def test_a_task_added_on_a_failed_dependency_is_skipped(repo: Path, docker_client: object) -> None:
    coordinator = live(repo)
    coordinator.start([sh("broken", "exit 3")])
    deadline = time.monotonic() + 120
    while coordinator.task_states()["broken"] is None or \
            not coordinator.task_states()["broken"].status.is_final:  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    coordinator.submit(sh("after", "true", deps=["broken"]))
    report = coordinator.close(timeout=120)
    after = next(s for s in report.sessions if s.task_id == "after")
    assert after.status is SessionStatus.SKIPPED
    assert "dependency 'broken' failed" in (after.reason or "")


def test_the_session_budget_refuses_by_name(repo: Path, docker_client: object) -> None:
    coordinator = live(repo, max_concurrent=2, max_sessions=2)
    coordinator.start()
    coordinator.submit(sh("a", "true"))
    coordinator.submit(sh("b", "true"))
    with pytest.raises(ConfigError, match="budget max_sessions is spent: 2 of 2"):
        coordinator.submit(sh("c", "true"))
    report = coordinator.close(timeout=120)
    assert [s.task_id for s in report.sessions] == ["a", "b"]


def test_agentrt_add_hands_tasks_to_the_live_run_of_another_process(
        repo: Path, docker_client: object, tmp_path: Path) -> None:
    coordinator = live(repo)
    coordinator.start([sh("slow", "sleep 2")])
    added = tmp_path / "more.toml"
    added.write_text('[[tasks]]\nid = "added"\ncommand = ["sh", "-c", "echo hi > added.txt"]\n'
                     'deps = ["slow"]\n')
    done = agentrt("add", coordinator.run_id, str(added), "--repo", str(repo))
    assert done.returncode == 0, done.stderr
    assert "added" in done.stdout
    # Bad input: exit 2 naming the field, nothing written.
    bad = tmp_path / "bad.toml"
    bad.write_text('[[tasks]]\nid = "x"\ncommand = ["true"]\ndeps = ["nope"]\n')
    refused = agentrt("add", coordinator.run_id, str(bad), "--repo", str(repo))
    assert refused.returncode == 2
    assert "field deps" in refused.stderr and "nope" in refused.stderr
    with_run = tmp_path / "run.toml"
    with_run.write_text('[run]\nmerge = "auto"\n[[tasks]]\nid = "y"\ncommand = ["true"]\n')
    refused = agentrt("add", coordinator.run_id, str(with_run), "--repo", str(repo))
    assert refused.returncode == 2 and "field run" in refused.stderr
    report = coordinator.close(timeout=300)
    status = {s.task_id: s.status for s in report.sessions}
    assert status == {"slow": SessionStatus.SUCCEEDED, "added": SessionStatus.SUCCEEDED}


def test_dependency_notes_are_read_only_for_the_dependent_and_absent_for_others(
        repo: Path, docker_client: object) -> None:
    from tests.integration.helpers import by_task, run_tasks

    report = run_tasks(repo, [
        sh("writer", "echo 'the API is v2' > NOTES.md; echo finished writing"),
        # Reads its dependency's diff and output, then tries to write to them.
        sh("reader", "cat /agentrt/deps/writer/diff.patch > seen-diff.txt; "
                     "cat /agentrt/deps/writer/output.txt > seen-output.txt; "
                     "grep -q '\"status\": \"succeeded\"' /agentrt/deps/writer/result.json; "
                     "if touch /agentrt/deps/writer/x 2>/dev/null; then echo WROTE > w.txt; fi; "
                     "if echo hacked >> /agentrt/deps/writer/diff.patch; then "
                     "echo WROTE > w2.txt; fi; echo control > control.txt",
           deps=["writer"]),
        # No dependencies: no notes, not even the directory.
        sh("outsider", "if ls /agentrt/deps > listing.txt 2>&1; then echo SEEN > seen.txt; fi; "
                       "true"),
    ], max_concurrent_agents=1)
    sessions = by_task(report)
    assert all(s.status is SessionStatus.SUCCEEDED for s in sessions.values()), sessions

    def show(task: str, path: str) -> str:
        import subprocess

        done = subprocess.run(["git", "-C", str(repo), "show",
                               f"{sessions[task].head_commit}:{path}"],
                              capture_output=True, text=True, check=False)
        return done.stdout if done.returncode == 0 else ""

    assert "+the API is v2" in show("reader", "seen-diff.txt")
    assert "finished writing" in show("reader", "seen-output.txt")
    assert show("reader", "control.txt") == "control\n"  # the session could write its own tree
    assert show("reader", "w.txt") == "" and show("reader", "w2.txt") == ""  # not the notes
    assert show("outsider", "seen.txt") == ""
    assert "No such file" in show("outsider", "listing.txt")
    assert not (repo / ".git" / "agentrt" / "runs" / report.run_id / "deps").exists()


def test_the_cpu_budget_refuses_once_spent(repo: Path, docker_client: object) -> None:
    coordinator = live(repo, max_cpu_seconds=0.2)
    coordinator.start([sh("burn", "i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); done")])
    deadline = time.monotonic() + 120
    while (coordinator.task_states()["burn"] is None
           or not coordinator.task_states()["burn"].status.is_final):  # type: ignore[union-attr]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert coordinator.spent().cpu_seconds >= 0.2
    with pytest.raises(ConfigError, match="budget max_cpu_seconds is spent"):
        coordinator.submit(sh("more", "true"))
    coordinator.close(timeout=60)


def test_agentrt_add_reaches_a_run_started_by_agentrt_run(repo: Path, docker_client: object,
                                                          tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.toml"
    tasks.write_text('[run]\nmerge = "none"\n[run.resource_limits]\nmemory_mb = 256\n'
                     'disk_mb = 64\n[[tasks]]\nid = "slow"\n'
                     'command = ["sh", "-c", "sleep 8"]\n')
    more = tmp_path / "more.toml"
    more.write_text('[[tasks]]\nid = "late"\ncommand = ["sh", "-c", "echo late > late.txt"]\n')
    owner = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(tasks), "--repo",
                              str(repo), "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            done = agentrt("add", "latest", str(more), "--repo", str(repo))
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # the run is not recorded (or not live) yet
        assert done.returncode == 0, done.stderr
        out, err = owner.communicate(timeout=300)
    finally:
        if owner.poll() is None:
            owner.kill()
    report = json.loads(out)
    assert {s["task_id"]: s["status"] for s in report["sessions"]} == {
        "slow": "succeeded", "late": "succeeded"}, err
