"""A run's report as one self-contained HTML page (``agentrt report RUN --html PATH``).

:func:`render_html` is pure: it takes the report, the resource samples and the manifests and
returns the page. The page fetches nothing: inline CSS, inline SVG, no scripts, no fonts, no
links out, so it can be mailed, archived or opened offline. Every string that comes from a run
(task ids, prompts, reasons, paths, branch names) is written through :func:`html.escape`,
its control characters first shown escaped by :func:`runtime.text.terminal_safe`, because
agents and task files are untrusted.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING

from runtime.cli.html_charts import concurrency_svg, run_span, timeline_svg
from runtime.cli.html_format import (
    STATUS_COLOR,
    esc,
    format_seconds,
    merge_pill,
    mib,
    pill,
    seconds_from,
    status_pill,
)
from runtime.cli.html_sessions import (
    ReportPage,
    change_count,
    session_card,
    session_link,
    with_limit,
)
from runtime.models import Manifest, RunReport, SessionStatus, utcnow
from runtime.run.usage import format_usage, total_usage

if TYPE_CHECKING:
    from runtime.cli.report_work import SessionWork, TargetStory
    from runtime.state.store import Sample

__all__ = ["render_html"]

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
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.sessions td code{overflow-wrap:anywhere;word-break:break-all}
table.sessions .why{color:#b42318;font-size:12px;max-width:16em;overflow-wrap:anywhere}
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
@media print{pre,pre.output{max-height:none;overflow:visible}.card{break-inside:avoid-page}}
"""


def _summary_table(page: ReportPage, manifests: dict[str, Manifest | None]) -> str:
    """One row per session; every measured number beside its limit."""
    report = page.report
    usage = any(s.usage for s in report.sessions)
    head = "".join(f"<th>{h}</th>" for h in ("task", "status", "exit", "start", "time",
                                              "peak memory", "cpu", "disk", "changes",
                                              *(("tokens",) if usage else ()), "merge"))
    rows = []
    for s in report.sessions:
        lim = manifest.limits if (manifest := manifests.get(s.id)) else None
        start = seconds_from(s.started_at, report.started_at)
        duration = "-" if s.duration_s is None else format_seconds(s.duration_s)
        average = s.cpu_seconds / s.duration_s * 100 if s.duration_s else 0.0
        work = page.works.get(s.id)
        changes = "-" if work is None else (
            change_count(sum(f.added or 0 for f in work.files),
                         sum(f.deleted or 0 for f in work.files))
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
            with_limit(duration, format_seconds(lim.time_seconds) if lim else None),
            with_limit(mib(s.peak_memory_bytes), f"{lim.memory_mb} MiB" if lim else None),
            f"{s.cpu_seconds:.2f}s · "
            + with_limit(f"{average:.0f} %", f"{lim.cpu_percent} %" if lim else None),
            with_limit(mib(s.disk_used_bytes), f"{lim.disk_mb} MiB" if lim else None),
            changes,
            *((format_usage(s.usage) or "-",) if usage else ()),
        ]
        rows.append(
            f'<tr><td><a href="#s-{esc(s.id)}">{esc(s.task_id)}</a><br>'
            f'<code class="muted">{esc(s.branch or s.id)}</code></td>'
            f'<td>{status_pill(s.status)}'
            + (f'<div class="why">{esc(s.reason)}</div>' if s.reason and s.status.is_failure
               else "") + "</td>"
            f'<td class="num">{esc("-" if s.exit_code is None else s.exit_code)}</td>'
            f'<td class="num">{esc("-" if start is None else "+" + format_seconds(start))}</td>'
            + "".join(f'<td class="num">{esc(c)}</td>' for c in cells)
            + f"<td>{merge_pill(s.merge.status)}"
            + (f'<br><span class="muted">{esc(s.merge.reason)}</span>' if s.merge.reason else "")
            + "".join(f"<br><code>{esc(p)}</code>" for p in sorted(set(partners)))
            + "</td></tr>")
    total = total_usage(s.usage for s in report.sessions)
    foot = "" if total is None else (
        f'<tfoot><tr><td colspan="9">usage of the run (as the agents\' CLIs reported it)</td>'
        f'<td class="num">{esc(format_usage(total))}</td><td></td></tr></tfoot>')
    return (f'<table class="sessions"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}'
            f"</tbody>{foot}</table>")


