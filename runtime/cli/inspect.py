"""CLI verbs that look at runs and sessions: ``ps``, ``logs``, ``diff``, ``report``.

They only read: the state database (safe while a run writes to it), the saved logs, the
session containers (through the docker SDK) and the repository (through :func:`run_git`).
Each command is a thin layer over small functions: below, in :mod:`runtime.cli.lookup`
(naming runs and sessions), :mod:`runtime.cli.session_output` (logs and diffs) and
:mod:`runtime.cli.report_work` (what the HTML report reads). Agent output and agent-written
files are data: on a terminal their control characters are shown escaped, never interpreted.
"""

from __future__ import annotations

import codecs
import json
import os
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from runtime.cli.attach import idle_seconds, is_interactive
from runtime.cli.lookup import open_store, repo_option, resolve_run, resolve_session
from runtime.cli.session_output import session_diff, session_output, terminal_safe
from runtime.errors import ConfigError, NotFoundError
from runtime.git.safe_git import MainRepo
from runtime.models import SessionStatus, WorkState
from runtime.text import markup_safe

if TYPE_CHECKING:
    from runtime.state.store import RunRow, SessionRow, Store


# -- library: what the commands do -----------------------------------------------------------


def select_sessions(store: Store, all_runs: bool = False) -> list[SessionRow]:
    """Every session (``all_runs``), else the latest run's sessions plus any still live and
    any whose work is kept on its volume (waiting for ``agentrt recover`` or ``gc``)."""
    if all_runs:
        return store.list_sessions()
    latest = store.latest_run()
    rows = store.list_sessions(latest.id) if latest else []
    seen = {r.id for r in rows}
    rows += [r for r in store.list_sessions(include_finished=False) if r.id not in seen]
    seen = {r.id for r in rows}
    rows += [r for r in store.list_sessions()
             if r.id not in seen and r.result.work is WorkState.KEPT]
    return rows


def kept_volume_bytes(row: SessionRow) -> int:
    """Host space held by a session's kept volume (the image file agentrt made), else 0."""
    if row.result.work is not WorkState.KEPT or not row.volume_path:
        return 0
    try:
        return Path(row.volume_path, "volume.img").stat().st_blocks * 512
    except OSError:
        return 0


def session_summary(row: SessionRow, runs: dict[str, RunRow], now: float) -> dict[str, Any]:
    """One ``ps --json`` entry. ``owner_alive`` is False for a live session whose agentrt
    process is gone from this host (it will never finish; ``agentrt gc`` cleans it up)."""
    result = row.result
    started = result.started_at.timestamp() if result.started_at else None
    duration = result.duration_s
    if duration is None and started is not None and not row.status.is_final:
        duration = max(round(now - started, 1), 0.0)
    owner_alive: bool | None = None
    run = runs.get(row.run_id)
    if not row.status.is_final and run and run.owner_host == socket.gethostname():
        from runtime.state.liveness import owner_alive as alive

        owner_alive = alive(row.owner_pid, row.owner_start_time)
    return {
        "id": row.id, "run_id": row.run_id, "task_id": row.task_id,
        "status": row.status.value, "branch": row.branch or None,
        "started_at": result.started_at.isoformat() if result.started_at else None,
        "finished_at": result.finished_at.isoformat() if result.finished_at else None,
        "duration_s": duration, "exit_code": result.exit_code, "reason": result.reason,
        "owner_alive": owner_alive, "work": result.work.value,
        "kept_bytes": kept_volume_bytes(row),
        "interactive": is_interactive(row),
        "continues": result.continues,
    }


def ps_table(entries: list[dict[str, Any]]) -> Table:
    """The ``ps`` table: session, run, task, state, started, duration, exit.

    The run id is what ``agentrt stop``, ``report`` and ``merge`` take. The branch is not a
    column: session ``<task>-<hex>`` works on ``agent/<task>/<hex>`` (``--json`` has it)."""
    from runtime.cli.live_view import STATUS_STYLE

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("session", "run", "task", "state", "started", "duration", "exit"):
        table.add_column(col, no_wrap=col != "state")
    for e in entries:
        status = SessionStatus(e["status"])
        state = f"[{STATUS_STYLE[status]}]{status.value}[/]"
        if e["owner_alive"] is False:
            state += " [red](owner gone)[/]"
        if e.get("continues"):
            state += f" [dim](continues {markup_safe(e['continues'])})[/]"
        if e.get("interactive") and not status.is_final:
            idle = e.get("idle_s")
            waiting = f", idle {idle:.0f}s" if idle is not None and idle >= 2 else ""
            state += f" [cyan](interactive{waiting}: agentrt attach {markup_safe(e['id'])})[/]"
        if e.get("work") == WorkState.KEPT.value:
            state += (f" [yellow](work kept, {e['kept_bytes'] // (1024 * 1024)} MiB: "
                      f"agentrt recover {markup_safe(e['id'])})[/]")
        elif e.get("work") in (WorkState.REFUSED.value, WorkState.FILES_ONLY.value,
                               WorkState.LOST.value):
            state += f" [red](work {e['work']})[/]"
        started = "-"
        if e["started_at"]:
            moment = datetime.fromisoformat(e["started_at"]).astimezone()
            same_day = moment.date() == datetime.now().astimezone().date()
            started = moment.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M")
        table.add_row(
            markup_safe(e["id"]), markup_safe(e["run_id"]), markup_safe(e["task_id"]), state,
            started,
            # A clock that stepped back must not show "-0.0s".
            "-" if e["duration_s"] is None else f"{max(e['duration_s'], 0.0):.1f}s",
            "-" if e["exit_code"] is None else str(e["exit_code"]),
        )
    return table


