"""Live progress of a run on stderr: a rich live table on a terminal, plain lines otherwise.

The live table's header names the run (``agentrt stop``, ``report`` and ``merge`` need its id)
and, after Ctrl-C, says that the run is stopping and how to force it. Columns are fitted to the
terminal: the state column is never cut, numbers are shown whole or not at all (tokens, cpu,
session, disk, memory and time go, in that order, while the rest cannot fit), and the text
columns share what is left, the last output giving way first. Finished rows keep their
reason and last output line, and (for an agent preset) the tokens and cost its CLI reported;
the final summary adds the CLI's version and the run's totals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.table import Table
from rich.text import Text

from runtime.config import ResourceLimits
from runtime.models import LiveStat, RunReport, SessionResult, SessionStatus
from runtime.run.usage import format_usage, total_usage
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
    SessionStatus.PREPARED: "dim cyan",
}

#: The coordinator's listener event for a session being stopped (SIGTERM sent, grace running).
STOPPING = "stopping"
GATING = "gating"


def _mb(value: int) -> str:
    if not value:
        return "-"
    return f"{value / 1048576:.0f}M" if value >= 1048576 else f"{value / 1024:.0f}K"


@dataclass
class _Column:
    """One column of the live table: its cells (plain text) and how it gives way on a narrow
    terminal. ``minimum`` > 0: a text column cut down to it at most (with an ellipsis);
    ``minimum`` 0: never cut, shown whole or (``drop`` > 0, in that order) not at all."""

    header: str
    cells: list[str]
    minimum: int = 0
    cap: int = 1000
    drop: int = 0

    @property
    def natural(self) -> int:
        return min(max([len(self.header), *(len(c) for c in self.cells)]), self.cap)

    @property
    def least(self) -> int:
        return min(self.minimum, self.natural) if self.minimum else self.natural


class ProgressView:
    """Receives coordinator events (a listener) and shows them."""

    def __init__(self, stream: IO[str], total: int, live: bool | None = None,
                 run_id: str = "") -> None:
        self.console = Console(file=stream, stderr=True)
        self.total = total
        self.run_id = run_id
        self.live_mode = self.console.is_terminal if live is None else live
        self.rows: dict[str, SessionResult] = {}
        self.warnings: list[str] = []
        self.live_stats: Callable[[], dict[str, LiveStat]] = dict
        #: Each task's limits, for rows that finished before the first live reading.
        self.limits: dict[str, ResourceLimits] = {}
        #: Every task of the run and its dependencies: tasks not started yet are shown queued.
        self.tasks: dict[str, list[str]] = {}
        #: The last output line of a finished session (the CLI reads its saved log).
        self.final_line: Callable[[SessionResult], str] = lambda result: ""
        self._cpu_seen: dict[str, tuple[float, float]] = {}
        self._seen: dict[str, LiveStat] = {}  # the last numbers of each session, kept once done
        self._final_lines: dict[str, str] = {}
        self._stopping: set[str] = set()
        self._gating: set[str] = set()
        self._stop_requests = 0  # Ctrl-C / SIGTERM seen by the CLI
        # Re-entrant: the CLI's signal handler may run while the main thread is inside a call.
        self._lock = threading.RLock()
        self._live: Live | None = None
        self._t0 = time.monotonic()

    def __enter__(self) -> ProgressView:
        if self.live_mode:
            self._live = Live(self._table(), console=self.console, refresh_per_second=2,
                              get_renderable=self._table)
            self._live.__enter__()
        elif self.run_id:
            self._line(f"run {self.run_id} (agentrt ps, agentrt stop {self.run_id})")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def stop_requested(self, forced: bool) -> None:
        """The user asked the run to stop (Ctrl-C, SIGTERM); ``forced`` from the second one."""
        with self._lock:
            self._stop_requests = max(self._stop_requests + 1, 2 if forced else 1)
        if not self.live_mode:
            self._line("stopping every session; work is kept on its branch"
                       + (" (forced)" if forced else " (Ctrl-C again to force)"), "yellow")
        elif self._live is not None:
            self._live.refresh()

    def __call__(self, event: str, result: SessionResult) -> None:
        with self._lock:
            self.rows[result.task_id] = result
            if event == STOPPING:
                self._stopping.add(result.task_id)
            if event == GATING:  # its merge gate runs (after the sessions, before it lands)
                self._gating.add(result.task_id)
        if event == "radar":
            warning = result.warnings[-1]
            with self._lock:
                if warning in self.warnings:  # both sessions of a pair report the same line
                    return
                self.warnings.append(warning)
            if not self.live_mode:
                self._line(f"warning: {warning}", "yellow")
            return
        if event == "finished" and result.started_at is not None:
            try:
                line = self.final_line(result)
            except Exception:  # noqa: BLE001 - the view never takes the run down
                line = ""
            if line:
                with self._lock:
                    self._final_lines[result.task_id] = line
        if not self.live_mode:
            detail = f" ({result.reason})" if event == "finished" and result.reason else ""
            state = result.status.value if event == "finished" else event
            self._line(f"{result.task_id:<20} {state}{detail}")

    def _line(self, text: str, style: str | None = None) -> None:
        # One record per line: nothing an agent wrote may start a line of its own.
        self.console.print(terminal_safe(f"{time.strftime('%H:%M:%S')} {text}"), style=style,
                           markup=False, highlight=False, soft_wrap=True)

    # -- the live table ----------------------------------------------------------------------

    def _table(self) -> RenderableType:
        """The header (run id, counts, stopping state), the table fitted to the terminal, and
        the latest radar warnings."""
        with self._lock:
            rows = list(self.rows.values())
            warnings = self.warnings[-3:]
        finished = sum(1 for r in rows if r.status.is_final)
        running = sum(1 for r in rows if r.status is SessionStatus.RUNNING)
        queued = self.total - finished - running
        header = Text(f"agentrt run {terminal_safe(self.run_id or '?')}", style="bold")
        header.append(f"  done {finished} / running {running} / queued {queued}"
                      f"  ({time.monotonic() - self._t0:.0f}s)", style="")
        parts: list[RenderableType] = [header]
        stopping = self._stopping_line()
        if stopping:
            parts.append(Text(stopping, style="bold yellow"))
        parts.append(self._grid(rows, self.console.width))
        parts += [Text(f"! {terminal_safe(w)}", style="yellow", overflow="ellipsis",
                       no_wrap=True) for w in warnings]
        return Group(*parts)

    def _stopping_line(self) -> str:
        if self._stop_requests >= 2:
            return "stopping (forced): containers are killed now; work is kept on its branch"
        if self._stop_requests == 1:
            return ("stopping (Ctrl-C again to force): each session gets SIGTERM, then SIGKILL "
                    "after its grace; work is kept on its branch")
        if self._stopping:
            return "stopping: a stop was requested; work is kept on its branch"
        return ""

    def _grid(self, rows: list[SessionResult], width: int) -> Table:
        try:
            live = self.live_stats()
        except Exception:  # noqa: BLE001 - the view never takes the run down
            live = {}
        cells = [self._row(r, live.get(r.task_id)) for r in rows]
        cells += self._queued_rows({r.task_id: r for r in rows})
        layout = [("task", 8, 24, 0), ("session", 0, 0, 3), ("state", 0, 0, 0),
                  ("time", 0, 0, 6), ("cpu%", 0, 0, 2), ("memory", 0, 0, 5), ("disk", 0, 0, 4),
                  ("tokens", 0, 0, 1), ("last output", 20, 0, 0)]
        if not any(r.usage for r in rows):  # known once an agent preset's session ends
            layout.pop(-2)
            cells = [row[:-2] + row[-1:] for row in cells]
        columns = [_Column(name, [row[n].plain for row in cells], minimum, cap or 1000, drop)
                   for n, (name, minimum, cap, drop) in enumerate(layout)]
        shown = _fit(columns, width)
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
        for col, col_width in shown:
            table.add_column(col.header, width=col_width, no_wrap=True, overflow="ellipsis")
        keep = [n for n, col in enumerate(columns) if any(c is col for c, _ in shown)]
        for row in cells:
            table.add_row(*(row[n] for n in keep))
        return table

    def _queued_rows(self, started: dict[str, SessionResult]) -> list[list[Text]]:
        """A dimmed row for each task not started yet, saying what it waits for."""
        queued = []
        for task_id, deps in self.tasks.items():
            if task_id in started:
                continue
            pending = [d for d in deps if d not in started
                       or started[d].status is not SessionStatus.SUCCEEDED]
            why = f"waits for {', '.join(pending)}" if pending else "waits for a slot"
            queued.append([Text(terminal_safe(task_id), "dim"), Text("-", "dim"),
                           Text("queued", "dim"), *(Text("") for _ in range(5)),
                           Text(terminal_safe(why), "dim")])
        return queued

    def _row(self, r: SessionResult, stat: LiveStat | None) -> list[Text]:
        """The row's cells, agent-influenced text made safe."""
        elapsed = r.duration_s if r.duration_s is not None else (
            (time.time() - r.started_at.timestamp()) if r.started_at else 0.0)
        with self._lock:
            if stat is not None:
                self._seen[r.task_id] = stat
            seen = self._seen.get(r.task_id)
            stopping = r.task_id in self._stopping
            gating = r.task_id in self._gating
            final_line = self._final_lines.get(r.task_id, "")
        state, style = r.status.value, STATUS_STYLE[r.status]
        if stopping and not r.status.is_final:
            state, style = STOPPING, "bold yellow"
        if gating:
            state, style = GATING, "bold cyan"
        lim = seen.limits if seen is not None else self.limits.get(r.task_id)
        time_cell = f"{elapsed:.0f}s" + (f"/{lim.time_seconds}s" if lim else "")
        cpu = ""
        if stat is not None:
            now = time.monotonic()
            before = self._cpu_seen.get(r.id)
            self._cpu_seen[r.id] = (now, stat.cpu_seconds)
            if before is not None and now > before[0]:
                cpu = f"{100 * (stat.cpu_seconds - before[1]) / (now - before[0]):.0f}"
        if stat is not None:
            memory, disk = stat.memory_bytes, stat.disk_bytes
        else:
            memory, disk = r.peak_memory_bytes, r.disk_used_bytes
        memory_cell = _mb(memory) + (f"/{lim.memory_mb}M" if lim else "")
        disk_cell = _mb(disk) + (f"/{lim.disk_mb}M" if lim else "")
        last = stat.last_line if stat is not None else (final_line or (
            seen.last_line if seen is not None else ""))
        last_style = ""
        if r.status.is_final and r.reason:
            last = f"{r.reason}: {last}" if last else r.reason
            last_style = "red" if r.status.is_failure else "yellow"
        return [Text(terminal_safe(r.task_id)), Text(terminal_safe(r.id)), Text(state, style),
                Text(time_cell), Text(cpu), Text(memory_cell), Text(disk_cell),
                Text(format_usage(r.usage)), Text(terminal_safe(last), last_style)]


