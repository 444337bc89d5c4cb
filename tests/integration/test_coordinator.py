"""The coordinator: pipelines, concurrency limits measured from the engine, contained faults."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from runtime.config import ResourceLimits, RunConfig
from runtime.models import SessionStatus
from runtime.run.coordinator import AgentCoordinator
from tests.conftest import git
from tests.integration.helpers import by_task, run_tasks, sh

pytestmark = pytest.mark.docker


def test_pipeline_stages_see_predecessors_work_and_independent_task_runs_alongside(
    repo: Path,
) -> None:
    tasks = [
        sh("design", "sleep 1; echo 'api: add(a, b)' > DESIGN.md; date +%s.%N > /tmp/t; "
                     "git add . && git commit -qm design"),
        sh("implement", "test -f DESIGN.md && echo 'def add(a, b): return a + b' > add.py",
           deps=["design"]),
        sh("tests", "test -f DESIGN.md && test -f add.py && echo 'assert add(1,2)==3' > t.py",
           deps=["implement"]),
        sh("independent", "sleep 2; echo alone > alone.txt"),
    ]
    report = run_tasks(repo, tasks, max_concurrent_agents=2)
    results = by_task(report)
    assert all(r.status is SessionStatus.SUCCEEDED for r in results.values()), results
    assert git(repo, "show", f"{results['tests'].head_commit}:add.py").startswith("def add")
    assert git(repo, "show", f"{results['tests'].head_commit}:DESIGN.md")
    # Order: each stage started after its predecessor finished.
    for earlier, later in (("design", "implement"), ("implement", "tests")):
        assert results[earlier].finished_at <= results[later].started_at  # type: ignore[operator]
    # The independent task overlapped the pipeline.
    assert results["independent"].started_at < results["implement"].finished_at  # type: ignore[operator]


def test_failed_stage_skips_its_dependents_and_the_rest_finish(repo: Path) -> None:
    tasks = [
        sh("design", "exit 1"),
        sh("implement", "true", deps=["design"]),
        sh("tests", "true", deps=["implement"]),
        sh("other", "echo ok > ok.txt"),
    ]
    results = by_task(run_tasks(repo, tasks, max_concurrent_agents=2))
    assert results["design"].status is SessionStatus.FAILED
    assert results["implement"].status is SessionStatus.SKIPPED
    assert results["tests"].status is SessionStatus.SKIPPED
    assert "design" in (results["implement"].reason or "")
    assert results["other"].status is SessionStatus.SUCCEEDED


def test_dependency_branches_that_conflict_skip_the_dependent_with_the_reason(
    repo: Path,
) -> None:
    tasks = [
        sh("left", "echo left > README.md"),
        sh("right", "echo right > README.md"),
        sh("join", "true", deps=["left", "right"]),
    ]
    results = by_task(run_tasks(repo, tasks, max_concurrent_agents=2))
    assert results["join"].status is SessionStatus.SKIPPED
    assert "README.md" in (results["join"].reason or "")


def test_twenty_tasks_never_more_than_five_running_measured_from_engine_events(
    repo: Path, docker_client: object
) -> None:
    # Followed live: the engine keeps only its last 256 events for a later `since` query, and
    # 20 sessions with their harvest containers make more than that.
    stream, seen, reader = session_events(docker_client, repo)
    tasks = [sh(f"t{i:02d}", "sleep 1") for i in range(20)]
    report = run_tasks(repo, tasks, max_concurrent_agents=5,
                       resource_limits=ResourceLimits(memory_mb=64, disk_mb=16, pids=32,
                                                      time_seconds=60))
    assert all(s.status is SessionStatus.SUCCEEDED for s in report.sessions)
    time.sleep(1)
    stream.close()
    reader.join(timeout=10)
    events = list(seen)
    running = peak = starts = 0
    for event in sorted(events, key=lambda e: e["timeNano"]):
        if event["Action"] == "start":
            running += 1
            starts += 1
        elif event["Action"] == "die":
            running -= 1
        peak = max(peak, running)
    assert starts == 20
    assert peak == 5


def test_an_exception_while_handling_one_session_is_contained_to_it(repo: Path) -> None:
    config = RunConfig(merge="none", resource_limits=ResourceLimits(memory_mb=64, disk_mb=16))
    coordinator = AgentCoordinator(config=config, repo=repo, stop_grace_seconds=1)

    def inject(session_id: str, what: str) -> None:
        if session_id.startswith("victim-") and what.startswith("event die"):
            raise RuntimeError("injected fault")

    original_init = coordinator.run_agents

    def run_with_fault(tasks):  # type: ignore[no-untyped-def]
        import runtime.backends.docker.supervisor as sup

        real_start = sup.Supervisor.start

        def start(self):  # type: ignore[no-untyped-def]
            self.fault_injector = inject
            real_start(self)

        sup.Supervisor.start = start  # type: ignore[method-assign]
        try:
            return original_init(tasks)
        finally:
            sup.Supervisor.start = real_start  # type: ignore[method-assign]

    report = run_with_fault([sh("victim", "sleep 1; echo v > v.txt"),
                             sh("neighbour", "sleep 1; echo n > n.txt")])
    results = by_task(report)
    assert results["neighbour"].status is SessionStatus.SUCCEEDED
    # The victim's die event was lost to the fault, yet it still ended and its work is saved.
    assert results["victim"].status.is_final
    assert any("injected fault" in w for w in results["victim"].warnings)
    assert git(repo, "show", f"{results['victim'].head_commit}:v.txt") == "v\n"


def test_conflict_radar_warns_while_two_live_agents_touch_the_same_file(repo: Path) -> None:
    tasks = [sh("a", "echo a > README.md; echo a > a.txt; sleep 6"),
             sh("b", "echo b > README.md; echo b > b.txt; sleep 6")]
    report = run_tasks(repo, tasks, max_concurrent_agents=2, conflict_radar_seconds=1)
    expected = "conflict radar: a and b both changed README.md"
    assert expected in report.warnings
    assert report.warnings.count(expected) == 1
    assert all(expected in s.warnings for s in report.sessions)
    assert not any("a.txt" in w or "b.txt" in w for w in report.warnings)
    # The warning is part of the stored run too (`agentrt report` shows it later).
    from runtime.git.safe_git import MainRepo
    from runtime.state.store import Store

    with Store(MainRepo(repo).state_dir / "state.db") as store:
        assert expected in store.run_report(report.run_id).warnings


def session_events(docker_client: Any, repo: Path) -> tuple[Any, list[dict[str, Any]],
                                                             threading.Thread]:
    """Follow the engine's events of this repository's agent containers (not harvests)."""
    stream = docker_client.events(
        decode=True, filters={"type": "container", "label": f"agentrt.repo={repo.resolve()}"})
    seen: list[dict[str, Any]] = []
    reader = threading.Thread(target=lambda: seen.extend(
        e for e in stream if "agentrt.session" in e.get("Actor", {}).get("Attributes", {})),
        daemon=True)
    reader.start()
    return stream, seen, reader


def test_tasks_waiting_for_a_slot_are_prepared_ahead_and_never_start_early(
    repo: Path, docker_client: object
) -> None:
    stream, seen, reader = session_events(docker_client, repo)
    tasks = [sh(f"w{i}", f"sleep 1; echo {i} > w{i}.txt") for i in range(4)]
    report = run_tasks(repo, tasks, max_concurrent_agents=1, warm_pool=2)
    time.sleep(1)
    stream.close()
    reader.join(timeout=10)
    results = by_task(report)
    assert all(r.status is SessionStatus.SUCCEEDED for r in results.values()), results
    for i in range(4):
        assert git(repo, "show", f"{results[f'w{i}'].branch}:w{i}.txt").strip() == str(i)
    at: dict[tuple[str, str], int] = {}
    for event in seen:
        task = event["Actor"]["Attributes"]["agentrt.session"].rsplit("-", 1)[0]
        at.setdefault((task, event["Action"]), event["timeNano"])
    for before, after in (("w0", "w1"), ("w1", "w2"), ("w2", "w3")):
        # Created (volume, checkout, container) while the task before it still ran...
        assert at[(after, "create")] < at[(before, "die")], (before, after)
        # ...but started only once that one's container had ended.
        assert at[(after, "start")] > at[(before, "die")], (before, after)
    from runtime.state.store import Store

    store = Store(repo / ".git" / "agentrt" / "state.db")
    recorded = store.list_sessions(run_id=report.run_id)
    assert sorted(s.task_id for s in recorded) == ["w0", "w1", "w2", "w3"]
    assert all(s.manifest_json and s.container_id for s in recorded)
    # Each container prepared ahead ran as its task's one row (recorded "prepared" first).
    assert {e["Actor"]["Attributes"]["agentrt.session"] for e in seen} == \
        {s.id for s in recorded}
    assert {s.status for s in recorded} == {SessionStatus.SUCCEEDED}


def test_a_cancelled_run_releases_the_sessions_it_prepared_ahead(repo: Path) -> None:
    config = RunConfig(max_concurrent_agents=1, warm_pool=2, merge="none",
                       resource_limits=ResourceLimits(memory_mb=128, disk_mb=32))
    coordinator = AgentCoordinator(config=config, repo=repo, stop_grace_seconds=1)
    tasks = [sh(f"c{i}", "sleep 30") for i in range(4)]

    def cancel_once_running(event: str, result: Any) -> None:
        if event == "running":
            threading.Timer(2.0, coordinator.cancel).start()

    coordinator.listener = cancel_once_running
    report = coordinator.run_agents(tasks)
    results = by_task(report)
    assert results["c0"].status is SessionStatus.CANCELLED
    assert all(results[f"c{i}"].status is SessionStatus.CANCELLED for i in (1, 2, 3))
    # Only the session that ran keeps a branch; the ones prepared ahead left none.
    branches = git(repo, "branch", "--list", "agent/*", "--format=%(refname:short)").split()
    assert [b.split("/")[1] for b in branches] == ["c0"]
    assert not list((repo / ".git" / "agentrt" / "sessions").iterdir())
    # ...and no row: one per task (the cancelled ones under placeholders), none "prepared".
    from runtime.state.store import Store

    with Store(repo / ".git" / "agentrt" / "state.db") as store:
        rows = store.list_sessions(run_id=report.run_id)
    assert sorted((r.task_id, r.status.value) for r in rows) == \
        [(f"c{i}", "cancelled") for i in range(4)], rows


def test_ctrl_c_in_the_python_api_stops_the_sessions_instead_of_waiting_for_them(
    repo: Path,
) -> None:
    import os
    import signal

    config = RunConfig(max_concurrent_agents=2, warm_pool=1, merge="none",
                       resource_limits=ResourceLimits(memory_mb=128, disk_mb=32))
    coordinator = AgentCoordinator(config=config, repo=repo, stop_grace_seconds=1)
    armed = threading.Event()

    def interrupt_once_running(event: str, result: Any) -> None:
        if event == "running" and not armed.is_set():
            armed.set()
            threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT)).start()

    coordinator.listener = interrupt_once_running
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        coordinator.run_agents([sh(f"k{i}", "sleep 120") for i in range(3)])
    # The sessions were stopped (1 s grace) and released, not waited for (120 s).
    assert time.monotonic() - start < 60
    assert not list((repo / ".git" / "agentrt" / "sessions").iterdir())


def test_a_set_up_that_fails_finalises_the_sessions_own_row(repo: Path) -> None:
    from runtime.git.safe_git import MainRepo
    from runtime.state.store import Store

    state = MainRepo(repo).state_dir
    state.mkdir(parents=True, exist_ok=True)
    blocker = state / "sessions"  # a file where the session directories go: set-up fails
    blocker.write_text("not a directory\n")
    try:
        (result,) = run_tasks(repo, [sh("x", "true")]).sessions
    finally:
        blocker.unlink()
    assert result.status is SessionStatus.CRASHED
    assert "setting the session up" in (result.reason or "")
    with Store(state / "state.db") as store:
        rows = store.list_sessions()
    # One row, under the session's own id, final: no placeholder, nothing left "pending".
    assert [(r.id, r.result.status) for r in rows] == [(result.id, SessionStatus.CRASHED)]
