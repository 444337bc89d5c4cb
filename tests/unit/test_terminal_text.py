"""Text an agent chose (paths, output lines, reasons, warnings) never drives the terminal.

Every view is rendered as a real terminal would receive it (rich with ``force_terminal``), fed
hostile strings: rich markup, OSC/CSI escape sequences, C1 controls, carriage returns, bidi
overrides, undecodable bytes and newlines that would forge a record of their own.
"""

from __future__ import annotations

import codecs
import io
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from runtime.cli.html_report import render_html
from runtime.cli.inspect import _write, ps_table
from runtime.cli.live_view import ProgressView, summary_table
from runtime.cli.main import fail, main
from runtime.config import ResourceLimits
from runtime.models import Conflict, LiveStat, MergeInfo, RunReport, SessionResult, SessionStatus
from runtime.run.radar import Overlap
from runtime.state.store import Store
from runtime.text import markup_safe, terminal_safe

OSC_TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J"
FORGED = "12:00:00 forged               succeeded"
HOSTILE = [
    "a[/b]",
    "[bold red]/x",
    f"t{OSC_TITLE}",
    f"c{CLEAR}",
    f"x\n{FORGED}",
    "ok\rFAKE",
    "c1\x9b2J",
    "bidi\u202eexe.txt",
    "bytes\udcff",
    "tab\there",
    "trailing\\",
]
# Rich's own styling (SGR) is fine; anything else that reaches the terminal is the agent's.
_RICH_SGR = re.compile(r"\x1b\[[0-9;]*m")
_RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def assert_terminal_safe(output: str) -> None:
    """No raw control character outside rich's own styles, and no forged record."""
    raw = _RAW.findall(_RICH_SGR.sub("", output))
    assert not raw, f"raw controls reached the terminal: {raw!r} in {output!r}"
    plain = _RICH_SGR.sub("", output)
    assert not any(line.lstrip("│┃| ").startswith("12:00:00 forged")
                   for line in plain.splitlines()), plain
    assert "\\x1b]0;pwned\\x07" in plain or "pwned" not in plain


def terminal() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=400, color_system="truecolor")


def rendered(renderable: object) -> str:
    console = terminal()
    console.print(renderable)
    file = console.file
    assert isinstance(file, io.StringIO)
    return file.getvalue()


def hostile_session(path: str, index: int = 0, **fields: object) -> SessionResult:
    return SessionResult(
        id=f"s{index}-{path}", task_id=f"t{index}{path}", branch=f"agent/{path}",
        status=SessionStatus.FAILED, reason=f"agent said {path}",
        merge=MergeInfo(status="conflicts", conflicts=[Conflict(path=path, with_branch=path)]),
        warnings=[f"conflict radar: a and b both changed {path}"], **fields)  # type: ignore[arg-type]


def hostile_report(paths: list[str] = HOSTILE) -> RunReport:
    return RunReport(
        run_id="run-1", repo="/repo", base_commit="0" * 40, target="main", merge="review",
        started_at=datetime.now(UTC),
        sessions=[hostile_session(path, i) for i, path in enumerate(paths)],
        warnings=[f"conflict radar: a and b both changed {path}" for path in paths])


# -- the sanitiser itself ----------------------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE)
def test_terminal_safe_leaves_only_printable_text_on_one_line(text: str) -> None:
    safe = terminal_safe(text)
    assert not _RAW.search(safe) and "\n" not in safe
    assert terminal_safe(safe) == safe
    safe.encode("utf-8")  # undecodable bytes no longer break the encoder


def test_controls_are_shown_not_dropped() -> None:
    assert terminal_safe(OSC_TITLE) == "\\x1b]0;pwned\\x07"
    assert terminal_safe("a\nb\r\x9b\u202e\udcff") == "a\\nb\\r\\x9b\\u202e\\udcff"
    assert terminal_safe("a\r\nb\tc\x1b", multiline=True) == "a\nb\tc\\x1b"


@pytest.mark.parametrize("text", HOSTILE)
def test_markup_safe_prints_as_itself_through_rich(text: str) -> None:
    console = Console(file=io.StringIO(), width=400, record=True)
    console.print(f"[yellow]{markup_safe(text)}[/] and [bold]{markup_safe(text)}[/]")
    assert console.export_text().rstrip("\n") == f"{terminal_safe(text)} and {terminal_safe(text)}"


# -- every view --------------------------------------------------------------------------------


def test_summary_table_with_hostile_paths_renders_safely() -> None:
    out = rendered(summary_table(hostile_report()))
    assert_terminal_safe(out)
    plain = _RICH_SGR.sub("", out)
    assert "a[/b]" in plain and "[bold red]/x" in plain
    assert "x\\n12:00:00 forged" in plain
    assert "warning: conflict radar" in plain  # the run's warnings are part of the summary


