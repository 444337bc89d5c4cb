"""What the live view shows a user at any terminal width: the run id, whole states, finished
rows' reasons and last lines, a visible stopping state; ``ps`` names runs; ``logs`` resolves a
prefix to the live or latest session."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import textwrap
import time
from fcntl import ioctl
from pathlib import Path

import pytest
from rich.console import Console

from runtime.cli.inspect import ps_table
from runtime.cli.live_view import ProgressView
from runtime.cli.lookup import resolve_session
from runtime.config import ResourceLimits
from runtime.errors import NotFoundError
from runtime.models import LiveStat, SessionResult, SessionStatus, utcnow
from runtime.state.store import Store

RUN = "r20261127-205843-8358"
LIMITS = ResourceLimits(memory_mb=1024, disk_mb=2048, time_seconds=1800)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def session(task: str, status: SessionStatus, **fields: object) -> SessionResult:
    return SessionResult(id=f"{task}-4db5ce", task_id=task, branch=f"agent/{task}/4db5ce",
                         status=status, started_at=utcnow(), **fields)


def busy_view() -> ProgressView:
    """A run of four: two running (one with a long output line), one OOM-killed, one failed."""
    view = ProgressView(io.StringIO(), total=5, live=False, run_id=RUN)
    view.limits = {t: LIMITS for t in ("format-config", "write-docs", "memory-hog", "add-tests")}
    view.final_line = lambda r: {"memory-hog": "allocating block 812",
                                 "add-tests": "FAILED test_parse (1 of 3)"}.get(r.task_id, "")
    running = [session("format-config", SessionStatus.RUNNING),
               session("write-docs", SessionStatus.RUNNING)]
    for r in running:
        view("running", r)
    view.live_stats = lambda: {
        "format-config": LiveStat(5 << 20, 1.0, 40 << 10, LIMITS,
                                  "pretty-printing config.json " + "and more " * 20),
        "write-docs": LiveStat(9 << 20, 1.0, 41 << 10, LIMITS, "pydoc calc"),
    }
    view("finished", session("memory-hog", SessionStatus.OOM_KILLED, duration_s=0.6,
                             reason="out of memory at memory_mb=1024"))
    view("finished", session("add-tests", SessionStatus.FAILED, duration_s=3.0, exit_code=1,
                             reason="exit code 1"))
    return view


def shown(view: ProgressView, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, record=True, force_terminal=True)
    view.console = console
    console.print(view._table())
    return console.export_text()


@pytest.mark.parametrize("width", [80, 100, 200])
def test_status_column_is_whole_and_the_run_id_is_in_the_header_at_any_width(width: int) -> None:
    text = shown(busy_view(), width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), text
    assert f"agentrt run {RUN}" in lines[0]
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in (
        "format-config", "write-docs", "memory-hog", "add-tests")}
    assert len(rows) == 4, text
    for task, state in (("format-config", "running"), ("write-docs", "running"),
                        ("memory-hog", "oom_killed"), ("add-tests", "failed")):
        assert re.search(rf"\s{state}\s", rows[task]), (width, rows[task])
    assert "ru…" not in text and "oom_k…" not in text


@pytest.mark.parametrize("width", [80, 200])
def test_finished_rows_keep_their_reason_and_last_output_line(width: int) -> None:
    text = shown(busy_view(), width)
    hog = next(line for line in text.splitlines() if line.startswith("memory-hog"))
    tests = next(line for line in text.splitlines() if line.startswith("add-tests"))
    if width >= 200:
        assert "out of memory at memory_mb=1024: allocating block 812" in hog
        assert "exit code 1: FAILED test_parse (1 of 3)" in tests
        assert "/1800s" in hog and "/1024M" in hog  # limits stay beside the numbers
    else:
        assert "out of memory" in hog
        assert "exit code 1: FAILED" in tests


def test_a_stopping_state_shows_after_a_cancel_event_and_forced_after_the_second() -> None:
    view = busy_view()
    assert "stopping" not in shown(view, 80)
    view.stop_requested(forced=False)
    view("stopping", session("format-config", SessionStatus.RUNNING))
    text = shown(view, 80)
    assert "stopping (Ctrl-C again to force)" in text
    row = next(line for line in text.splitlines() if line.startswith("format-config"))
    assert re.search(r"\sstopping\s", row), row
    other = next(line for line in text.splitlines() if line.startswith("write-docs"))
    assert re.search(r"\srunning\s", other)  # only the sessions told to stop
    view.stop_requested(forced=True)
    assert "stopping (forced)" in shown(view, 80)
    view("finished", session("format-config", SessionStatus.CANCELLED,
                             reason="stopped on request"))
    row = next(line for line in shown(view, 80).splitlines() if line.startswith("format-config"))
    assert re.search(r"\scancelled\s", row) and "stopped on request" in row


def test_a_stop_from_another_terminal_marks_rows_without_a_ctrl_c() -> None:
    view = busy_view()
    view("stopping", session("write-docs", SessionStatus.RUNNING))
    assert "stopping: a stop was requested" in shown(view, 120)


def test_plain_lines_name_the_run_and_the_stop() -> None:
    out = io.StringIO()
    view = ProgressView(out, total=1, live=False, run_id=RUN)
    with view:
        view.stop_requested(forced=False)
        view("stopping", session("a", SessionStatus.RUNNING))
        view.stop_requested(forced=True)
    lines = out.getvalue().splitlines()
    assert f"run {RUN} (agentrt ps, agentrt stop {RUN})" in lines[0]
    assert "(Ctrl-C again to force)" in lines[1] and lines[2].endswith("a                    "
                                                                        "stopping")
    assert lines[3].endswith("(forced)")


def test_agent_text_in_rows_is_shown_escaped() -> None:
    view = busy_view()
    view.final_line = lambda r: "\x1b]0;owned\x07[bold]x[/bold]\nforged"
    view("finished", session("evil", SessionStatus.FAILED, reason="exit code 2"))
    text = shown(view, 200)
    assert "\x1b]0" not in text and "\\x1b]0;owned\\x07[bold]x[/bold]\\nforged" in text


def test_live_view_on_a_real_pseudo_terminal_of_100_columns(tmp_path: Path) -> None:
    # The view decides on its own that stderr is a terminal and sizes itself from it.
    script = tmp_path / "view.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from runtime.cli.live_view import ProgressView
        from runtime.config import ResourceLimits
        from runtime.models import LiveStat, SessionResult, SessionStatus, utcnow
        lim = ResourceLimits(memory_mb=256, disk_mb=64, time_seconds=60)
        view = ProgressView(sys.stderr, total=2, run_id="{RUN}")
        assert view.live_mode
        a = SessionResult(id="a-123456", task_id="a", branch="b", status="running",
                          started_at=utcnow())
        view.live_stats = lambda: {{"a": LiveStat(5 << 20, 1.0, 1 << 20, lim, "step 3")}}
        with view:
            view("running", a)
            view("finished", a.model_copy(update={{"status": SessionStatus.OOM_KILLED,
                                                    "id": "b-123456", "task_id": "b",
                                                    "reason": "out of memory"}}))
            time.sleep(0.7)
            view.stop_requested(forced=False)
            view("stopping", a)
            time.sleep(0.7)
    """))
    main, child = pty.openpty()
    ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen([sys.executable, str(script)], stdin=child, stdout=child,
                            stderr=child, env=env, close_fds=True)
    os.close(child)
    data = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the child closed its side
                break
            if not chunk:
                break
            data += chunk
        elif proc.poll() is not None:
            break
    os.close(main)
    assert proc.wait(timeout=10) == 0, data.decode(errors="replace")
    text = ANSI.sub("", data.decode(errors="replace"))
    assert f"agentrt run {RUN}" in text
    assert "stopping (Ctrl-C again to force)" in text
    assert re.search(r"^b\s.*\soom_killed\s", text, re.M), text
    assert re.search(r"^a\s.*\sstopping\s", text, re.M), text
    assert all(len(line) <= 100 for line in text.replace("\r", "\n").splitlines())


