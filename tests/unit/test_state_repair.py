"""A lost or damaged state database is noticed at open and rebuilt from what agentrt left.

Real SQLite files and real git repositories; no Docker (the CLI is tested end to end in
tests/integration/test_state_database.py).
"""

from __future__ import annotations

import logging
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runtime.errors import StateDamagedError, StateError
from runtime.git.safe_git import MainRepo
from runtime.models import SessionResult, SessionStatus
from runtime.state.liveness import process_start_time
from runtime.state.rebuild import REBUILT_REASON, REBUILT_RUN_STATUS, plan_rebuild
from runtime.state.repair import open_store_for_gc, repair_state
from runtime.state.schema import RunRow
from runtime.state.session_facts import SessionMarker
from runtime.state.store import SCHEMA_VERSION, Store
from runtime.state.traces import FoundSession, agentrt_traces
from tests.conftest import git, make_repo

RUN = "r20260101-120000-abcd"
SESSIONS = {"fmt-a1b2c3": ("fmt", "a1b2c3"), "docs-d4e5f6": ("docs", "d4e5f6")}


def db_of(repo: MainRepo) -> Path:
    return repo.state_dir / "state.db"


def history(path: Path) -> MainRepo:
    """A repository where one agentrt run of two sessions finished: branches (created with a
    reflog entry, as agentrt does), saved logs and the state database."""
    repo = MainRepo(make_repo(path))
    base = git(repo.root, "rev-parse", "HEAD").strip()
    with Store(db_of(repo)) as store:
        store.create_run(RUN, str(repo.root), base, "main", "review", "{}", None, None, "h")
        for session_id, (task, suffix) in SESSIONS.items():
            branch = f"agent/{task}/{suffix}"
            git(repo.root, "update-ref", "-m", "agentrt: session branch",
                f"refs/heads/{branch}", base, "0" * 40)
            logs = repo.state_dir / "logs"
            logs.mkdir(exist_ok=True)
            (logs / f"{session_id}.log").write_text(f"output of {task}\n")
            store.upsert_session(
                SessionResult(id=session_id, task_id=task, branch=branch, base_commit=base,
                              head_commit=base, status=SessionStatus.SUCCEEDED, exit_code=0,
                              started_at=datetime.now(UTC)), RUN)
            store.add_event(RUN, "finished", "succeeded", session_id)
        store.finish_run(RUN, "finished")
    return repo


