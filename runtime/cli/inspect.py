"""CLI verbs that look at runs and sessions: ``ps``, ``logs``, ``diff``, ``report``.

They only read: the state database (safe while a run writes to it), the saved logs, the
session containers (through the docker SDK) and the repository (through :func:`run_git`).
Each command is a thin layer over the small functions below. Agent output and agent-written
files are data: on a terminal their control characters are shown escaped, never interpreted.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from runtime import paths
from runtime.errors import ConfigError, GitError, NotFoundError
from runtime.git.safe_git import MainRepo, run_git
from runtime.models import SessionStatus, WorkState
from runtime.text import markup_safe
from runtime.text import terminal_safe as _safe

if TYPE_CHECKING:
    import docker

    from runtime.cli.html_report import FileChange, SessionWork, TargetStory
    from runtime.models import RunReport, SessionResult
    from runtime.state.store import RunRow, SessionRow, Store

F = TypeVar("F", bound=Callable[..., Any])

FOLLOW_POLL_S = 0.5
TAIL_BYTES = 64 * 1024
MAX_FILES, MAX_COMMITS, MAX_HISTORY = 200, 50, 10_000  # what the report lists at most


# -- library: what the commands do -----------------------------------------------------------


def open_store(repo: MainRepo) -> Store:
    """The repository's state database; NotFoundError if agentrt never ran here."""
    from runtime.state.store import Store

    path = paths.state_db(repo.state_dir)
    if not path.exists():
        raise NotFoundError(f"no agentrt runs in {repo.root} yet")
    return Store(path)


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
        duration = round(now - started, 1)
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
    }


def ps_table(entries: list[dict[str, Any]]) -> Table:
    """The ``ps`` table: session, run, task, state, branch, started, duration, exit.

    The run id is what ``agentrt stop``, ``report`` and ``merge`` take."""
    from runtime.cli.live_view import STATUS_STYLE

    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("session", "run", "task", "state", "branch", "started", "duration", "exit"):
        table.add_column(col, no_wrap=col != "branch")
    for e in entries:
        status = SessionStatus(e["status"])
        state = f"[{STATUS_STYLE[status]}]{status.value}[/]"
        if e["owner_alive"] is False:
            state += " [red](owner gone)[/]"
        if e.get("work") == WorkState.KEPT.value:
            state += (f" [yellow](work kept, {e['kept_bytes'] // (1024 * 1024)} MiB: "
                      f"agentrt recover {markup_safe(e['id'])})[/]")
        elif e.get("work") in (WorkState.REFUSED.value, WorkState.FILES_ONLY.value):
            state += f" [red](work {e['work']})[/]"
        started = "-"
        if e["started_at"]:
            moment = datetime.fromisoformat(e["started_at"]).astimezone()
            same_day = moment.date() == datetime.now().astimezone().date()
            started = moment.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M")
        table.add_row(
            markup_safe(e["id"]), markup_safe(e["run_id"]), markup_safe(e["task_id"]), state,
            markup_safe(e["branch"] or "-"), started,
            "-" if e["duration_s"] is None else f"{e['duration_s']:.1f}s",
            "-" if e["exit_code"] is None else str(e["exit_code"]),
        )
    return table


def saved_log_path(repo: MainRepo, session_id: str) -> Path:
    """Where a finished session's output is kept."""
    return paths.log_path(repo.state_dir, session_id)


def saved_log_tail(repo: MainRepo, session_id: str, lines: int = 20) -> list[str]:
    """The last ``lines`` lines of a session's saved output (as text, not yet made safe to
    show: callers pass them through :mod:`runtime.text` or HTML escaping). Empty when none
    was saved. Reads only the end of the file."""
    path = saved_log_path(repo, session_id)
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - TAIL_BYTES))
            data = f.read()
    except OSError:
        return []
    text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
    found = text.split("\n")
    if size > TAIL_BYTES:
        found = found[1:]  # the first one is probably cut
    while found and not found[-1].strip():
        found.pop()
    return found[-lines:] if lines else []


def last_output_line(repo: MainRepo, session_id: str) -> str:
    """A finished session's last non-blank output line (for the live view), else ''."""
    return next((ln for ln in reversed(saved_log_tail(repo, session_id, 20)) if ln.strip()), "")


def session_output(repo: MainRepo, store: Store, row: SessionRow, follow: bool,
                   client: Callable[[], docker.DockerClient] | None = None) -> Iterator[bytes]:
    """A session's output as the process that owns its run saved it (secrets redacted there).

    Never asks the container or depends on this process's environment: the owner writes the
    log as the output arrives (``runtime.state.log_keeper``). With ``follow`` the output of a
    pending or running session streams until the session ends (or its owner dies).
    ``client`` is accepted for compatibility and not used.
    """
    from runtime.state.log_keeper import follow_log

    path = saved_log_path(repo, row.id)
    if not follow or row.status.is_final:
        with contextlib.suppress(FileNotFoundError):
            yield path.read_bytes()
        return
    yield from follow_log(path, lambda: _session_over(store, row.id))


