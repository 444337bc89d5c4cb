"""A run's report as one self-contained HTML page (``agentrt report RUN --html PATH``).

:func:`render_html` is pure: it takes the report, the resource samples and the manifests and
returns the page. The page fetches nothing: inline CSS, inline SVG, no scripts, no fonts, no
links out, so it can be mailed, archived or opened offline. Every string that comes from a run
(task ids, prompts, reasons, paths, branch names) is written through :func:`html.escape`,
its control characters first shown escaped by :func:`runtime.text.terminal_safe`, because
agents and task files are untrusted.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from typing import TYPE_CHECKING

from runtime.models import Manifest, RunReport, SessionResult, SessionStatus, utcnow
from runtime.text import terminal_safe

if TYPE_CHECKING:
    from runtime.state.store import Sample

__all__ = ["STATUS_COLOR", "Commit", "FileChange", "SessionWork", "TargetStory", "axis_ticks",
           "format_seconds", "render_html"]

STATUS_COLOR: dict[SessionStatus, str] = {SessionStatus(k): v for k, v in {
    "succeeded": "#2f9e61", "failed": "#d6453d", "oom_killed": "#9c3dbf", "timed_out": "#e0821e",
    "disk_full": "#8a5a2b", "crashed": "#8f1d1d", "cancelled": "#b8a22e", "skipped": "#a3a9b3",
    "running": "#3a7bd5", "pending": "#c7ccd4"}.items()}
MERGE_COLOR = {"merged": "#2f9e61", "clean": "#3a7bd5", "conflicts": "#d6453d",
               "not_attempted": "#a3a9b3"}
MIB = 1024 * 1024


@dataclass(frozen=True)
class FileChange:
    """One file a session changed: lines added and deleted (None for a binary file)."""

    path: str
    added: int | None
    deleted: int | None
    old_path: str | None = None  # a rename's former name


@dataclass(frozen=True)
class Commit:
    """One commit on a session's branch, ``base..branch``."""

    commit: str
    subject: str
    author: str = ""


@dataclass
class SessionWork:
    """What a session did, read on the host: its branch against its base, and its output.

    ``more_files`` / ``more_commits`` count what was left out of the lists."""

    files: list[FileChange] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    more_files: int = 0
    more_commits: int = 0
    head: str | None = None


@dataclass
class TargetStory:
    """Where the merges took the target: session ids in the order they landed, and the
    target's commit now (None if unknown)."""

    merged_in_order: list[str] = field(default_factory=list)
    head_now: str | None = None