def test_ps_table_names_each_sessions_run() -> None:
    entry = {"id": "a-123456", "run_id": RUN, "task_id": "a", "status": "running",
             "branch": "agent/a/123456", "started_at": None, "duration_s": 1.0,
             "exit_code": None, "owner_alive": True, "work": "none", "kept_bytes": 0}
    console = Console(file=io.StringIO(), width=100, record=True)
    console.print(ps_table([entry]))
    header, row = console.export_text().splitlines()[:2]
    assert header.split()[:4] == ["session", "run", "task", "state"]
    assert RUN in row and "running" in row


def _store_with_two_runs(tmp_path: Path, first: SessionStatus) -> Store:
    store = Store(tmp_path / "state.db")
    for run_id, session_id, status in (("r1", "lint-aaaaaa", first),
                                       ("r2", "lint-bbbbbb", SessionStatus.SUCCEEDED)):
        store.create_run(run_id, "/repo", "c" * 40, "main", "review", "{}", 1, 1.0, "host")
        store.upsert_session(SessionResult(id=session_id, task_id="lint", branch="",
                                           status=status), run_id)
        time.sleep(0.01)
    return store


def test_a_prefix_names_the_running_session_before_the_latest_runs(tmp_path: Path) -> None:
    with _store_with_two_runs(tmp_path, SessionStatus.RUNNING) as store:
        assert resolve_session(store, "lint").id == "lint-aaaaaa"  # live in the older run
        assert resolve_session(store, "lint-b").id == "lint-bbbbbb"  # unique prefix wins


