"""Live progress of a run on stderr: a rich live table on a terminal, plain lines otherwise."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import IO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from runtime.models import LiveStat, RunReport, SessionResult, SessionStatus
from runtime.text import markup_safe, terminal_safe

STATUS_STYLE = {
    SessionStatus.SUCCEEDED: "green",
    SessionStatus.FAILED: "red",
    SessionStatus.OOM_KILLED: "red",
    SessionStatus.TIMED_OUT: "red",
    SessionStatus.DISK_FULL: "red",
    SessionStatus.CRASHED: "red",
    SessionStatus.CANCELLED: "yellow",
    SessionStatus.SKIPPED: "yellow",
    SessionStatus.RUNNING: "cyan",
    SessionStatus.PENDING: "dim",
}


def _mb(value: int) -> str:
    if not value:
        return "-"
    return f"{value / 1048576:.0f}M" if value >= 1048576 else f"{value / 1024:.0f}K"


class ProgressView:
    """Receives coordinator events (a listener) and shows them."""

    def __init__(self, stream: IO[str], total: int, live: bool | None = None) -> None:
        self.console = Console(file=stream, stderr=True)
        self.total = total
        self.live_mode = self.console.is_terminal if live is None else live
        self.rows: dict[str, SessionResult] = {}
        self.warnings: list[str] = []
        self.live_stats: Callable[[], dict[str, LiveStat]] = dict
        self._cpu_seen: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._t0 = time.monotonic()

    def __enter__(self) -> ProgressView:
        if self.live_mode:
            self._live = Live(self._table(), console=self.console, refresh_per_second=2,
                              get_renderable=self._table)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def __call__(self, event: str, result: SessionResult) -> None:
        with self._lock:
            self.rows[result.task_id] = result
        if event == "radar":
            warning = result.warnings[-1]
            with self._lock:
                if warning in self.warnings:  # both sessions of a pair report the same line
                    return
                self.warnings.append(warning)
            if not self.live_mode:
                self.console.print(f"{time.strftime('%H:%M:%S')} warning: "
                                   f"{terminal_safe(warning)}",
                                   style="yellow", markup=False, highlight=False, soft_wrap=True)
            return
        if not self.live_mode:
            stamp = time.strftime("%H:%M:%S")
            detail = f" ({result.reason})" if event == "finished" and result.reason else ""
            state = result.status.value if event == "finished" else event
            # One record per line: nothing an agent wrote may start a line of its own.
            self.console.print(terminal_safe(f"{stamp} {result.task_id:<20} {state}{detail}"),
                               markup=False, highlight=False, soft_wrap=True)

    def _table(self) -> Table:
        with self._lock:
            rows = list(self.rows.values())
        finished = sum(1 for r in rows if r.status.is_final)
        running = sum(1 for r in rows if r.status is SessionStatus.RUNNING)
        queued = self.total - finished - running
        table = Table(title=f"agentrt  done {finished} / running {running} / queued {queued}"
                      f"  ({time.monotonic() - self._t0:.0f}s)", expand=False)
        for col in ("task", "session", "state", "elapsed / limit", "cpu %", "memory / limit",
                    "disk / limit", "last output"):
            table.add_column(col, overflow="ellipsis", no_wrap=True)
        try:
            live = self.live_stats()
        except Exception:  # noqa: BLE001 - the view never takes the run down
            live = {}
        for r in rows:
            table.add_row(*self._row(r, live.get(r.task_id)))
        for warning in self.warnings[-3:]:
            table.add_row("[yellow]![/]", "", "", "", "", "", "",
                          f"[yellow]{markup_safe(warning)}[/]")
        return table

    def _row(self, r: SessionResult, stat: LiveStat | None) -> list[str]:
        elapsed = r.duration_s if r.duration_s is not None else (
            (time.time() - r.started_at.timestamp()) if r.started_at else 0.0)
        state = f"[{STATUS_STYLE[r.status]}]{r.status.value}[/]"
        if stat is None:
            return [markup_safe(r.task_id), markup_safe(r.id), state, f"{elapsed:.0f}s", "",
                    _mb(r.peak_memory_bytes), _mb(r.disk_used_bytes), ""]
        now = time.monotonic()
        before = self._cpu_seen.get(r.id)
        self._cpu_seen[r.id] = (now, stat.cpu_seconds)
        cpu = ""
        if before is not None and now > before[0]:
            cpu = f"{100 * (stat.cpu_seconds - before[1]) / (now - before[0]):.0f}"
        lim = stat.limits
        return [markup_safe(r.task_id), markup_safe(r.id), state,
                f"{elapsed:.0f}s / {lim.time_seconds}s", cpu,
                f"{_mb(stat.memory_bytes)} / {lim.memory_mb}M",
                f"{_mb(stat.disk_bytes)} / {lim.disk_mb}M", markup_safe(stat.last_line)]


def summary_table(report: RunReport) -> Table:
    """The final summary of a run; the run's warnings below it. Every string is made safe."""
    table = Table(title=markup_safe(f"run {report.run_id}  base {report.base_commit[:10]}  "
                                    f"merge={report.merge} target={report.target}"))
    for col in ("task", "branch", "status", "exit", "time", "peak mem", "cpu s", "disk",
                "merge"):
        table.add_column(col)
    for s in report.sessions:
        merge: str = s.merge.status
        if s.merge.conflicts:
            merge += ": " + ", ".join(sorted({c.path for c in s.merge.conflicts}))
        status = f"[{STATUS_STYLE[s.status]}]{s.status.value}[/]"
        if s.reason and s.status is not SessionStatus.SUCCEEDED:
            status += f"\n[dim]{markup_safe(s.reason)}[/]"
        table.add_row(
            markup_safe(s.task_id), markup_safe(s.branch or "-"), status,
            "-" if s.exit_code is None else str(s.exit_code),
            "-" if s.duration_s is None else f"{s.duration_s:.1f}s", _mb(s.peak_memory_bytes),
            f"{s.cpu_seconds:.2f}", _mb(s.disk_used_bytes), markup_safe(merge),
        )
    notes = [f"[yellow]warning: {markup_safe(w)}[/]" for w in report.warnings]
    if report.merge_refused is not None:
        notes.insert(0, f"[red]not merged: {markup_safe(report.merge_refused)}[/]")
    elif report.auto_merge_missed and not report.interrupted:
        notes.insert(0, "[red]not merged: merge = \"auto\" left work on the branches[/]")
    if notes:
        table.caption = "\n".join(notes)
        table.caption_justify = "left"
    return table