_CSS = """
:root{--fg:#1d2330;--muted:#667085;--line:#e4e7ec;--bg:#f6f7f9;--card:#fff;--accent:#3a7bd5}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);
font:14px/1.5 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
-webkit-font-smoothing:antialiased}
main{max-width:1100px;margin:0 auto;padding:28px 24px 48px}
code,pre,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;
font-size:12.5px}
h1{font-size:24px;margin:2px 0 10px;font-weight:650;letter-spacing:-.01em}
h2{font-size:16px;margin:0 0 12px;font-weight:650}h3{font-size:15px;margin:0;font-weight:650}
.eyebrow{text-transform:uppercase;letter-spacing:.08em;font-size:11px;color:var(--muted)}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:18px 20px;
margin:16px 0;box-shadow:0 1px 2px rgba(16,24,40,.04)}
.meta{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:8px 24px;
margin:12px 0 0}
.meta div{min-width:0}
.meta dt{font-size:11px;color:var(--muted);text-transform:uppercase;letter-spacing:.06em}
.meta dd{margin:0;overflow-wrap:anywhere}
.pill{display:inline-block;padding:1px 9px;border-radius:999px;font-size:12px;font-weight:600;
color:#fff;white-space:nowrap;vertical-align:middle}
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;font-size:12.5px;color:var(--muted);
margin:4px 0 10px}
.legend span{display:inline-flex;align-items:center;gap:6px}
.sw{width:12px;height:12px;border-radius:3px;display:inline-block}
.dash{width:18px;border-top:2px dashed #b4bac4;display:inline-block}
.counts{margin-top:14px;display:flex;gap:8px;flex-wrap:wrap}
table{border-collapse:collapse;width:100%;font-size:13px}
th{text-align:left;font-weight:600;color:var(--muted);font-size:11.5px;text-transform:uppercase;
letter-spacing:.05em;border-bottom:1px solid var(--line);padding:6px 8px}
td{border-bottom:1px solid var(--line);padding:7px 8px;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr:last-child td{border-bottom:0}
.session-head{display:flex;align-items:center;gap:10px;flex-wrap:wrap}
.reason{color:#b42318;margin:8px 0 0}
.prompt{margin:10px 0 0;padding:8px 12px;border-left:3px solid var(--line);color:#344054;
white-space:pre-wrap;overflow-wrap:anywhere}
.charts{display:grid;grid-template-columns:repeat(3,1fr);gap:16px;margin:14px 0 6px}
.chart-title{font-size:12px;color:var(--muted);margin-bottom:2px}
.cols{display:grid;grid-template-columns:1fr 1.4fr;gap:24px;margin-top:10px}
.cols dl{margin:0;display:grid;grid-template-columns:max-content 1fr;gap:3px 14px}
.cols dt{color:var(--muted)}.cols dd{margin:0;overflow-wrap:anywhere;min-width:0}
pre{background:#f2f4f7;border-radius:6px;padding:8px 10px;margin:0;white-space:pre-wrap;
overflow-wrap:anywhere;max-height:14em;overflow:auto}
ul.conflicts{margin:6px 0 0;padding-left:18px}.warn{color:#b54708}.muted{color:var(--muted)}
a{color:inherit;text-decoration:none;font-weight:600}a:hover{text-decoration:underline}
svg text{font-family:-apple-system,"Segoe UI",Roboto,Arial,sans-serif;font-size:11px}
.ax{fill:#667085}.name{fill:var(--fg);font-size:12.5px}.note{fill:#98a2b3;font-style:italic}
.dur{fill:#475467}.on{fill:#fff}.lim{fill:#d6453d}.refl{fill:#3a7bd5}
.grid{stroke:#eef0f3}.axis{stroke:#c9ced6}.wait{stroke:#b4bac4;stroke-width:1.5;
stroke-dasharray:4 3}.limit{stroke:#d6453d;stroke-dasharray:6 4;stroke-width:1.3}
.ref{stroke:#3a7bd5;stroke-dasharray:2 3;stroke-width:1.5}
.area{fill:#3a7bd5;fill-opacity:.14;stroke:#3a7bd5;stroke-width:1.5;stroke-linejoin:round}
.fill{fill:#3a7bd5;fill-opacity:.12}.peak{fill:#3a7bd5;fill-opacity:.22;stroke:#3a7bd5}.curve{fill:none;stroke:#3a7bd5;stroke-width:1.8;stroke-linejoin:round}
h4{margin:0 0 6px;color:var(--muted);font-size:13px}h4.gap{margin-top:12px}
.work{display:grid;grid-template-columns:1fr 1.4fr;gap:24px;margin-top:10px}
table.files td{padding:2px 6px}.add{color:#2f9e61}ul.commits{margin:0;padding-left:18px}
pre.output{max-height:22em}pre.resolve{background:#fff4e5}ol.merges{margin:6px 0}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:24px}
"""


def _e(value: object) -> str:
    """Escape any value for HTML text and attribute positions.

    Control characters and lone surrogates (undecodable bytes in an agent's file name) are shown
    as visible escapes first: the page never carries them, and always encodes as UTF-8.
    """
    return escape(terminal_safe(value, multiline=True), quote=True)


def format_seconds(seconds: float) -> str:
    """A short duration: ``0.4s``, ``12s``, ``2m05s``, ``1h02m``."""
    if seconds < 10:
        text = f"{seconds:.1f}s"
        return text.replace(".0s", "s") if seconds >= 1 or seconds == 0 else text
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}m{rest:02d}s" if rest else f"{minutes}m"
    hours, rest = divmod(round(seconds) // 60, 60)
    return f"{hours}h{rest:02d}m"


def axis_ticks(span: float, most: int = 8) -> list[float]:
    """Round tick positions from 0 covering ``span`` seconds, at most ``most`` + 1 of them."""
    span = max(span, 1e-3)
    step = 0.1
    for candidate in (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600,
                      7200, 14400, 28800, 86400):
        step = candidate
        if span / candidate <= most:
            break
    count = int(span / step + 1e-9)
    return [round(i * step, 6) for i in range(count + 1)]


def _mib(value: float) -> str:
    if value < MIB:
        return f"{value / 1024:.0f} KiB" if value else "0 MiB"
    return f"{value / MIB:.1f} MiB" if value < 10 * MIB else f"{value / MIB:.0f} MiB"


def _pill(text: str, color: str) -> str:
    return f'<span class="pill" style="background:{_e(color)}">{_e(text)}</span>'


def _status_pill(status: SessionStatus) -> str:
    return _pill(status.value.replace("_", " "), STATUS_COLOR[status])


def _merge_pill(status: str) -> str:
    return _pill(status.replace("_", " "), MERGE_COLOR[status])


def _clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def _secs(moment: datetime | None, origin: datetime) -> float | None:
    return None if moment is None else (moment - origin).total_seconds()


# -- timeline -------------------------------------------------------------------------------


def _text(x: float, y: float, body: str, cls: str = "ax", anchor: str = "start") -> str:
    """An SVG text element; ``body`` is escaped here."""
    return (f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}">'
            f"{_e(body)}</text>")