def _fit(columns: list[_Column], width: int) -> list[tuple[_Column, int]]:
    """Which columns to show and how wide, so the table fits ``width`` terminal cells.

    Columns without a minimum (the state and the numbers) are shown whole or dropped, in
    their ``drop`` order, while the rest cannot fit whole beside the last column at its
    minimum; the state is never dropped. The text columns then share what is left: the last
    one (last output) gives way first, the task id only on a very narrow terminal.
    """
    shown = list(columns)

    def chrome() -> int:  # two cells of padding per column, one divider between, no edges
        return 3 * len(shown) - 3

    # Numbers go before any text is cut, the last output down to its minimum aside.
    for col in sorted((c for c in columns if c.drop), key=lambda c: c.drop):
        if sum(c.natural for c in shown[:-1]) + shown[-1].least + chrome() <= width:
            break
        shown.remove(col)
    widths = {id(c): max(c.natural, 1) for c in shown}
    excess = sum(widths.values()) + chrome() - width
    for col in reversed(shown):
        if excess <= 0:
            break
        if col.minimum:
            give = min(excess, widths[id(col)] - col.least)
            widths[id(col)] -= give
            excess -= give
    return [(c, widths[id(c)]) for c in shown]


class _Summary:
    """The final summary, laid out when it is printed: fitted to the console's width."""

    def __init__(self, report: RunReport) -> None:
        self.report = report

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield summary_table(self.report, options.max_width)


