"""``agentrt add RUN TASK_FILE`` (tasks handed to a live run) and ``agentrt mcp`` (the MCP
server a lead agent drives sub-agents through; runtime/cli/mcp_server.py)."""

from __future__ import annotations

import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from runtime.cli.lookup import open_store, repo_option, resolve_run
from runtime.config import Task, TaskFile, _describe
from runtime.errors import ConfigError
from runtime.git.safe_git import MainRepo
from runtime.text import terminal_safe


def read_added_tasks(path: Path) -> list[Task]:
    """The ``[[tasks]]`` of a file added to a live run (no ``[run]``: the run's settings are
    fixed). ConfigError naming the file, task and field; dependencies are checked against the
    run later (:func:`runtime.run.added_tasks.request_tasks`)."""
    try:
        raw: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: task file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read task file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    if "run" in raw:
        raise ConfigError(f"{path}: [run]: field run: a file added to a live run gives "
                          "[[tasks]] only (the run's settings are fixed); remove [run]")
    try:
        return TaskFile.model_validate(raw).tasks
    except ValidationError as exc:
        raise ConfigError(_describe(dict(exc.errors()[0]), raw, str(path))) from None


@click.command()
@click.argument("run_name", metavar="RUN")
@click.argument("task_file", type=click.Path(path_type=Path, dir_okay=False))
@repo_option
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds to wait for the run's owner to accept the tasks.")
def add(run_name: str, task_file: Path, repo: str, wait_s: float) -> None:
    """Add the tasks of TASK_FILE to the live run RUN (id prefix or `latest`). Exit 0 when
    the run's owner accepted every task, 2 when one is refused (nothing of it runs), 1 when
    the owner did not answer in time."""
    from runtime.run.added_tasks import request_tasks, wait_for_answers

    tasks = read_added_tasks(task_file)
    with open_store(MainRepo(repo)) as store:
        run = resolve_run(store, run_name)
        requests = request_tasks(store, run.id, tasks, str(task_file))
        got = wait_for_answers(store, run.id, requests, wait_s)
    code = 0
    for request, task in zip(requests, tasks, strict=True):
        found = got.get(request)
        if found is None:
            click.echo(f"{task.id}\tnot answered in {wait_s:g}s (see `agentrt ps`)", err=True)
            code = max(code, 1)
        elif found.error:
            click.echo(f"agentrt: {task_file}: task {task.id!r}: "
                       f"{terminal_safe(found.error)}", err=True)
            code = 2
        else:
            click.echo(f"{task.id}\tadded to run {run.id}")
    sys.exit(code)


@click.command()
@repo_option
@click.option("--http", "http", metavar="HOST:PORT",
              help="Serve streamable HTTP at HOST:PORT (needs --token-file) instead of stdio.")
@click.option("--token-file", type=click.Path(path_type=Path, dir_okay=False),
              help="File holding the bearer token HTTP clients must send.")
@click.option("--max-sessions", type=click.IntRange(min=0), help="Budget: sessions per run.")
@click.option("--max-cpu-seconds", type=click.FloatRange(min=0),
              help="Budget: CPU seconds of the run's sessions.")
@click.option("--max-tokens", type=click.IntRange(min=0),
              help="Budget: model tokens the run's sessions reported.")
@click.option("--merge-gate", metavar="COMMAND",
              help="A check each merge must pass on the merged result first, e.g. "
                   "'pytest -q' (split like a shell would; docs/merging.md).")
def mcp(repo: str, http: str | None, token_file: Path | None, max_sessions: int | None,
        max_cpu_seconds: float | None, max_tokens: int | None, merge_gate: str | None) -> None:
    """Serve an MCP server for this repository: a lead agent starts, watches, reads, merges,
    reverts and discards isolated sessions (stdio by default). See docs/mcp.md."""
    from runtime.cli.mcp_server import serve
    from runtime.run.budget import RunBudget

    gate = shlex.split(merge_gate) if merge_gate else None
    if merge_gate is not None and not gate:
        raise ConfigError("--merge-gate: give a command, e.g. --merge-gate 'pytest -q'")
    serve(MainRepo(repo), http=http, token_file=token_file,
          budget=RunBudget(max_sessions, max_cpu_seconds, max_tokens), merge_gate=gate)


COMMANDS: list[click.Command] = [add, mcp]