def _session_over(store: Store, session_id: str) -> bool:
    """True once the session is final, or nobody is left to finish it (its owner died)."""
    from runtime.state.liveness import owner_alive

    row = store.get_session(session_id)
    if row.status.is_final:
        return True
    return row.owner_pid is not None and not owner_alive(row.owner_pid, row.owner_start_time)


def terminal_safe(text: str) -> str:
    """Many-line ``text`` (a log, a diff) safe for a terminal: lines and tabs kept, every other
    control character shown escaped. The rules live in :func:`runtime.text.terminal_safe`."""
    return _safe(text, multiline=True)


def session_diff(repo: MainRepo, row: SessionRow, stat: bool = False) -> bytes:
    """``git diff <base commit> <branch head>`` of a session, as bytes (content is data).

    External diff drivers and textconv filters are off. The branch's current head is used; if
    the branch is gone, the head recorded when the session ended. A running session is asked
    inside its own container (:func:`runtime.git.live_tree.live_diff`): the host never reads it.
    """
    result = row.result
    if not row.status.is_final and row.container_id and result.base_commit:
        live = _live_diff(row.container_id, result.base_commit, stat)
        if live is not None:
            return live
    head = (repo.branch_head(row.branch) if row.branch else None) or result.head_commit
    if not result.base_commit or not head:
        raise NotFoundError(f"session {row.id} has no branch to diff ({row.status.value})")
    # --output keeps the bytes as git wrote them: agent files need not be UTF-8.
    with tempfile.TemporaryDirectory(prefix="agentrt-diff-") as tmp:
        out = Path(tmp) / "diff"
        run_git(["diff", "--no-ext-diff", "--no-textconv", "--no-color", f"--output={out}",
                 *(["--stat"] if stat else []), result.base_commit, head, "--"],
                git_dir=repo.git_dir, cwd=repo.git_dir)
        return out.read_bytes()


def _live_diff(container_id: str, base: str, stat: bool) -> bytes | None:
    """The diff of a running session from inside its container; None if it is not running."""
    import docker.errors

    from runtime.engine.container import AgentContainer
    from runtime.engine.discovery import get_client
    from runtime.errors import AgentRuntimeError
    from runtime.git.live_tree import live_diff
    from runtime.run.session import agent_ids

    try:
        client = get_client()
        container = AgentContainer(client, client.containers.get(container_id))
        uid, gid = agent_ids()
        return live_diff(container, f"{uid}:{gid}", base, stat)
    except (AgentRuntimeError, docker.errors.DockerException):  # gone or stopping: the branch
        return None


def resolve_session(store: Store, prefix: str) -> SessionRow:
    """The session named by an id or a prefix, preferring what a user most likely means.

    An exact id, or a prefix matching one session, names it. A prefix matching several (the
    task ``lint`` in two runs: ``lint-3f2a1c`` and ``lint-9b0e7d``) names the one still
    pending or running, else the one of the latest run among those matched; only if that
    leaves more than one is it ambiguous (NotFoundError listing them).
    """
    if not prefix:
        raise NotFoundError("no session matches ''")
    matches = [r for r in store.list_sessions() if r.id.startswith(prefix)]
    exact = [r for r in matches if r.id == prefix]
    if exact:
        return exact[0]
    if not matches:
        raise NotFoundError(f"no session matches '{prefix}'")
    live = [r for r in matches if not r.status.is_final]
    if len(live) == 1:
        return live[0]
    if not live:
        order = {run.id: n for n, run in enumerate(store.list_runs())}
        newest = max(order.get(r.run_id, -1) for r in matches)
        live = [r for r in matches if order.get(r.run_id, -1) == newest]
        if len(live) == 1:
            return live[0]
    ids = sorted(r.id for r in live)
    names = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
    raise NotFoundError(f"'{prefix}' is ambiguous: matches {names}")


def resolve_run(store: Store, name: str) -> RunRow:
    """The run named by an id prefix, or ``latest``."""
    if name == "latest":
        run = store.latest_run()
        if run is None:
            raise NotFoundError("no runs yet")
        return run
    return store.find_run(name)