def _merges_section(page: ReportPage) -> str:
    """Where the target ended up: the merge commits in the order they landed."""
    report = page.report
    if report.merge == "none" and not any(s.merge.status == "merged" for s in report.sessions):
        return ""
    target = report.target or "the target"
    by_id = {s.id: s for s in report.sessions}
    order = [by_id[i] for i in (page.story.merged_in_order if page.story else []) if i in by_id]
    order += [s for s in report.sessions if s.merge.status == "merged" and s not in order]
    body = [f'<p>Started from base <code>{esc(report.base_commit[:12])}</code>.</p>']
    if order:
        items = "".join(
            f'<li class="merge-step"><code>{esc((s.merge.merge_commit or "")[:12] or "-")}</code>'
            f" {session_link(s)} <code class=\"muted\">{esc(s.branch)}</code>"
            + ("" if s.merge.merge_commit else
               ' <span class="muted">(already contained: no commit of its own)</span>')
            + "</li>" for s in order)
        body.append(f"<p>Merged into <code>{esc(target)}</code> in this order:</p>"
                    f'<ol class="merges">{items}</ol>')
        last = next((s.merge.merge_commit for s in reversed(order) if s.merge.merge_commit), None)
        if last:
            body.append(f'<p class="landed"><code>{esc(target)}</code> ended at '
                        f"<code>{esc(last[:12])}</code> after these merges.")
            now = page.story.head_now if page.story else None
            if now:
                body.append(" It is still there." if now == last else
                            f" It is now at <code>{esc(now[:12])}</code> (moved since).")
            body.append("</p>")
    else:
        how = ("nothing merged: review only; `agentrt merge "
               f"{report.run_id} --strategy auto` merges the clean branches"
               if report.merge == "review" else "nothing merged")
        body.append(f'<p class="muted">{esc(how)}.</p>')
    left = [s for s in report.sessions if s.merge.status == "conflicts"]
    if left:
        body.append("<p>Left on their branches (conflicts): "
                    + ", ".join(session_link(s) for s in left) + ".</p>")
    return f'<section class="card" id="merges"><h2>Merges</h2>{"".join(body)}</section>'


def _legend(statuses: Iterable[SessionStatus]) -> str:
    items = [f'<span><i class="sw" style="background:{STATUS_COLOR[s]}"></i>'
             f'{esc(s.value.replace("_", " "))}</span>' for s in SessionStatus if s in statuses]
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
    chips = "".join(pill(f"{n} {st.value.replace('_', ' ')}", STATUS_COLOR[st])
                    for st, n in counts.items())
    color = "#2f9e61" if code == 0 else "#d6453d" if code == 1 else "#e0821e"
    verdict_pill = pill(f"exit {code} · {verdict}", color)
    if report.finished_at is None:
        verdict_pill = pill("in progress", STATUS_COLOR[SessionStatus.RUNNING])
    return (f'<header class="card"><div class="eyebrow">agentrt run report</div>'
            f'<h1>{esc(report.run_id)} {verdict_pill}</h1>'
            f'<dl class="meta">'
            + "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in meta)
            + f'</dl><div class="counts">{chips}</div>'
            + (f'<p class="warn">not merged: {esc(report.merge_refused)}</p>'
               if report.merge_refused else "")
            + "".join(f'<p class="warn">{esc(w)}</p>' for w in report.warnings)
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
    span = run_span(report, now)
    page = ReportPage(report, works or {}, story)
    statuses = {s.status for s in report.sessions}
    timeline = (timeline_svg(report, now, span) + concurrency_svg(report, now, span)
                if report.sessions else '<p class="muted">no sessions</p>')
    cards = "".join(session_card(page, s, samples.get(s.id, []), manifests.get(s.id))
                    for s in report.sessions)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>agentrt run {esc(report.run_id)}</title><style>{_CSS}</style></head>"
            f"<body><main>{_header(report, now)}"
            f'<section class="card"><h2>Timeline</h2>{_legend(statuses)}{timeline}</section>'
            f'<section class="card"><h2>Sessions</h2>{_summary_table(page, manifests)}'
            f"</section>{_merges_section(page)}{cards}"
            f"<footer>generated by agentrt on {esc(now.strftime('%Y-%m-%d %H:%M:%S UTC'))}"
            "</footer></main></body></html>\n")