def _line(x1: float, y1: float, x2: float, y2: float, cls: str) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" class="{cls}"/>'


def _span(report: RunReport, now: datetime) -> float:
    """Seconds from the run's start to its end (or to the last session's end, or now)."""
    ends = [s.finished_at or now for s in report.sessions if s.started_at]
    end = max([report.finished_at or now, *ends])
    return max((end - report.started_at).total_seconds(), 1.0)


def _timeline(report: RunReport, now: datetime, span: float) -> str:
    """One bar per session over wall-clock time, with the waiting time before it dashed."""
    origin, left, right, row, top = report.started_at, 190, 1010, 30, 14
    scale = (right - left) / span
    axis_y = top + row * len(report.sessions) + 4
    out = [f'<svg class="timeline" viewBox="0 0 1040 {axis_y + 24}" width="100%" role="img" '
           'aria-label="timeline of sessions">']
    for tick in axis_ticks(span):
        x = left + tick * scale
        out += [_line(x, top - 6, x, axis_y, "grid"),
                _text(x, axis_y + 16, format_seconds(tick), "ax", "middle")]
    out.append(_line(left, axis_y, right, axis_y, "axis"))
    for index, s in enumerate(report.sessions):
        mid = top + index * row + row / 2 - 3
        out.append(_text(left - 12, mid + 4, _clip(s.task_id, 26), "name", "end"))
        start = _secs(s.started_at, origin)
        if start is None:
            note = s.status.value + (" — " + _clip(s.reason, 80) if s.reason else "")
            out.append(_text(left + 4, mid + 4, note, "note"))
            continue
        stop = max(_secs(s.finished_at or now, origin) or 0.0, start)
        x0, x1 = left + max(start, 0) * scale, left + stop * scale
        if x0 - left > 2:
            out.append(_line(left, mid, x0, mid, "wait"))
        tip = (f"{s.task_id} ({s.id}): {s.status.value}, started +{format_seconds(start)}, "
               f"ran {format_seconds(stop - start)}" + (f" — {s.reason}" if s.reason else ""))
        out.append(f'<rect class="bar" data-session="{_e(s.id)}" x="{x0:.1f}" y="{mid - 8:.1f}" '
                   f'width="{max(x1 - x0, 3):.1f}" height="16" rx="3" '
                   f'fill="{STATUS_COLOR[s.status]}"><title>{_e(tip)}</title></rect>')
        inside = x1 + 60 > right  # no room on the right: the label goes inside the bar
        out.append(_text(x1 - 6 if inside else x1 + 6, mid + 4, format_seconds(stop - start),
                         "on" if inside else "dur", "end" if inside else "start"))
    return "".join(out) + "</svg>"


def _concurrency(report: RunReport, now: datetime, span: float) -> str:
    """A step chart of how many sessions ran at once, on the timeline's time axis."""
    changes = sorted(  # an end and a start at the same instant: the end first
        change for s in report.sessions if s.started_at
        for change in (((s.started_at - report.started_at).total_seconds(), 1),
                       (((s.finished_at or now) - report.started_at).total_seconds(), -1)))
    if not changes:
        return ""
    levels, running = [], 0
    for when, delta in changes:
        running += delta
        levels.append((when, running))
    peak = max(level for _, level in levels)
    left, right, base = 190, 1010, 44
    unit = (base - 8) / max(peak, 1)
    points, previous = [f"{left},{base}"], 0
    for when, level in levels:
        x = left + max(when, 0) / span * (right - left)
        points += [f"{x:.1f},{base - previous * unit:.1f}", f"{x:.1f},{base - level * unit:.1f}"]
        previous = level
    points.append(f"{right},{base}")
    return ('<svg class="concurrency" viewBox="0 0 1040 52" width="100%" role="img" '
            'aria-label="sessions running at once">'
            + _text(left - 12, base - 14, "running at once", "ax", "end")
            + _text(left - 12, base, f"peak {peak}", "note", "end")
            + f'<polygon points="{" ".join(points)}" class="area"/>'
            + _line(left, base, right, base, "axis") + "</svg>")