def html_report(store: Store, run_id: str, repo: MainRepo | None = None) -> str:
    """The run's HTML page, with every session's samples and manifest from the store and,
    given the repository, what each session changed, committed and printed, and the order
    its merges landed in."""
    from runtime.cli.html_report import render_html
    from runtime.cli.report_work import session_work, target_story

    report = store.run_report(run_id)
    rows = {r.id: r for r in store.list_sessions(run_id)}
    works = {s.id: session_work(repo, s) for s in report.sessions} if repo else None
    return render_html(report, {s.id: store.samples(s.id) for s in report.sessions},
                       {s.id: rows[s.id].manifest if s.id in rows else None
                        for s in report.sessions},
                       works, target_story(repo, report) if repo else None)


# -- the commands ----------------------------------------------------------------------------


def _stdout_console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=200)


def _write(data: bytes, decoder: codecs.IncrementalDecoder | None) -> None:
    if decoder is None:
        sys.stdout.buffer.write(data)
    else:
        sys.stdout.write(terminal_safe(decoder.decode(data)))
    sys.stdout.flush()


def _quiet_stdout() -> None:
    # Python would report the broken pipe again when it flushes stdout at exit.
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _tty_decoder() -> codecs.IncrementalDecoder | None:
    if not sys.stdout.isatty():
        return None
    return codecs.getincrementaldecoder("utf-8")(errors="replace")


@click.command()
@click.option("--all", "all_runs", is_flag=True, help="Sessions of every run.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list on stdout.")
@repo_option
def ps(all_runs: bool, as_json: bool, repo: str) -> None:
    """Sessions of this repository: the latest run's and any still running (--all: every run)."""
    main_repo = MainRepo(repo)
    try:
        store = open_store(main_repo)
    except NotFoundError:
        entries: list[dict[str, Any]] = []
    else:
        with store:
            runs = {r.id: r for r in store.list_runs()}
            now = time.time()
            entries = [session_summary(r, runs, now) for r in select_sessions(store, all_runs)]
            for entry in entries:  # how long a live interactive agent has been idle
                if entry["interactive"] and not SessionStatus(entry["status"]).is_final:
                    entry["idle_s"] = idle_seconds(store.samples(entry["id"]), now)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
    elif not entries:
        click.echo("no sessions", err=True)
    else:
        _stdout_console().print(ps_table(entries))


@click.command()
@click.argument("session")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the session ends.")
@repo_option
def logs(session: str, follow: bool, repo: str) -> None:
    """A session's output (SESSION: an id or a prefix; the running or latest one wins)."""
    from runtime.engine.discovery import get_client

    main_repo = MainRepo(repo)
    decoder = _tty_decoder()
    with open_store(main_repo) as store:
        row = resolve_session(store, session)
        try:
            for chunk in session_output(main_repo, store, row, follow, get_client):
                _write(chunk, decoder)
        except KeyboardInterrupt:
            sys.exit(130)
        except BrokenPipeError:  # `agentrt logs -f x | head`: the reader has had enough
            _quiet_stdout()
            return
    if decoder is not None:
        _write(b"", decoder)


@click.command()
@click.argument("session")
@click.option("--stat", is_flag=True, help="Only the files changed and how much.")
@repo_option
def diff(session: str, stat: bool, repo: str) -> None:
    """The session's branch against the commit it started from."""
    main_repo = MainRepo(repo)
    with open_store(main_repo) as store:
        row = store.find_session(session)
    if not row.status.is_final:
        click.echo(f"agentrt: {row.id} is {row.status.value}: its working tree now, read inside "
                   "its container; the branch gets it when the session ends", err=True)
    data = session_diff(main_repo, row, stat)
    if not sys.stdout.isatty():
        try:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_stdout()
        return
    styles = {"+": "green", "-": "red", "@": "cyan"}
    for line in terminal_safe(data.decode(errors="replace")).splitlines():
        header = line.startswith(("+++", "---", "diff ", "index "))
        click.secho(line, bold=header, fg=None if header or stat else styles.get(line[:1]))


@click.command()
@click.argument("run", default="latest")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the report as one self-contained HTML file.")
@click.option("--json", "as_json", is_flag=True, help="The JSON report alone on stdout.")
@repo_option
def report(run: str, html_path: Path | None, as_json: bool, repo: str) -> None:
    """The report of RUN (an id prefix, or `latest`)."""
    from runtime.cli.live_view import summary_table

    main_repo = MainRepo(repo)
    with open_store(main_repo) as store:
        run_id = resolve_run(store, run).id
        result = store.run_report(run_id)
        page = html_report(store, run_id, main_repo) if html_path else None
    if html_path is not None and page is not None:
        try:
            html_path.write_text(page, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--html {html_path}: {exc.strerror or exc}") from exc
        click.echo(f"agentrt: wrote {html_path}", err=True)
    if as_json:
        # ASCII JSON: C1 controls and bidi overrides in agent strings arrive as \u escapes.
        click.echo(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        _stdout_console().print(summary_table(result))


COMMANDS: list[click.Command] = [ps, logs, diff, report]