def corrupt_table(db: Path, table: str) -> None:
    """Overwrite the root page of ``table`` with garbage; the file header stays valid."""
    raw = sqlite3.connect(db)
    try:
        page_size = raw.execute("PRAGMA page_size").fetchone()[0]
        root = raw.execute("SELECT rootpage FROM sqlite_master WHERE name = ?",
                           (table,)).fetchone()[0]
    finally:
        raw.close()
    assert root > 1 and not Path(f"{db}-wal").exists()
    with open(db, "r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(b"\xff" * page_size)


# -- noticing --------------------------------------------------------------------------------


def test_a_fresh_repository_gets_a_new_database_without_a_word(tmp_path: Path) -> None:
    repo = MainRepo(make_repo(tmp_path / "repo"))
    assert agentrt_traces(repo.state_dir) == []
    with Store(db_of(repo)) as store:
        assert store.list_runs() == []


@pytest.mark.parametrize("trace", ["branch", "session dir", "log"])
def test_an_empty_database_where_agentrt_worked_is_refused_naming_the_repair(
    tmp_path: Path, trace: str
) -> None:
    repo = MainRepo(make_repo(tmp_path / "repo"))
    repo.state_dir.mkdir(parents=True)
    if trace == "branch":
        git(repo.root, "branch", "agent/fmt/a1b2c3")
    elif trace == "session dir":
        (repo.state_dir / "sessions" / "fmt-a1b2c3").mkdir(parents=True)
    else:
        (repo.state_dir / "logs").mkdir()
        (repo.state_dir / "logs" / "fmt-a1b2c3.log").write_text("hi\n")
    db_of(repo).write_bytes(b"")
    with pytest.raises(StateDamagedError, match=r"agentrt gc --repair-state") as info:
        Store(db_of(repo))
    assert "is empty" in str(info.value) and trace.split()[0] in str(info.value)
    assert db_of(repo).stat().st_size == 0  # nothing was written


def test_a_missing_database_is_new_even_where_standalone_sessions_left_branches(
    tmp_path: Path,
) -> None:
    # IsolatedAgentSession used alone (store=None) leaves a branch and a log, no database.
    repo = MainRepo(make_repo(tmp_path / "repo"))
    git(repo.root, "branch", "agent/hello/8f8382")
    (repo.state_dir / "logs").mkdir(parents=True)
    (repo.state_dir / "logs" / "hello-8f8382.log").write_text("hi\n")
    with Store(db_of(repo)) as store:
        assert store.list_runs() == []
    with Store(db_of(repo)) as store:  # and it is not mistaken for a lost one afterwards
        assert store.list_runs() == []


def test_a_database_truncated_mid_file_is_refused_at_open(tmp_path: Path) -> None:
    repo = history(tmp_path / "repo")
    with open(db_of(repo), "r+b") as handle:
        handle.truncate(2 * 4096)
    with pytest.raises(StateDamagedError, match="--repair-state"):
        Store(db_of(repo))


def test_a_database_whose_wal_is_lost_before_a_checkpoint_is_refused(tmp_path: Path) -> None:
    repo = history(tmp_path / "repo")
    db_of(repo).unlink()
    # What a crash leaves when the WAL goes and the main file only has its first page.
    holder = Store(db_of(repo), allow_empty=True)
    first_page = db_of(repo).read_bytes()
    holder.close()
    db_of(repo).write_bytes(first_page[:4096])
    with pytest.raises(StateDamagedError, match="is empty"):
        Store(db_of(repo))


def test_gc_gets_no_store_and_a_warning_when_the_database_is_damaged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = history(tmp_path / "repo")
    healthy = open_store_for_gc(repo.state_dir)
    assert healthy is not None and [r.id for r in healthy.list_runs()] == [RUN]
    healthy.close()
    db_of(repo).write_bytes(b"garbage " * 1000)
    with caplog.at_level(logging.WARNING):
        assert open_store_for_gc(repo.state_dir) is None
    assert "--repair-state" in caplog.text and "Docker labels and the disk" in caplog.text
    assert open_store_for_gc(tmp_path / "nowhere") is None


def test_gc_still_refuses_a_database_of_a_newer_agentrt(tmp_path: Path) -> None:
    repo = history(tmp_path / "repo")
    with sqlite3.connect(db_of(repo)) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="newer agentrt"):
        open_store_for_gc(repo.state_dir)


# -- repairing -------------------------------------------------------------------------------


def test_repair_rebuilds_runs_and_sessions_from_branches_markers_and_logs(
    tmp_path: Path,
) -> None:
    repo = history(tmp_path / "repo")
    base = git(repo.root, "rev-parse", "HEAD").strip()
    # A third session of another run whose process died: its directory and marker remain.
    orphan = repo.state_dir / "sessions" / "lint-0a0b0c"
    orphan.mkdir(parents=True)
    SessionMarker("lint-0a0b0c", "r20260101-130000-dead", "agent/lint/0a0b0c", 999999999,
                  1.0).write(orphan)
    git(repo.root, "update-ref", "-m", "agentrt: session branch",
        "refs/heads/agent/lint/0a0b0c", base, "0" * 40)
    db_of(repo).write_bytes(b"")

    report = repair_state(repo)

    assert report.damage is not None and "is empty" in report.damage
    assert Path(report.moved_aside[0]).name.startswith("state.db.broken-")
    assert Path(report.moved_aside[0]).stat().st_size == 0
    assert sorted(report.rebuilt_sessions) == ["docs-d4e5f6", "fmt-a1b2c3", "lint-0a0b0c"]
    assert report.kept_runs == [] and report.kept_sessions == []
    with Store(db_of(repo)) as store:
        sessions = {s.id: s for s in store.list_sessions()}
        runs = {r.id: r for r in store.list_runs()}
        assert set(sessions) == {"docs-d4e5f6", "fmt-a1b2c3", "lint-0a0b0c"}
        for row in sessions.values():
            assert row.status == SessionStatus.CRASHED
            assert row.result.reason == REBUILT_REASON
            assert row.result.head_commit == base and row.result.base_commit == base
            assert row.result.started_at is not None
        assert sessions["lint-0a0b0c"].run_id == "r20260101-130000-dead"
        assert sessions["fmt-a1b2c3"].result.finished_at is not None  # from its saved log
        assert all(r.status == REBUILT_RUN_STATUS for r in runs.values())
        assert len(runs) == 2 and "r20260101-130000-dead" in runs
        assert all(e.kind == "repair" for e in store.events())
    assert repair_state(repo).damage is None  # healthy now: left alone