# -- per-session resource charts ------------------------------------------------------------


def _chart(title: str, series: Sequence[tuple[float, float]], duration: float,
           limit: float | None, fmt: str, reference: tuple[str, float] | None) -> str:
    """A small line chart of ``series`` (seconds, value) against a dashed limit line.

    ``fmt`` is ``"mib"`` or ``"pct"``; ``reference`` (label, value) is drawn dotted when there
    are no samples (the peak memory, the average CPU).
    """
    left, right, top, bottom = 56, 470, 12, 124
    values = [v for _, v in series] + ([reference[1]] if reference else [])
    full = max([limit or 0.0, *values, 1.0])
    duration = max([duration, 0.1, *(t for t, _ in series)])

    def x(t: float) -> float:
        return left + t / duration * (right - left)

    def y(v: float) -> float:
        return bottom - v / (full * 1.12) * (bottom - top)

    def label(v: float) -> str:
        return _mib(v) if fmt == "mib" else f"{v:.0f} %"

    out = [f'<div><div class="chart-title">{_e(title)}</div><svg viewBox="0 0 480 150" '
           f'width="100%" role="img" aria-label="{_e(title)}">']
    for fraction in (0.0, 0.5, 1.0):
        out += [_line(left, y(full * fraction), right, y(full * fraction),
                      "axis" if fraction == 0 else "grid"),
                _text(left - 6, y(full * fraction) + 4, label(full * fraction), "ax", "end")]
    out += [_text(left, bottom + 16, "0s"), _text(right, bottom + 16, format_seconds(duration),
                                                  "ax", "end")]
    if limit:
        out += [_line(left, y(limit), right, y(limit), "limit"),
                _text(right, y(limit) - 5, f"limit {label(limit)}", "lim", "end")]
    if len(series) >= 2:
        line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in series)
        out.append(f'<polygon points="{x(series[0][0]):.1f},{bottom} {line} '
                   f'{x(series[-1][0]):.1f},{bottom}" class="fill"/>'
                   f'<polyline points="{line}" class="curve"/>')
        return "".join(out) + "</svg></div>"
    # Too short for a curve (an OOM kill in under a second): one bar at the peak, labelled.
    name, value = reference or ("value", 0.0)
    value = max([value, *(v for _, v in series)])
    why = "no samples recorded" if not series else "one sample: too short for a curve"
    if value > 0:
        out += [f'<rect class="peak" x="{left}" y="{y(value):.1f}" width="{right - left}" '
                f'height="{bottom - y(value):.1f}"/>',
                _text(left + 6, max(y(value) - 5, top + 10), f"{name} {label(value)} ({why})",
                      "refl")]
    else:
        out.append(_text(left + 6, bottom - 8, f"{name} 0 ({why})", "note"))
    return "".join(out) + "</svg></div>"


def _resource_charts(s: SessionResult, samples: Sequence[Sample],
                     manifest: Manifest | None) -> str:
    start = s.started_at.timestamp() if s.started_at else (samples[0].ts if samples else 0.0)
    duration = s.duration_s or (samples[-1].ts - start if samples else 0.0)
    memory = [(p.ts - start, float(p.memory_bytes)) for p in samples]
    cpu = [(b.ts - start, max(0.0, (b.cpu_seconds - a.cpu_seconds) / (b.ts - a.ts) * 100))
           for a, b in zip(samples, samples[1:], strict=False) if b.ts > a.ts]
    disk = [(p.ts - start, float(p.disk_bytes)) for p in samples]
    limits = manifest.limits if manifest else None
    average = s.cpu_seconds / duration * 100 if duration else 0.0
    peak = max([s.peak_memory_bytes, *(p.memory_bytes for p in samples)])
    return ('<div class="charts">'
            + _chart(f"Memory · peak {_mib(peak)}"
                     + (f" of {limits.memory_mb} MiB" if limits else ""), memory, duration,
                     limits.memory_mb * MIB if limits else None, "mib", ("peak", float(peak)))
            + _chart(f"CPU, % of one core · {s.cpu_seconds:.2f} cpu-seconds, "
                     f"average {average:.0f} %"
                     + (f" of {limits.cpu_percent} %" if limits else ""), cpu, duration,
                     float(limits.cpu_percent) if limits else None, "pct", ("average", average))
            + _chart(f"Disk · {_mib(s.disk_used_bytes)} used"
                     + (f" of {limits.disk_mb} MiB" if limits else "")
                     + (f" ({s.disk_limit_mode} limit)" if s.disk_limit_mode != "none" else ""),
                     disk, duration, limits.disk_mb * MIB if limits else None, "mib",
                     ("used", float(max([s.disk_used_bytes, *(p.disk_bytes for p in samples)]))))
            + "</div>")