def test_live_table_with_hostile_output_line_and_warning_renders_safely() -> None:
    view = ProgressView(io.StringIO(), total=len(HOSTILE), live=True)
    limits = ResourceLimits()
    for i, path in enumerate(HOSTILE):
        session = hostile_session(path, i, started_at=datetime.now(UTC))
        session.status = SessionStatus.RUNNING
        view("running", session)
        view("radar", session)
    view.live_stats = lambda: {f"t{i}{p}": LiveStat(1, 1.0, 1, limits, f"out {p}")
                               for i, p in enumerate(HOSTILE)}
    out = rendered(view._table())
    assert_terminal_safe(out)
    assert "out [bold red]/x" in _RICH_SGR.sub("", out)


def test_plain_progress_lines_are_one_record_each() -> None:
    stream = io.StringIO()
    view = ProgressView(stream, total=len(HOSTILE), live=False)
    view.console = Console(file=stream, force_terminal=True, width=80)
    events = 0
    for i, path in enumerate(HOSTILE):
        session = hostile_session(path, i)
        view("starting", session)
        view("finished", session)
        view("radar", session)
        events += 3
    out = stream.getvalue()
    assert_terminal_safe(out)
    # soft_wrap: a long record stays one line, so lines == records.
    assert len(out.splitlines()) == events, out


def test_radar_warning_lines_escape_the_path() -> None:
    stream = io.StringIO()
    view = ProgressView(stream, total=2, live=False)
    view.console = Console(file=stream, force_terminal=True, width=80)
    message = Overlap(f"evil{OSC_TITLE}\n{FORGED}", "a", "b").message()
    view("radar", SessionResult(id="a-1", task_id="a", branch="", warnings=[message]))
    out = stream.getvalue()
    assert_terminal_safe(out)
    assert len(out.splitlines()) == 1


def test_ps_table_renders_hostile_entries_safely() -> None:
    entries = [{"id": s.id, "run_id": "run-1", "task_id": s.task_id, "status": s.status.value,
                "branch": s.branch, "started_at": None, "finished_at": None, "duration_s": 1.0,
                "exit_code": 1, "reason": s.reason, "owner_alive": None}
               for s in hostile_report().sessions]
    out = rendered(ps_table(entries))
    assert_terminal_safe(out)
    assert "t1[bold red]/x" in _RICH_SGR.sub("", out)  # markup shown as itself


def test_report_command_prints_hostile_runs_without_markup_errors(repo: Path) -> None:
    state = repo / ".git" / "agentrt"
    # The store keeps UTF-8: undecodable bytes never get that far.
    hostile = hostile_report([p for p in HOSTILE if "\udcff" not in p])
    with Store(state / "state.db") as store:
        store.create_run("run-1", str(repo), "0" * 40, "main", "review", "{}", 1, 1.0, "host")
        for session in hostile.sessions:
            store.upsert_session(session, "run-1")
        store.finish_run("run-1", "finished", warnings=hostile.warnings)
    result = CliRunner().invoke(main, ["report", "run-1", "--repo", str(repo)])
    assert result.exit_code == 0, result.output
    assert result.exception is None
    assert_terminal_safe(result.output)
    assert "[bold red]/x" in result.output and "a[/b]" in result.output
    as_json = CliRunner().invoke(main, ["report", "run-1", "--json", "--repo", str(repo)])
    assert as_json.exit_code == 0
    assert not _RAW.search(as_json.output)


def test_logs_on_a_terminal_show_escapes_and_keep_lines(capsys: pytest.CaptureFixture[str]) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    _write(f"line one{OSC_TITLE}\r\nline two{CLEAR}\x9b\n".encode(), decoder)
    out = capsys.readouterr().out
    assert out == "line one\\x1b]0;pwned\\x07\nline two\\x1b[2J\\x9b\n"


def test_error_lines_cannot_forge_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        fail(f"cannot merge {OSC_TITLE}\nagentrt: all good")
    err = capsys.readouterr().err
    assert_terminal_safe(err)
    assert all(not line.startswith("agentrt: all good") for line in err.splitlines())


def test_html_report_escapes_markup_controls_and_undecodable_bytes() -> None:
    page = render_html(hostile_report(), {}, {})
    page.encode("utf-8")
    assert "\x1b" not in page and "\x07" not in page and "\x9b" not in page
    assert "<b>" not in page
    assert "a[/b]" in page and "\\x1b]0;pwned\\x07" in page