def summary_table(report: RunReport, width: int | None = None) -> RenderableType:
    """The final summary of a run; the run's warnings below it. Every string is made safe.

    Fitted to ``width`` terminal cells (default: the console's, when printed): the task id is
    cut last and to 8 cells at most, the state and merge columns never; the numbers go in the
    order cpu, disk, exit, memory, time while the rest cannot fit. The branch is shown by its
    hex suffix (it is ``agent/<task>/<hex>``)."""
    if width is None:
        return _Summary(report)
    agents = any(s.usage or s.cli_version for s in report.sessions)
    rows: list[tuple[list[str], str, str]] = []  # plain cells, the status's style, its reason
    for s in report.sessions:
        merge: str = s.merge.status
        if s.merge.conflicts:
            merge += ": " + ", ".join(sorted({c.path for c in s.merge.conflicts}))
        gate = s.merge.gate
        if gate is not None:
            merge += f" (gate {gate.verdict}" + (f": {gate.reason}" if gate.reason else "") + ")"
        reason = s.reason if s.reason and s.status is not SessionStatus.SUCCEEDED else ""
        if s.merge.reason:  # not_merged: why, and what brings the work home
            reason = f"{reason}\n{s.merge.reason}" if reason else s.merge.reason
        hex_ = s.branch.rsplit("/", 1)[-1] if s.branch else "-"
        cells = [terminal_safe(s.task_id), terminal_safe(hex_),
                 s.status.value, "-" if s.exit_code is None else str(s.exit_code),
                 "-" if s.duration_s is None else f"{max(s.duration_s, 0):.1f}s",
                 _mb(s.peak_memory_bytes), f"{s.cpu_seconds:.2f}", _mb(s.disk_used_bytes),
                 terminal_safe(merge)]
        if agents:
            cells += [terminal_safe(s.cli_version or "-"), format_usage(s.usage) or "-"]
        rows.append((cells, STATUS_STYLE[s.status], terminal_safe(reason)))
    layout = [("task", 8, 40, 0), ("hex", 0, 0, 0), ("status", 0, 0, 0), ("exit", 0, 0, 3),
              ("time", 0, 0, 5), ("peak mem", 0, 0, 4), ("cpu s", 0, 0, 1), ("disk", 0, 0, 2),
              ("merge", len("not_attempted"), 60, 0)]
    if agents:
        layout[-1:-1] = [("cli version", 0, 0, 6), ("usage", 0, 0, 7)]
        for cells, _, _ in rows:  # merge last: the column that gives way first
            cells.append(cells.pop(8))
    columns = [_Column(name, [cells[n] for cells, _, _ in rows], minimum, cap or 1000, drop)
               for n, (name, minimum, cap, drop) in enumerate(layout)]
    shown = _fit(columns, width)
    keep = [n for n, col in enumerate(columns) if any(c is col for c, _ in shown)]
    # The live table's frame (no edges), which _fit counts cells for.
    table = Table(title=markup_safe(f"run {report.run_id}  base {report.base_commit[:10]}  "
                                    f"merge={report.merge} target={report.target}"),
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col, col_width in shown:
        wraps = col.header == "status"  # its reason wraps under it
        table.add_column(col.header, width=col_width, no_wrap=not wraps,
                         overflow="fold" if wraps else "ellipsis")
    for cells, style, reason in rows:
        status = Text(cells[2], style)
        if reason:
            status.append("\n" + reason, "dim")
        out = [status if n == 2 else Text(cells[n]) for n in keep]
        table.add_row(*out)
    notes = [f"[yellow]warning: {markup_safe(w)}[/]" for w in report.warnings]
    total = total_usage(s.usage for s in report.sessions)
    if total is not None and len(report.sessions) > 1:
        notes.insert(0, f"usage of the run: {format_usage(total)}")
    if report.merge_refused is not None:
        notes.insert(0, f"[red]not merged: {markup_safe(report.merge_refused)}[/]")
    elif report.auto_merge_missed and not report.interrupted:
        notes.insert(0, "[red]not merged: merge = \"auto\" left work on the branches[/]")
    notes.append("[dim]branches: agent/<task>/<hex>[/]")
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table