# -- sections -------------------------------------------------------------------------------


@dataclass
class _Page:
    """What every section may need beside one session: the run and what was read on the host."""

    report: RunReport
    works: dict[str, SessionWork]
    story: TargetStory | None

    def session_of_branch(self, branch: str) -> SessionResult | None:
        return next((x for x in self.report.sessions if x.branch == branch), None)

    def touched(self, path: str, but: str) -> list[SessionResult]:
        """Merged sessions of this run (in merge order) whose branch changed ``path``."""
        order = self.story.merged_in_order if self.story else []
        by_id = {x.id: x for x in self.report.sessions}
        return [by_id[i] for i in order if i != but and i in by_id and any(
            path in (f.path, f.old_path) for f in self.works.get(i, SessionWork()).files)]


def _session_link(s: SessionResult) -> str:
    return (f'session <a href="#s-{_e(s.id)}">{_e(s.task_id)}</a> '
            f'<code class="muted">{_e(s.id)}</code>')


def _partner(page: _Page, s: SessionResult, path: str, with_branch: str | None) -> str:
    """Whom a conflict of ``s`` on ``path`` clashed with, as page HTML."""
    target = page.report.target or "the target"
    if with_branch:
        other = page.session_of_branch(with_branch)
        return (f"with {_session_link(other)} (<code>{_e(with_branch)}</code>)" if other
                else f"with branch <code>{_e(with_branch)}</code>")
    merged = page.touched(path, s.id)
    if merged:
        return (f"with <code>{_e(target)}</code> after it took "
                + ", ".join(_session_link(x) for x in merged) + ", which changed it too")
    return f"with <code>{_e(target)}</code> (changed there since this session's base)"


def _resolve_commands(page: _Page, s: SessionResult) -> str:
    """The commands that bring a conflicting branch home, for copying into a shell."""
    report = page.report
    run, branch = shlex.quote(report.run_id), shlex.quote(s.branch)
    target = shlex.quote(report.target) if report.target else "<target>"
    paths = " ".join(shlex.quote(p) for p in sorted({c.path for c in s.merge.conflicts}))
    lines = [f"cd {shlex.quote(report.repo)}"]
    if report.merge != "auto":
        lines.append(f"agentrt merge {run} --strategy auto   # lands the branches that merge "
                     "cleanly; this one stays on its branch")
    lines += ["# either merge it into the target by hand:",
              f"git checkout {target} && git merge {branch}",
              f"#   fix the conflicts in {paths}, then",
              f"git add -- {paths} && git commit",
              "# or merge the target into the branch, fix it there, and let agentrt merge it:",
              f"git checkout {branch} && git merge {target}",
              f"git add -- {paths} && git commit",
              f"agentrt merge {run} --strategy auto"]
    return f'<h4 class="gap">To resolve</h4><pre class="resolve">{_e(chr(10).join(lines))}</pre>'


def _merge_block(page: _Page, s: SessionResult) -> str:
    info = s.merge
    parts = [f'<h4>Merge</h4>'
             f'{_merge_pill(info.status)}']
    if info.merge_commit:
        parts.append(f' <code>{_e(info.merge_commit[:12])}</code>')
        order = page.story.merged_in_order if page.story else []
        if s.id in order:
            parts.append(f' <span class="muted">merge {order.index(s.id) + 1} of {len(order)} '
                         f'into {_e(page.report.target or "the target")}</span>')
    if info.conflicts:
        items = []
        for c in info.conflicts:
            lines = ", ".join(f"{a}–{b}" for a, b in c.ours_lines)
            items.append(f'<li class="conflict"><code>{_e(c.path)}</code> '
                         f'<span class="muted">{_e(c.kind)}'
                         f"{_e(' · lines ' + lines) if lines else ''}</span> "
                         f"{_partner(page, s, c.path, c.with_branch)}</li>")
        parts.append(f'<ul class="conflicts">{"".join(items)}</ul>')
        parts.append(_resolve_commands(page, s))
    if s.warnings:
        parts.append('<h4 class="gap">Warnings</h4><ul class="warn">'
                     + "".join(f"<li>{_e(w)}</li>" for w in s.warnings) + "</ul>")
    return "<div>" + "".join(parts) + "</div>"


def _count(added: int | None, deleted: int | None) -> str:
    return "binary" if added is None or deleted is None else f"+{added} −{deleted}"


