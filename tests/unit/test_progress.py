"""The live view: usage against limits, last output line, radar warnings; plain lines otherwise."""

from __future__ import annotations

import io

from rich.console import Console

from runtime.cli.live_view import ProgressView
from runtime.config import ResourceLimits
from runtime.models import LiveStat, SessionResult, SessionStatus, utcnow


def render(view: ProgressView) -> str:
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(view._table())
    return console.export_text()


def test_live_table_shows_usage_against_limits_and_the_last_line() -> None:
    view = ProgressView(io.StringIO(), total=2, live=False)
    result = SessionResult(id="a-123456", task_id="a", branch="agent/a/123456",
                           status=SessionStatus.RUNNING, started_at=utcnow())
    view("running", result)
    limits = ResourceLimits(memory_mb=256, disk_mb=64, time_seconds=60)
    view.live_stats = lambda: {"a": LiveStat(5 * 1048576, 1.0, 40 * 1024, limits,
                                             "[red]step 3[/red] of a")}
    text = render(view)
    assert "5M/256M" in text and "40K/64M" in text and "/60s" in text
    assert "[red]step 3[/red] of a" in text  # agent output is shown, never read as markup
    assert "running 1 / queued 1" in text


def test_radar_warning_is_shown_once_and_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    view = ProgressView(out, total=2, live=False)
    message = "conflict radar: a and b both changed README.md"
    for task in ("a", "b"):
        view("radar", SessionResult(id=f"{task}-1", task_id=task, branch="",
                                    status=SessionStatus.RUNNING, warnings=[message]))
    assert out.getvalue().count(message) == 1
    assert "\x1b[" not in out.getvalue()
    assert message in render(view)
