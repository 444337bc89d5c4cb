"""The state database: schema versioning, lookups, round-trips and concurrent access."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import NotFoundError, StateDamagedError, StateError
from runtime.models import Conflict, MergeInfo, RunReport, SessionResult, SessionStatus
from runtime.state.schema import APPLICATION_ID, SCHEMA_VERSION
from runtime.state.store import Store

WRITERS = 8
EVENTS_PER_WRITER = 200
READERS = 2


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with Store(tmp_path / "agentrt" / "state.db") as opened:
        yield opened


def _run(store: Store, run_id: str = "run-1") -> None:
    store.create_run(run_id, "/repo", "abc123", "main", "review", "{}", 42, 1000.0, "host")


def _result(session_id: str, **fields: Any) -> SessionResult:
    return SessionResult(id=session_id, task_id="task", branch=f"agent/task/{session_id}", **fields)


# -- schema ------------------------------------------------------------------------------------


def test_new_file_gets_current_schema_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "state.db"
    Store(path).close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "sessions", "events", "samples"} <= tables
    with Store(path) as again:
        assert again.list_runs() == []


def test_file_from_a_newer_agentrt_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    Store(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="newer agentrt") as info:
        Store(path)
    assert str(path) in str(info.value)


def test_garbage_file_is_a_state_error_naming_the_path_and_the_repair(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database at all\n" * 200)
    with pytest.raises(StateDamagedError) as info:
        Store(path)
    assert str(path) in str(info.value)
    assert "agentrt gc --repair-state" in str(info.value)


def test_corrupt_pages_behind_a_valid_header_are_found_at_open(tmp_path: Path) -> None:
    path = tmp_path / "agentrt" / "state.db"
    with Store(path) as opened:
        _run(opened)
        for i in range(200):
            opened.upsert_session(_result(f"s{i:03d}", status=SessionStatus.SUCCEEDED), "run-1")
            opened.add_event("run-1", "finished", "succeeded " * 20, f"s{i:03d}")
    size = path.stat().st_size
    assert size > 20 * 4096
    with Store(path) as healthy:  # untouched, it opens
        assert len(healthy.list_sessions()) == 200
    with open(path, "r+b") as handle:  # garbage in the middle; the first page stays intact
        handle.seek(size // 2 // 4096 * 4096)
        handle.write(b"\xa5" * 3 * 4096)
    with pytest.raises(StateDamagedError, match="is damaged.*agentrt gc --repair-state"):
        Store(path)


def test_sqlite_file_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE runs (x)")
    with pytest.raises(StateError, match="not an agentrt state database"):
        Store(path)


def test_closed_store_refuses_work(tmp_path: Path) -> None:
    opened = Store(tmp_path / "state.db")
    opened.close()
    opened.close()
    with pytest.raises(StateError, match="closed"):
        opened.list_runs()


# -- lookups -----------------------------------------------------------------------------------


def test_session_prefix_lookup_unique_ambiguous_missing(store: Store) -> None:
    _run(store)
    for sid in ("parser-1a2b3c", "parser-1a9999", "lexer-777777", "lexer-7"):
        store.upsert_session(_result(sid), "run-1")
    assert store.find_session("parser-1a2").id == "parser-1a2b3c"
    assert store.find_session("lexer-7").id == "lexer-7"  # an exact id wins over longer ones
    with pytest.raises(NotFoundError, match=r"'parser-1a' is ambiguous: matches parser-1a2b3c, "
                       r"parser-1a9999"):
        store.find_session("parser-1a")
    with pytest.raises(NotFoundError, match="no session matches 'nope'"):
        store.find_session("nope")
    with pytest.raises(NotFoundError):
        store.find_session("")
    with pytest.raises(NotFoundError, match="no session 'parser'"):
        store.get_session("parser")


def test_prefix_is_not_a_like_pattern(store: Store) -> None:
    _run(store)
    store.upsert_session(_result("a-1"), "run-1")
    with pytest.raises(NotFoundError):
        store.find_session("_")
    with pytest.raises(NotFoundError):
        store.find_session("%")


def test_run_prefix_lookup_and_latest(store: Store) -> None:
    assert store.latest_run() is None
    _run(store, "20240101-aaaa")
    _run(store, "20240101-aabb")
    assert store.find_run("20240101-aab").id == "20240101-aabb"
    with pytest.raises(NotFoundError, match="ambiguous: matches 20240101-aaaa, 20240101-aabb"):
        store.find_run("20240101-aa")
    with pytest.raises(NotFoundError, match="no run matches 'x'"):
        store.find_run("x")
    latest = store.latest_run()
    assert latest is not None and latest.id == "20240101-aabb"
    assert [r.id for r in store.list_runs()] == ["20240101-aaaa", "20240101-aabb"]


def test_duplicate_run_is_refused(store: Store) -> None:
    _run(store)
    with pytest.raises(StateError, match="already exists"):
        _run(store)


# -- sessions ----------------------------------------------------------------------------------


def test_upsert_changes_only_the_given_resources(store: Store) -> None:
    _run(store)
    store.upsert_session(_result("s1"), "run-1", container_id="c1", deadline=123.5)
    store.upsert_session(_result("s1", status=SessionStatus.RUNNING), "run-1", db_path="/db")
    row = store.get_session("s1")
    assert (row.container_id, row.deadline, row.db_path) == ("c1", 123.5, "/db")
    assert row.status is SessionStatus.RUNNING and row.result.status is SessionStatus.RUNNING
    assert row.created_at <= row.updated_at
    store.update_session("s1", container_id=None, owner_pid=7, owner_start_time=1.5)
    row = store.get_session("s1")
    assert (row.container_id, row.owner_pid, row.owner_start_time) == (None, 7, 1.5)


def test_update_session_status_also_updates_the_result(store: Store) -> None:
    _run(store)
    store.upsert_session(_result("s1", exit_code=None), "run-1")
    store.update_session("s1", status=SessionStatus.CANCELLED)
    row = store.get_session("s1")
    assert row.status is SessionStatus.CANCELLED
    assert row.result.status is SessionStatus.CANCELLED
    with pytest.raises(NotFoundError):
        store.update_session("missing", status=SessionStatus.FAILED)


def test_unknown_columns_are_rejected(store: Store) -> None:
    _run(store)
    with pytest.raises(TypeError, match="secret"):
        store.upsert_session(_result("s1"), "run-1", secret="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="task_id"):
        store.update_session("s1", task_id="y")  # type: ignore[call-arg]


def test_session_needs_an_existing_run_and_keeps_its_run(store: Store) -> None:
    with pytest.raises(NotFoundError, match="no run 'ghost'"):
        store.upsert_session(_result("s1"), "ghost")
    _run(store, "r1")
    _run(store, "r2")
    store.upsert_session(_result("s1"), "r1")
    with pytest.raises(StateError, match="another run"):
        store.upsert_session(_result("s1"), "r2")


def test_list_sessions_filters_by_run_and_liveness(store: Store) -> None:
    _run(store, "r1")
    _run(store, "r2")
    store.upsert_session(_result("a", status=SessionStatus.RUNNING), "r1")
    store.upsert_session(_result("b", status=SessionStatus.SUCCEEDED), "r1")
    store.upsert_session(_result("c", status=SessionStatus.PENDING), "r2")
    assert [s.id for s in store.list_sessions()] == ["a", "b", "c"]
    assert [s.id for s in store.list_sessions("r1")] == ["a", "b"]
    assert [s.id for s in store.list_sessions(include_finished=False)] == ["a", "c"]
    assert [s.id for s in store.list_sessions("r1", include_finished=False)] == ["a"]


def test_manifest_round_trips(store: Store) -> None:
    _run(store)
    manifest = (
        '{"image": "agentrt/base:latest", "image_digest": "sha256:ab", "base_commit": "abc",'
        ' "task": {"id": "t"}, "limits": {}, "network": "none", "runtime": "runc",'
        ' "database_strategy": "per_agent", "env_keys": ["API_KEY"]}'
    )
    store.upsert_session(_result("s1"), "run-1", manifest_json=manifest)
    loaded = store.get_session("s1").manifest
    assert loaded is not None and loaded.env_keys == ["API_KEY"]
    store.upsert_session(_result("s2"), "run-1")
    assert store.get_session("s2").manifest is None


# -- reports, events, samples ------------------------------------------------------------------


def test_run_report_round_trip(store: Store) -> None:
    started = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    finished = datetime(2024, 5, 1, 12, 5, 0, tzinfo=UTC)
    store.create_run("run-1", "/repo", "abc", "main", "auto", "{}", 1, 2.0, "h", started_at=started)
    sessions = [
        _result(
            "parser-1a2b3c", image="agentrt/base:latest", image_digest="sha256:ff",
            base_commit="abc", head_commit="def", status=SessionStatus.SUCCEEDED, exit_code=0,
            started_at=started, finished_at=finished, duration_s=299.9,
            peak_memory_bytes=10 << 20, cpu_seconds=1.25, disk_used_bytes=4096,
            merge=MergeInfo(status="conflicts", conflicts=[Conflict(path="src/x.py")]),
            warnings=["slow"],
        ),
        _result("lexer-000000", status=SessionStatus.OOM_KILLED, exit_code=137),
    ]
    for result in sessions:
        store.upsert_session(result, "run-1")
    store.finish_run("run-1", "failed", warnings=["w1"], finished_at=finished)
    expected = RunReport(
        run_id="run-1", repo="/repo", base_commit="abc", target="main", merge="auto",
        started_at=started, finished_at=finished, sessions=sessions, warnings=["w1"],
    )
    report = store.run_report("run-1")
    assert report == expected
    assert report.exit_code() == 1
    with pytest.raises(NotFoundError):
        store.run_report("nope")


def test_interrupted_run_reports_130(store: Store) -> None:
    _run(store)
    store.finish_run("run-1", "interrupted")
    assert store.run_report("run-1").exit_code() == 130
    with pytest.raises(NotFoundError):
        store.finish_run("ghost", "failed")


def test_events_can_be_followed_after_an_id(store: Store) -> None:
    _run(store)
    store.upsert_session(_result("s1"), "run-1")
    first = store.add_event("run-1", "start", "run started")
    second = store.add_event("run-1", "log", "hello", session_id="s1")
    assert second > first
    assert [e.message for e in store.events("run-1")] == ["run started", "hello"]
    assert [e.id for e in store.events(session_id="s1")] == [second]
    assert [e.id for e in store.events(after_id=first)] == [second]
    assert store.events(after_id=second) == []
    assert len(store.events(limit=1)) == 1
    with pytest.raises(NotFoundError):
        store.add_event("ghost", "log", "x")
    with pytest.raises(NotFoundError):
        store.add_event("run-1", "log", "x", session_id="ghost")


def test_samples_in_time_order(store: Store) -> None:
    _run(store)
    store.upsert_session(_result("s1"), "run-1")
    store.add_sample("s1", 200, 2.0, 20, ts=20.0)
    store.add_sample("s1", 100, 1.0, 10, ts=10.0)
    assert [(s.ts, s.memory_bytes) for s in store.samples("s1")] == [(10.0, 100), (20.0, 200)]
    with pytest.raises(NotFoundError):
        store.add_sample("ghost", 1, 1.0, 1)


# -- concurrency -------------------------------------------------------------------------------


def test_threads_share_one_store(store: Store) -> None:
    _run(store)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(50):
                store.add_event("run-1", "log", f"{n}:{i}")
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.events()) == 300


def test_a_briefly_held_write_lock_is_waited_out(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with Store(path) as opened:
        _run(opened)
        holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
        release.start()
        try:
            started = time.monotonic()
            opened.add_event("run-1", "log", "after the lock")
            assert time.monotonic() - started >= 0.3
        finally:
            release.join()
            holder.close()
        assert [e.message for e in opened.events()] == ["after the lock"]


def _writer(path: str, index: int, barrier: Any, errors: Any) -> None:
    try:
        with Store(path) as own:
            sid = f"w{index}"
            own.upsert_session(_result(sid, status=SessionStatus.RUNNING), "run-1")
            barrier.wait()
            for i in range(EVENTS_PER_WRITER):
                own.add_event("run-1", "log", f"{index}:{i}", session_id=sid)
                if i % 50 == 0:
                    own.update_session(sid, deadline=time.time() + i)
    except BaseException as exc:  # the parent asserts on what children report
        errors.put(f"writer {index}: {exc!r}")


def _reader(path: str, barrier: Any, stop: Any, errors: Any, loops: Any) -> None:
    try:
        with Store(path) as own:
            barrier.wait()
            last = 0
            while not stop.is_set():
                own.list_sessions()
                new = own.events(after_id=last)
                if new:
                    last = new[-1].id
                with loops.get_lock():
                    loops.value += 1
    except BaseException as exc:
        errors.put(f"reader: {exc!r}")


@pytest.mark.timeout(180)
def test_many_processes_write_and_read_without_lock_errors(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    with Store(path) as main:
        _run(main)
    ctx = multiprocessing.get_context("spawn")  # never carry a connection across fork()
    barrier = ctx.Barrier(WRITERS + READERS)
    stop = ctx.Event()
    errors = ctx.Queue()
    loops = ctx.Value("i", 0)
    writers = [ctx.Process(target=_writer, args=(path, i, barrier, errors)) for i in range(WRITERS)]
    readers = [
        ctx.Process(target=_reader, args=(path, barrier, stop, errors, loops))
        for _ in range(READERS)
    ]
    for proc in writers + readers:
        proc.start()
    for proc in writers:
        proc.join(150)
    stop.set()
    for proc in readers:
        proc.join(30)
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    assert reported == []
    assert [p.exitcode for p in writers + readers] == [0] * (WRITERS + READERS)
    assert loops.value > 0
    with Store(path) as main:
        events = main.events()
        assert len(events) == WRITERS * EVENTS_PER_WRITER
        assert len({e.id for e in events}) == len(events)
        assert {e.message for e in events} == {
            f"{w}:{i}" for w in range(WRITERS) for i in range(EVENTS_PER_WRITER)
        }


def test_a_large_database_still_checks_runs_and_sessions_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runtime.state.connection

    path = tmp_path / "agentrt" / "state.db"
    with Store(path) as opened:
        _run(opened)
        for i in range(50):
            opened.upsert_session(_result(f"s{i:03d}"), "run-1")
    monkeypatch.setattr(runtime.state.connection, "QUICK_CHECK_FULL_BYTES", 0)  # "large": partial check
    with sqlite3.connect(path) as raw:
        root = raw.execute("SELECT rootpage FROM sqlite_master WHERE name = 'sessions'"
                           ).fetchone()[0]
    with open(path, "r+b") as handle:
        handle.seek((root - 1) * 4096)
        handle.write(b"\xa5" * 4096)
    with pytest.raises(StateDamagedError, match="agentrt gc --repair-state"):
        Store(path)
