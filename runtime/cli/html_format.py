"""The small pieces every part of the HTML report is made of: escaping, colours, durations,
sizes and pills.

:func:`esc` is the one way a value reaches the page: control characters shown escaped by
:func:`runtime.text.terminal_safe` first, then :func:`html.escape`.
"""

from __future__ import annotations

from datetime import datetime
from html import escape

from runtime.models import SessionStatus
from runtime.text import terminal_safe

STATUS_COLOR: dict[SessionStatus, str] = {SessionStatus(k): v for k, v in {
    "succeeded": "#2f9e61", "failed": "#d6453d", "oom_killed": "#9c3dbf", "timed_out": "#e0821e",
    "disk_full": "#8a5a2b", "crashed": "#8f1d1d", "cancelled": "#b8a22e", "skipped": "#a3a9b3",
    "running": "#3a7bd5", "pending": "#c7ccd4", "prepared": "#9fb8dc"}.items()}
MERGE_COLOR = {"merged": "#2f9e61", "clean": "#3a7bd5", "conflicts": "#d6453d",
               "gate_failed": "#d6453d", "not_attempted": "#a3a9b3", "not_merged": "#d98a1c"}
MIB = 1024 * 1024


def esc(value: object) -> str:
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


def mib(value: float) -> str:
    if value < MIB:
        return f"{value / 1024:.0f} KiB" if value else "0 MiB"
    return f"{value / MIB:.1f} MiB" if value < 10 * MIB else f"{value / MIB:.0f} MiB"


def pill(text: str, color: str) -> str:
    return f'<span class="pill" style="background:{esc(color)}">{esc(text)}</span>'


def status_pill(status: SessionStatus) -> str:
    return pill(status.value.replace("_", " "), STATUS_COLOR[status])


def merge_pill(status: str) -> str:
    return pill(status.replace("_", " "), MERGE_COLOR.get(status, "#a3a9b3"))


def clip(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"


def seconds_from(moment: datetime | None, origin: datetime) -> float | None:
    return None if moment is None else (moment - origin).total_seconds()
