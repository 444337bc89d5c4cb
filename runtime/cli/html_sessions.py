"""One card per session in the HTML report: its status, prompt, charts, changed files,
commits, output, merge (with whom a conflict clashed and how to resolve it) and manifest."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runtime.cli.html_charts import resource_charts
from runtime.cli.html_format import STATUS_COLOR, esc, format_seconds, merge_pill, status_pill
from runtime.cli.report_work import SessionWork, TargetStory
from runtime.models import GateResult, Manifest, RunReport, SessionResult
from runtime.run.usage import format_usage

if TYPE_CHECKING:
    from runtime.state.store import Sample


@dataclass
class ReportPage:
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


def session_link(s: SessionResult) -> str:
    return (f'session <a href="#s-{esc(s.id)}">{esc(s.task_id)}</a> '
            f'<code class="muted">{esc(s.id)}</code>')


def _partner(page: ReportPage, s: SessionResult, path: str, with_branch: str | None) -> str:
    """Whom a conflict of ``s`` on ``path`` clashed with, as page HTML."""
    target = page.report.target or "the target"
    if with_branch:
        other = page.session_of_branch(with_branch)
        return (f"with {session_link(other)} (<code>{esc(with_branch)}</code>)" if other
                else f"with branch <code>{esc(with_branch)}</code>")
    merged = page.touched(path, s.id)
    if merged:
        return (f"with <code>{esc(target)}</code> after it took "
                + ", ".join(session_link(x) for x in merged) + ", which changed it too")
    return f"with <code>{esc(target)}</code> (changed there since this session's base)"


def _resolve_commands(page: ReportPage, s: SessionResult) -> str:
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
    return f'<h4 class="gap">To resolve</h4><pre class="resolve">{esc(chr(10).join(lines))}</pre>'


def _gate_block(gate: GateResult) -> str:
    """The merge gate's command, verdict, time and output tail."""
    took = f" in {format_seconds(gate.duration_s)}" if gate.duration_s is not None else ""
    how = f" ({gate.status}" + (f", exit {gate.exit_code}" if gate.exit_code is not None
                                else "") + ")" if gate.status else ""
    text = [f'<h4 class="gap">Merge gate</h4><p><code>{esc(shlex.join(gate.command))}</code>: '
            f'<strong>{esc(gate.verdict)}</strong>{esc(how + took)}</p>']
    if gate.reason:
        text.append(f'<p class="muted">{esc(gate.reason)}</p>')
    if gate.output_tail:
        text.append(f'<pre class="output">{esc(gate.output_tail)}</pre>')
    return "".join(text)


def _merge_block(page: ReportPage, s: SessionResult) -> str:
    info = s.merge
    parts = [f'<h4>Merge</h4>'
             f'{merge_pill(info.status)}']
    if info.reason:
        parts.append(f' <span class="muted">{esc(info.reason)}</span>')
    if info.merge_commit:
        parts.append(f' <code>{esc(info.merge_commit[:12])}</code>')
        order = page.story.merged_in_order if page.story else []
        if s.id in order:
            parts.append(f' <span class="muted">merge {order.index(s.id) + 1} of {len(order)} '
                         f'into {esc(page.report.target or "the target")}</span>')
    if info.conflicts:
        items = []
        for c in info.conflicts:
            lines = ", ".join(f"{a}–{b}" for a, b in c.ours_lines)
            items.append(f'<li class="conflict"><code>{esc(c.path)}</code> '
                         f'<span class="muted">{esc(c.kind)}'
                         f"{esc(' · lines ' + lines) if lines else ''}</span> "
                         f"{_partner(page, s, c.path, c.with_branch)}</li>")
        parts.append(f'<ul class="conflicts">{"".join(items)}</ul>')
        parts.append(_resolve_commands(page, s))
    if info.gate is not None:
        parts.append(_gate_block(info.gate))
    if s.warnings:
        parts.append('<h4 class="gap">Warnings</h4><ul class="warn">'
                     + "".join(f"<li>{esc(w)}</li>" for w in s.warnings) + "</ul>")
    return "<div>" + "".join(parts) + "</div>"