def test_a_prefix_names_the_latest_runs_session_when_none_runs(tmp_path: Path) -> None:
    with _store_with_two_runs(tmp_path, SessionStatus.FAILED) as store:
        assert resolve_session(store, "lint").id == "lint-bbbbbb"
        store.upsert_session(SessionResult(id="lint-cccccc", task_id="lint", branch=""), "r2")
        store.upsert_session(SessionResult(id="lint-dddddd", task_id="lint", branch=""), "r2")
        with pytest.raises(NotFoundError, match="ambiguous: matches lint-cccccc, lint-dddddd"):
            resolve_session(store, "lint")  # two live ones: no guess
        with pytest.raises(NotFoundError, match="no session matches 'nope'"):
            resolve_session(store, "nope")


@pytest.mark.parametrize("width", [80, 100, 200])
def test_queued_tasks_are_listed_with_what_they_wait_for(width: int) -> None:
    view = busy_view()
    view.tasks = {"format-config": [], "write-docs": [], "memory-hog": [], "add-tests": [],
                  "publish": ["format-config", "write-docs"], "lint": []}
    text = shown(view, width)
    rows = {line.split()[0]: line for line in text.splitlines() if line.split()}
    assert re.search(r"\squeued\s", rows["publish"]) and re.search(r"\squeued\s", rows["lint"])
    if width >= 100:
        assert "waits for format-config, write-docs" in rows["publish"]
        assert "waits for a slot" in rows["lint"]


def _finished_report(width: int) -> str:
    from runtime.cli.live_view import summary_table
    from runtime.models import MergeInfo, RunReport

    sessions = [session(task, status, duration_s=1.5, reason=reason,
                        merge=MergeInfo(status=merge))
                for task, status, merge, reason in (
                    ("refactor-the-long-named-parser", SessionStatus.SUCCEEDED,
                     "not_attempted", None),
                    ("memory-hog", SessionStatus.OOM_KILLED, "not_attempted",
                     "out of memory at memory_mb=128"),
                    ("docs", SessionStatus.SUCCEEDED, "merged", None))]
    report = RunReport(run_id=RUN, repo="/src/app", base_commit="c" * 40, target="main",
                       merge="review", started_at=utcnow(), sessions=sessions)
    console = Console(file=io.StringIO(), width=width, record=True)
    console.print(summary_table(report))
    return console.export_text()


@pytest.mark.parametrize("width", [80, 100, 200])
def test_final_table_never_cuts_the_task_status_or_merge_and_shows_the_branch_hex(
    width: int,
) -> None:
    text = _finished_report(width)
    assert all(len(line) <= width for line in text.splitlines()), text
    for task, status, merge in (("refactor-the-long-named-parser", "succeeded", "not_attempted"),
                                ("memory-hog", "oom_killed", "not_attempted"),
                                ("docs", "succeeded", "merged")):
        row = next(line for line in text.splitlines() if line.startswith(task))
        assert f" {status} " in row and row.rstrip().endswith(merge) and "4db5ce" in row
    assert "branches: agent/<task>/<hex>" in text
    assert ("cpu s" in text) == (width >= 200) and "time" in text


def test_ps_never_shows_a_negative_duration() -> None:
    entry = {"id": "a-123456", "run_id": RUN, "task_id": "a", "status": "succeeded",
             "branch": "agent/a/123456", "started_at": None, "duration_s": -0.04,
             "exit_code": 0, "owner_alive": None, "work": "home", "kept_bytes": 0}
    console = Console(file=io.StringIO(), width=80, record=True)
    console.print(ps_table([entry]))
    row = console.export_text().splitlines()[1]
    assert "0.0s" in row and "-0.0s" not in row
