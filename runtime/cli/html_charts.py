"""The report's inline SVG charts: the sessions' timeline, how many ran at once, and each
session's memory, CPU and disk against its limits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from runtime.cli.html_format import (
    MIB,
    STATUS_COLOR,
    axis_ticks,
    clip,
    esc,
    format_seconds,
    mib,
    seconds_from,
)
from runtime.models import Manifest, RunReport, SessionResult

if TYPE_CHECKING:
    from runtime.state.store import Sample


def _text(x: float, y: float, body: str, cls: str = "ax", anchor: str = "start") -> str:
    """An SVG text element; ``body`` is escaped here."""
    return (f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}">'
            f"{esc(body)}</text>")


def _line(x1: float, y1: float, x2: float, y2: float, cls: str) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" class="{cls}"/>'


def run_span(report: RunReport, now: datetime) -> float:
    """Seconds from the run's start to its end (or to the last session's end, or now)."""
    ends = [s.finished_at or now for s in report.sessions if s.started_at]
    end = max([report.finished_at or now, *ends])
    return max((end - report.started_at).total_seconds(), 1.0)


def timeline_svg(report: RunReport, now: datetime, span: float) -> str:
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
        out.append(_text(left - 12, mid + 4, clip(s.task_id, 26), "name", "end"))
        start = seconds_from(s.started_at, origin)
        if start is None:
            note = s.status.value + (" — " + clip(s.reason, 80) if s.reason else "")
            out.append(_text(left + 4, mid + 4, note, "note"))
            continue
        stop = max(seconds_from(s.finished_at or now, origin) or 0.0, start)
        x0, x1 = left + max(start, 0) * scale, left + stop * scale
        if x0 - left > 2:
            out.append(_line(left, mid, x0, mid, "wait"))
        tip = (f"{s.task_id} ({s.id}): {s.status.value}, started +{format_seconds(start)}, "
               f"ran {format_seconds(stop - start)}" + (f" — {s.reason}" if s.reason else ""))
        out.append(f'<rect class="bar" data-session="{esc(s.id)}" x="{x0:.1f}" y="{mid - 8:.1f}" '
                   f'width="{max(x1 - x0, 3):.1f}" height="16" rx="3" '
                   f'fill="{STATUS_COLOR[s.status]}"><title>{esc(tip)}</title></rect>')
        inside = x1 + 60 > right  # no room on the right: the label goes inside the bar
        out.append(_text(x1 - 6 if inside else x1 + 6, mid + 4, format_seconds(stop - start),
                         "on" if inside else "dur", "end" if inside else "start"))
    return "".join(out) + "</svg>"


def concurrency_svg(report: RunReport, now: datetime, span: float) -> str:
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
        return mib(v) if fmt == "mib" else f"{v:.0f} %"

    out = [f'<div><div class="chart-title">{esc(title)}</div><svg viewBox="0 0 480 150" '
           f'width="100%" role="img" aria-label="{esc(title)}">']
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


def memory_series(samples: Sequence[Sample], start: float, duration: float,
                  peak: int) -> list[tuple[float, float]]:
    """The memory curve: the samples, then the kernel's peak where no sample saw it. Pure.

    Samples are taken every half second; an allocation that the kernel killed between two of
    them (an OOM) never shows in them, while the cgroup's own peak does: it is drawn at the
    session's end, so the curve spikes to the limit it hit. (Under two samples there is no
    curve: the chart shows the peak as a bar.)"""
    series = [(p.ts - start, float(p.memory_bytes)) for p in samples]
    if len(series) >= 2 and peak > max(v for _, v in series) * 1.05:
        series.append((max(duration, series[-1][0]), float(peak)))
    return series


def resource_charts(s: SessionResult, samples: Sequence[Sample],
                     manifest: Manifest | None) -> str:
    start = s.started_at.timestamp() if s.started_at else (samples[0].ts if samples else 0.0)
    duration = s.duration_s or (samples[-1].ts - start if samples else 0.0)
    memory = memory_series(samples, start, duration, s.peak_memory_bytes)
    cpu = [(b.ts - start, max(0.0, (b.cpu_seconds - a.cpu_seconds) / (b.ts - a.ts) * 100))
           for a, b in zip(samples, samples[1:], strict=False) if b.ts > a.ts]
    disk = [(p.ts - start, float(p.disk_bytes)) for p in samples]
    limits = manifest.limits if manifest else None
    average = s.cpu_seconds / duration * 100 if duration else 0.0
    peak = max([s.peak_memory_bytes, *(p.memory_bytes for p in samples)])
    return ('<div class="charts">'
            + _chart(f"Memory · peak {mib(peak)}"
                     + (f" of {limits.memory_mb} MiB" if limits else ""), memory, duration,
                     limits.memory_mb * MIB if limits else None, "mib", ("peak", float(peak)))
            + _chart(f"CPU, % of one core · {s.cpu_seconds:.2f} cpu-seconds, "
                     f"average {average:.0f} %"
                     + (f" of {limits.cpu_percent} %" if limits else ""), cpu, duration,
                     float(limits.cpu_percent) if limits else None, "pct", ("average", average))
            + _chart(f"Disk · {mib(s.disk_used_bytes)} used"
                     + (f" of {limits.disk_mb} MiB" if limits else "")
                     + (f" ({s.disk_limit_mode} limit)" if s.disk_limit_mode != "none" else ""),
                     disk, duration, limits.disk_mb * MIB if limits else None, "mib",
                     ("used", float(max([s.disk_used_bytes, *(p.disk_bytes for p in samples)]))))
            + "</div>")