def change_count(added: int | None, deleted: int | None) -> str:
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
            f'<tr class="file"><td><code>{esc(f.path)}</code>'
            + (f' <span class="muted">(from <code>{esc(f.old_path)}</code>)</span>'
               if f.old_path else "")
            + f'</td><td class="num add">{esc(change_count(f.added, f.deleted))}</td></tr>'
            for f in work.files)
        more = (f'<tr><td class="muted">and {work.more_files} more</td><td></td></tr>'
                if work.more_files else "")
        parts.append(f'<table class="files"><tbody>{rows}{more}</tbody></table>')
    else:
        parts.append('<p class="muted">none' + ("" if s.branch else " (no branch)") + "</p>")
    parts.append(f'<h4 class="gap">Commits <span class="muted">'
                 f'{len(work.commits) + work.more_commits}</span></h4>')
    if work.commits:
        items = "".join(f'<li class="commit"><code>{esc(c.commit[:10])}</code> {esc(c.subject)}'
                        f"</li>" for c in work.commits)
        more = (f'<li class="muted">and {work.more_commits} more</li>'
                if work.more_commits else "")
        parts.append(f'<ul class="commits">{items}{more}</ul>')
    else:
        parts.append('<p class="muted">none</p>')
    parts.append("</div><div>")
    shown = len(work.output)
    parts.append(f'<h4>Last {shown} line{"" if shown == 1 else "s"} of output</h4>'
                 f'<pre class="output">{esc(chr(10).join(work.output))}</pre>' if work.output
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
        ("image", f"<code>{esc(manifest.image)}</code>"),
        ("digest", f'<code>{esc(manifest.image_digest or "unknown")}</code>'),
        ("base commit", f"<code>{esc(manifest.base_commit)}</code>"),
        ("branch", f"<code>{esc(s.branch or '-')}</code>"),
        ("limits", esc(f"memory {lim.memory_mb} MiB · cpu {lim.cpu_percent} % · "
                      f"time {format_seconds(lim.time_seconds)} · disk {lim.disk_mb} MiB · "
                      f"pids {lim.pids}")),
        ("isolation", esc(f"network {manifest.network} · runtime {manifest.runtime} · "
                         f"database {manifest.database_strategy}")),
        ("env keys", esc(", ".join(manifest.env_keys) or "none")),
        *([("agent CLI", esc(manifest.cli_version))] if manifest.cli_version else []),
        *([("agentrt", esc(manifest.agentrt_version))] if manifest.agentrt_version else []),
        *([("usage", esc(format_usage(s.usage)))] if s.usage else []),
        ("command", f"<pre>{esc(command)}</pre>"),
    ]
    body = "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<div><h4>Manifest</h4><dl>{body}</dl></div>'


def with_limit(value: str, limit: str | None) -> str:
    return value if limit is None else f"{value} / {limit}"


def session_card(page: ReportPage, s: SessionResult, samples: Sequence[Sample],
                  manifest: Manifest | None) -> str:
    color = STATUS_COLOR[s.status]
    prompt = str(manifest.task.get("prompt") or "") if manifest else ""
    time_limit = format_seconds(manifest.limits.time_seconds) if manifest else None
    ran = (with_limit(format_seconds(s.duration_s), time_limit) if s.duration_s is not None
           else "not run")
    return (f'<section class="card" id="s-{esc(s.id)}" style="border-left:4px solid {color}">'
            f'<div class="session-head"><h3>{esc(s.task_id)}</h3><code class="muted">{esc(s.id)}'
            f'</code>{status_pill(s.status)}'
            f'<span class="muted">exit {esc("-" if s.exit_code is None else s.exit_code)} · '
            f'{esc(ran)}</span></div>'
            + (f'<p class="reason">{esc(s.reason)}</p>' if s.reason else "")
            + (f'<div class="prompt">{esc(prompt)}</div>' if prompt else "")
            + (resource_charts(s, samples, manifest) if s.started_at else "")
            + _work_block(s, page.works.get(s.id))
            + f'<div class="cols">{_merge_block(page, s)}{_manifest_block(s, manifest)}</div>'
            + "</section>")