def test_repair_rebuilds_a_deleted_database_from_what_agentrt_left(tmp_path: Path) -> None:
    repo = history(tmp_path / "repo")
    db_of(repo).unlink()

    report = repair_state(repo)

    assert report.damage is not None and "missing" in report.damage
    assert report.moved_aside == [] and sorted(report.rebuilt_sessions) == sorted(SESSIONS)
    with Store(db_of(repo)) as store:
        assert sorted(s.id for s in store.list_sessions()) == sorted(SESSIONS)


def test_repair_keeps_the_rows_still_readable_in_a_corrupt_database(tmp_path: Path) -> None:
    repo = history(tmp_path / "repo")
    corrupt_table(db_of(repo), "events")
    with pytest.raises(StateDamagedError, match="is damaged"):
        Store(db_of(repo))

    report = repair_state(repo)

    assert report.kept_runs == [RUN]
    assert sorted(report.kept_sessions) == sorted(SESSIONS) and report.rebuilt_sessions == []
    with Store(db_of(repo)) as store:
        assert all(s.status == SessionStatus.SUCCEEDED for s in store.list_sessions(RUN))
        assert store.find_run(RUN).status == "finished"
    moved = Path(report.moved_aside[0])
    assert moved.stat().st_size > 4096  # the broken file is kept, not deleted


def test_sessions_lost_with_their_rows_go_under_the_run_that_was_going(tmp_path: Path) -> None:
    repo = history(tmp_path / "repo")
    corrupt_table(db_of(repo), "sessions")

    report = repair_state(repo)

    assert report.kept_runs == [RUN] and sorted(report.rebuilt_sessions) == sorted(SESSIONS)
    with Store(db_of(repo)) as store:
        rows = store.list_sessions(RUN)
        assert sorted(r.id for r in rows) == sorted(SESSIONS)
        assert all(r.result.reason == REBUILT_REASON for r in rows)


def test_repair_refuses_while_a_session_owner_is_alive(tmp_path: Path) -> None:
    repo = history(tmp_path / "repo")
    live = repo.state_dir / "sessions" / "fmt-a1b2c3"
    live.mkdir(parents=True)
    SessionMarker("fmt-a1b2c3", RUN, "agent/fmt/a1b2c3", os.getpid(),
                  process_start_time(os.getpid())).write(live)
    db_of(repo).write_bytes(b"garbage " * 1000)
    with pytest.raises(StateError, match="live agentrt process"):
        repair_state(repo)
    assert db_of(repo).read_bytes().startswith(b"garbage")  # untouched


def test_repair_leaves_a_database_of_a_newer_agentrt_alone(tmp_path: Path) -> None:
    repo = history(tmp_path / "repo")
    with sqlite3.connect(db_of(repo)) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="newer agentrt") as info:
        repair_state(repo)
    assert not isinstance(info.value, StateDamagedError)
    assert not list(repo.state_dir.glob("state.db.broken-*"))


def test_plan_puts_sessions_without_a_known_run_under_one_rebuilt_run() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    kept = RunRow(id="r1", repo="/r", base_commit="b", target="main", merge="review",
                  config_json="{}", started_at=now - timedelta(hours=2),
                  finished_at=now - timedelta(hours=1), status="finished", warnings=[],
                  owner_pid=None, owner_start_time=None, owner_host=None)
    during = FoundSession("a-000001", "a", "agent/a/000001", base_commit="b",
                          started_at=now - timedelta(minutes=90))
    later = FoundSession("b-000002", "b", "agent/b/000002", base_commit="c",
                         started_at=now - timedelta(minutes=30))
    marked = FoundSession("c-000003", "c", "agent/c/000003", run_id="r9")
    plan = plan_rebuild([kept], [], [during, later, marked], "/r", now)
    runs = {p.row.id: p for p in plan.runs}
    assert set(runs) == {"r1", "r9", "r20260102-030405-rebuilt"}
    assert not runs["r1"].rebuilt and runs["r9"].rebuilt
    rebuilt = runs["r20260102-030405-rebuilt"].row
    assert rebuilt.base_commit == "c" and rebuilt.status == REBUILT_RUN_STATUS
    assert rebuilt.started_at == later.started_at
    placed = {result.id: run_id for run_id, result, _ in plan.sessions}
    assert placed == {"a-000001": "r1", "b-000002": "r20260102-030405-rebuilt",
                      "c-000003": "r9"}