def _work_block(s: SessionResult, work: SessionWork | None) -> str:
    """The files the session changed (+/−), its commits and the last lines of its output."""
    if work is None:
        return ""
    parts = ['<div class="work"><div>']
    added = sum(f.added or 0 for f in work.files)
    deleted = sum(f.deleted or 0 for f in work.files)
    count = len(work.files) + work.more_files
    parts.append(f'<h4>Changed files <span class="muted">{count} · +{added} −{deleted}</span>'
                 "</h4>")
    if work.files:
        rows = "".join(
            f'<tr class="file"><td><code>{_e(f.path)}</code>'
            + (f' <span class="muted">(from <code>{_e(f.old_path)}</code>)</span>'
               if f.old_path else "")
            + f'</td><td class="num add">{_e(_count(f.added, f.deleted))}</td></tr>'
            for f in work.files)
        more = (f'<tr><td class="muted">and {work.more_files} more</td><td></td></tr>'
                if work.more_files else "")
        parts.append(f'<table class="files"><tbody>{rows}{more}</tbody></table>')
    else:
        parts.append('<p class="muted">none' + ("" if s.branch else " (no branch)") + "</p>")
    parts.append(f'<h4 class="gap">Commits <span class="muted">'
                 f'{len(work.commits) + work.more_commits}</span></h4>')
    if work.commits:
        items = "".join(f'<li class="commit"><code>{_e(c.commit[:10])}</code> {_e(c.subject)}'
                        f"</li>" for c in work.commits)
        more = (f'<li class="muted">and {work.more_commits} more</li>'
                if work.more_commits else "")
        parts.append(f'<ul class="commits">{items}{more}</ul>')
    else:
        parts.append('<p class="muted">none</p>')
    parts.append("</div><div>")
    shown = len(work.output)
    parts.append(f'<h4>Last {shown} line{"" if shown == 1 else "s"} of output</h4>'
                 f'<pre class="output">{_e(chr(10).join(work.output))}</pre>' if work.output
                 else '<h4>Output</h4><p class="muted">none saved</p>')
    parts.append("</div></div>")
    return "".join(parts)


def _command_text(command: object) -> str:
    """An argv for reading: ``sh -c`` and the script below it rather than one quoted line."""
    if not isinstance(command, list):
        return str(command)
    args = [str(a) for a in command]
    if len(args) >= 3 and args[-2] == "-c":
        return shlex.join(args[:-1]) + "\n" + args[-1].strip("\n")
    return shlex.join(args)


def _manifest_block(s: SessionResult, manifest: Manifest | None) -> str:
    if manifest is None:
        return '<div><h4>Manifest</h4>' \
               '<p class="muted">none recorded (the session never started)</p></div>'
    lim = manifest.limits
    command = _command_text(manifest.task.get("command") or manifest.task.get("agent") or "")
    rows = [
        ("image", f"<code>{_e(manifest.image)}</code>"),
        ("digest", f'<code>{_e(manifest.image_digest or "unknown")}</code>'),
        ("base commit", f"<code>{_e(manifest.base_commit)}</code>"),
        ("branch", f"<code>{_e(s.branch or '-')}</code>"),
        ("limits", _e(f"memory {lim.memory_mb} MiB · cpu {lim.cpu_percent} % · "
                      f"time {format_seconds(lim.time_seconds)} · disk {lim.disk_mb} MiB · "
                      f"pids {lim.pids}")),
        ("isolation", _e(f"network {manifest.network} · runtime {manifest.runtime} · "
                         f"database {manifest.database_strategy}")),
        ("env keys", _e(", ".join(manifest.env_keys) or "none")),
        ("command", f"<pre>{_e(command)}</pre>"),
    ]
    body = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<div><h4>Manifest</h4><dl>{body}</dl></div>'


def _limit(value: str, limit: str | None) -> str:
    return value if limit is None else f"{value} / {limit}"


def _session_card(page: _Page, s: SessionResult, samples: Sequence[Sample],
                  manifest: Manifest | None) -> str:
    color = STATUS_COLOR[s.status]
    prompt = str(manifest.task.get("prompt") or "") if manifest else ""
    time_limit = format_seconds(manifest.limits.time_seconds) if manifest else None
    ran = (_limit(format_seconds(s.duration_s), time_limit) if s.duration_s is not None
           else "not run")
    return (f'<section class="card" id="s-{_e(s.id)}" style="border-left:4px solid {color}">'
            f'<div class="session-head"><h3>{_e(s.task_id)}</h3><code class="muted">{_e(s.id)}'
            f'</code>{_status_pill(s.status)}'
            f'<span class="muted">exit {_e("-" if s.exit_code is None else s.exit_code)} · '
            f'{_e(ran)}</span></div>'
            + (f'<p class="reason">{_e(s.reason)}</p>' if s.reason else "")
            + (f'<div class="prompt">{_e(prompt)}</div>' if prompt else "")
            + (_resource_charts(s, samples, manifest) if s.started_at else "")
            + _work_block(s, page.works.get(s.id))
            + f'<div class="cols">{_merge_block(page, s)}{_manifest_block(s, manifest)}</div>'
            + "</section>")