def html_report(store: Store, run_id: str, repo: MainRepo | None = None) -> str:
    """The run's HTML page, with every session's samples and manifest from the store and,
    given the repository, what each session changed, committed and printed, and the order
    its merges landed in."""
    from runtime.cli.html_report import render_html

    report = store.run_report(run_id)
    rows = {r.id: r for r in store.list_sessions(run_id)}
    works = {s.id: session_work(repo, s) for s in report.sessions} if repo else None
    return render_html(report, {s.id: store.samples(s.id) for s in report.sessions},
                       {s.id: rows[s.id].manifest if s.id in rows else None
                        for s in report.sessions},
                       works, target_story(repo, report) if repo else None)


def session_work(repo: MainRepo, result: SessionResult, lines: int = 20) -> SessionWork:
    """What a session did, read on the host from its branch in the repository
    (``git diff --numstat base..branch``, ``git log base..branch``) and its saved output's
    last ``lines`` lines. The texts are the agent's: the page escapes them."""
    from runtime.cli.html_report import Commit, SessionWork

    work = SessionWork(output=saved_log_tail(repo, result.id, lines))
    head = (repo.branch_head(result.branch) if result.branch else None) or result.head_commit
    if not result.base_commit or not head:
        return work
    work.head = head
    try:
        numstat = run_git(["diff", "--no-ext-diff", "--no-textconv", "--no-color", "--numstat",
                           "-z", "-M", "--end-of-options", result.base_commit, head, "--"],
                          git_dir=repo.git_dir, cwd=repo.git_dir).stdout
        log = run_git(["log", "--no-color", f"--max-count={MAX_COMMITS + 1}",
                       "--format=%H%x1f%an%x1f%s%x00", "--end-of-options",
                       f"{result.base_commit}..{head}", "--"],
                      git_dir=repo.git_dir, cwd=repo.git_dir).stdout
    except GitError:  # a base or branch gone from the repository: say nothing rather than fail
        return work
    files = parse_numstat(numstat)
    work.files, work.more_files = files[:MAX_FILES], max(0, len(files) - MAX_FILES)
    commits = []
    for record in log.split("\x00"):
        fields = record.lstrip("\n").split("\x1f", 2)
        if len(fields) == 3:
            commits.append(Commit(commit=fields[0], author=fields[1], subject=fields[2]))
    work.commits = commits[:MAX_COMMITS]
    work.more_commits = max(0, len(commits) - MAX_COMMITS)
    if len(commits) > MAX_COMMITS:
        count = run_git(["rev-list", "--count", "--end-of-options",
                         f"{result.base_commit}..{head}", "--"],
                        git_dir=repo.git_dir, cwd=repo.git_dir, check=False).stdout.strip()
        work.more_commits = int(count) - MAX_COMMITS if count.isdigit() else 1
    return work


def parse_numstat(output: str) -> list[FileChange]:
    """``git diff --numstat -z`` records: ``A<TAB>D<TAB>path<NUL>``, or for a rename
    ``A<TAB>D<TAB><NUL>old<NUL>new<NUL>``; ``-`` counts mean a binary file."""
    from runtime.cli.html_report import FileChange

    tokens = output.split("\x00")
    changes: list[FileChange] = []
    i = 0
    while i < len(tokens):
        fields = tokens[i].lstrip("\n").split("\t", 2)
        i += 1
        if len(fields) != 3:
            continue
        added, deleted, path = fields
        old = None
        if not path and i + 1 < len(tokens):
            old, path = tokens[i], tokens[i + 1]
            i += 2
        changes.append(FileChange(path, int(added) if added.isdigit() else None,
                                  int(deleted) if deleted.isdigit() else None, old))
    return changes


def target_story(repo: MainRepo, report: RunReport) -> TargetStory:
    """The run's merged sessions in the order their merge commits landed on the target
    (first-parent history), and where the target is now. Merges no longer on the target
    (rewritten, or merged elsewhere) follow, in merge order."""
    from runtime.cli.html_report import TargetStory
    from runtime.run.merging import merge_order

    merged = [s for s in merge_order(report.sessions) if s.merge.status == "merged"]
    head = repo.branch_head(report.target) if report.target else None
    position: dict[str, int] = {}
    if head and merged:
        history = run_git(["rev-list", "--first-parent", f"--max-count={MAX_HISTORY}",
                           "--end-of-options", head, "--"],
                          git_dir=repo.git_dir, cwd=repo.git_dir, check=False).stdout.split()
        position = {commit: -n for n, commit in enumerate(history)}
    ranked = sorted(enumerate(merged), key=lambda item: (
        item[1].merge.merge_commit not in position,
        position.get(item[1].merge.merge_commit or "", 0), item[0]))
    return TargetStory([s.id for _, s in ranked], head)


# -- the commands ----------------------------------------------------------------------------


def repo_option(func: F) -> F:
    """The ``--repo PATH`` option every verb takes."""
    return click.option("--repo", default=".", show_default=True,
                        help="The git repository.")(func)


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