def _summary_table(page: _Page, manifests: dict[str, Manifest | None]) -> str:
    """One row per session; every measured number beside its limit."""
    report = page.report
    head = "".join(f"<th>{h}</th>" for h in ("task", "status", "exit", "start", "time",
                                              "peak memory", "cpu", "disk", "changes",
                                              "merge"))
    rows = []
    for s in report.sessions:
        lim = manifest.limits if (manifest := manifests.get(s.id)) else None
        start = _secs(s.started_at, report.started_at)
        duration = "-" if s.duration_s is None else format_seconds(s.duration_s)
        average = s.cpu_seconds / s.duration_s * 100 if s.duration_s else 0.0
        work = page.works.get(s.id)
        changes = "-" if work is None else (
            _count(sum(f.added or 0 for f in work.files), sum(f.deleted or 0 for f in work.files))
            + f" · {len(work.files) + work.more_files} file"
            + ("" if len(work.files) + work.more_files == 1 else "s"))
        partners = []
        for c in s.merge.conflicts:
            other = page.session_of_branch(c.with_branch) if c.with_branch else None
            after = ", ".join(x.task_id for x in page.touched(c.path, s.id))
            partners.append(f"{c.path} with " + (
                other.task_id if other else c.with_branch or (report.target or "target")
                + (f" (after {after})" if after else "")))
        cells = [
            _limit(duration, format_seconds(lim.time_seconds) if lim else None),
            _limit(_mib(s.peak_memory_bytes), f"{lim.memory_mb} MiB" if lim else None),
            f"{s.cpu_seconds:.2f}s · "
            + _limit(f"{average:.0f} %", f"{lim.cpu_percent} %" if lim else None),
            _limit(_mib(s.disk_used_bytes), f"{lim.disk_mb} MiB" if lim else None),
            changes,
        ]
        rows.append(
            f'<tr><td><a href="#s-{_e(s.id)}">{_e(s.task_id)}</a><br>'
            f'<code class="muted">{_e(s.branch or s.id)}</code></td>'
            f'<td>{_status_pill(s.status)}</td>'
            f'<td class="num">{_e("-" if s.exit_code is None else s.exit_code)}</td>'
            f'<td class="num">{_e("-" if start is None else "+" + format_seconds(start))}</td>'
            + "".join(f'<td class="num">{_e(c)}</td>' for c in cells)
            + f"<td>{_merge_pill(s.merge.status)}"
            + "".join(f"<br><code>{_e(p)}</code>" for p in sorted(set(partners)))
            + "</td></tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _merges_section(page: _Page) -> str:
    """Where the target ended up: the merge commits in the order they landed."""
    report = page.report
    if report.merge == "none" and not any(s.merge.status == "merged" for s in report.sessions):
        return ""
    target = report.target or "the target"
    by_id = {s.id: s for s in report.sessions}
    order = [by_id[i] for i in (page.story.merged_in_order if page.story else []) if i in by_id]
    order += [s for s in report.sessions if s.merge.status == "merged" and s not in order]
    body = [f'<p>Started from base <code>{_e(report.base_commit[:12])}</code>.</p>']
    if order:
        items = "".join(
            f'<li class="merge-step"><code>{_e((s.merge.merge_commit or "")[:12] or "-")}</code>'
            f" {_session_link(s)} <code class=\"muted\">{_e(s.branch)}</code>"
            + ("" if s.merge.merge_commit else
               ' <span class="muted">(already contained: no commit of its own)</span>')
            + "</li>" for s in order)
        body.append(f"<p>Merged into <code>{_e(target)}</code> in this order:</p>"
                    f'<ol class="merges">{items}</ol>')
        last = next((s.merge.merge_commit for s in reversed(order) if s.merge.merge_commit), None)
        if last:
            body.append(f'<p class="landed"><code>{_e(target)}</code> ended at '
                        f"<code>{_e(last[:12])}</code> after these merges.")
            now = page.story.head_now if page.story else None
            if now:
                body.append(" It is still there." if now == last else
                            f" It is now at <code>{_e(now[:12])}</code> (moved since).")
            body.append("</p>")
    else:
        how = ("nothing merged: review only; `agentrt merge "
               f"{report.run_id} --strategy auto` merges the clean branches"
               if report.merge == "review" else "nothing merged")
        body.append(f'<p class="muted">{_e(how)}.</p>')
    left = [s for s in report.sessions if s.merge.status == "conflicts"]
    if left:
        body.append("<p>Left on their branches (conflicts): "
                    + ", ".join(_session_link(s) for s in left) + ".</p>")
    return f'<section class="card" id="merges"><h2>Merges</h2>{"".join(body)}</section>'


def _legend(statuses: Iterable[SessionStatus]) -> str:
    items = [f'<span><i class="sw" style="background:{STATUS_COLOR[s]}"></i>'
             f'{_e(s.value.replace("_", " "))}</span>' for s in SessionStatus if s in statuses]
    items.append('<span><i class="dash"></i>waiting (queued or for deps)</span>')
    return f'<div class="legend">{"".join(items)}</div>'


def _header(report: RunReport, now: datetime) -> str:
    code = report.exit_code()
    verdict = {0: "all succeeded", 1: "a session failed", 3: "merge conflicts",
               130: "interrupted"}.get(code, "")
    if code == 3 and (report.merge_refused is not None or report.auto_merge_missed):
        verdict = "not merged"
    wall = ((report.finished_at or now) - report.started_at).total_seconds()
    meta = [("repository", report.repo), ("base commit", report.base_commit[:12]),
            ("target", report.target or "-"), ("merge", report.merge),
            ("started", report.started_at.strftime("%Y-%m-%d %H:%M:%S %Z")),
            ("wall time", format_seconds(wall) + ("" if report.finished_at else " (running)"))]
    counts: dict[SessionStatus, int] = {}
    for s in report.sessions:
        counts[s.status] = counts.get(s.status, 0) + 1
    chips = "".join(_pill(f"{n} {st.value.replace('_', ' ')}", STATUS_COLOR[st])
                    for st, n in counts.items())
    color = "#2f9e61" if code == 0 else "#d6453d" if code == 1 else "#e0821e"
    verdict_pill = _pill(f"exit {code} · {verdict}", color)
    if report.finished_at is None:
        verdict_pill = _pill("in progress", STATUS_COLOR[SessionStatus.RUNNING])
    return (f'<header class="card"><div class="eyebrow">agentrt run report</div>'
            f'<h1>{_e(report.run_id)} {verdict_pill}</h1>'
            f'<dl class="meta">'
            + "".join(f"<div><dt>{_e(k)}</dt><dd>{_e(v)}</dd></div>" for k, v in meta)
            + f'</dl><div class="counts">{chips}</div>'
            + (f'<p class="warn">not merged: {_e(report.merge_refused)}</p>'
               if report.merge_refused else "")
            + "".join(f'<p class="warn">{_e(w)}</p>' for w in report.warnings)
            + "</header>")


def render_html(report: RunReport, samples: dict[str, list[Sample]],
                manifests: dict[str, Manifest | None],
                works: dict[str, SessionWork] | None = None,
                story: TargetStory | None = None) -> str:
    """The report as one self-contained HTML page: header, timeline, table, merges, one card
    per session.

    ``samples``, ``manifests`` and ``works`` (what each session changed, committed and
    printed) are keyed by session id; missing keys mean none recorded. ``story`` says in
    which order the merges landed on the target. Every run-provided string is escaped; the
    page references no external resource.
    """
    now = utcnow()
    span = _span(report, now)
    page = _Page(report, works or {}, story)
    statuses = {s.status for s in report.sessions}
    timeline = (_timeline(report, now, span) + _concurrency(report, now, span)
                if report.sessions else '<p class="muted">no sessions</p>')
    cards = "".join(_session_card(page, s, samples.get(s.id, []), manifests.get(s.id))
                    for s in report.sessions)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>agentrt run {_e(report.run_id)}</title><style>{_CSS}</style></head>"
            f"<body><main>{_header(report, now)}"
            f'<section class="card"><h2>Timeline</h2>{_legend(statuses)}{timeline}</section>'
            f'<section class="card"><h2>Sessions</h2>{_summary_table(page, manifests)}'
            f"</section>{_merges_section(page)}{cards}"
            f"<footer>generated by agentrt on {_e(now.strftime('%Y-%m-%d %H:%M:%S UTC'))}"
            "</footer></main></body></html>\n")
