"""The ``agentrt`` command line: a thin layer over the library; the only module that exits.

Errors are one line on stderr saying what to do, exit code 2, no traceback (``--debug``
shows it). Exit codes of ``run`` and ``merge`` follow the interface: 0, 1, 2, 3, 130.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, get_args

import click
from rich.console import Console

from runtime.cli.lookup import open_store, repo_option
from runtime.cli.one_off import one_off_options, one_off_task_file
from runtime.config import EngineKind, MergeStrategy, branch_name_problem, load_task_file
from runtime.errors import AgentRuntimeError
from runtime.limits import MAX_CONCURRENT_AGENTS
from runtime.models import SessionStatus
from runtime.text import markup_safe, terminal_safe

err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    """Print one clear line (detail lines indented under it) and exit."""
    # Controls shown escaped; a line break in the message (git's or an agent's words) can only
    # start an indented detail line, never a line of its own.
    text = terminal_safe(message, multiline=True).replace("\n", "\n  ")
    err.print(f"agentrt: {text}", style="red", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


def warn(message: str) -> None:
    """Print one warning line on stderr (agent-influenced text made safe)."""
    err.print(f"agentrt: warning: {terminal_safe(message)}", style="yellow", markup=False,
              highlight=False, soft_wrap=True)


def detach_from_terminal(fds: list[int]) -> None:
    """Point ``fds`` (those of stdout and stderr that were a terminal) at /dev/null: after
    SIGHUP the terminal is gone, and writing to it (EIO) would break the run while it stops
    and releases. (A hung-up terminal no longer says it is one: ``fds`` are found before.)"""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class AgentrtGroup(click.Group):
    """Turns library errors into one line and exit 2 (traceback only with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AgentRuntimeError as exc:
            if os.environ.get("AGENTRT_DEBUG"):
                raise
            fail(str(exc))


@click.group(cls=AgentrtGroup)
@click.version_option(package_name="agentrt", prog_name="agentrt")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def main(debug: bool) -> None:
    """Run several coding agents at once on one git repository, each isolated."""
    if debug:
        os.environ["AGENTRT_DEBUG"] = "1"


@main.command()
@click.argument("task_file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@repo_option
@click.option("--max-concurrent", type=click.IntRange(min=1, max=MAX_CONCURRENT_AGENTS),
              help="Override max_concurrent_agents.")
@click.option("--merge", "merge_strategy", type=click.Choice(get_args(MergeStrategy)))
@click.option("--engine", type=click.Choice(get_args(EngineKind)),
              help="Override [run] engine: swarm runs sessions as services of the Swarm the "
              "engine (DOCKER_HOST) manages.")
@click.option("--target", metavar="BRANCH",
              help="Override [run] target: the branch merges go into (default: the one "
              "checked out).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report alone on stdout.")
@click.option("-i", "--interactive", is_flag=True,
              help="Run every task's agent with a terminal, for `agentrt attach`.")
@one_off_options
def run(task_file: Path | None, repo: str, max_concurrent: int | None,
        merge_strategy: str | None, engine: str | None, target: str | None, as_json: bool,
        interactive: bool, prompt: str | None, **one_off: Any) -> None:
    """Run the tasks of TASK_FILE, or one task given by -p PROMPT --agent PRESET; live
    progress on stderr; final report."""
    from runtime.cli.live_view import ProgressView
    from runtime.cli.session_output import last_output_line
    from runtime.git.directory_mode import open_repo
    from runtime.run.coordinator import AgentCoordinator

    given = [k for k, v in one_off.items() if v not in (None, ())]
    if task_file is not None and (prompt is not None or given):
        fail("give a TASK_FILE or -p PROMPT with its flags, not both")
    if task_file is None and prompt is None:
        fail("give a TASK_FILE, or -p PROMPT --agent PRESET for one task without a file")
    parsed = load_task_file(task_file) if task_file is not None else \
        one_off_task_file(prompt or "", **one_off)
    updates: dict[str, Any] = {}
    if max_concurrent:
        updates["max_concurrent_agents"] = max_concurrent
    if merge_strategy:
        updates["merge"] = merge_strategy
    if engine:
        updates["engine"] = engine
    if target is not None:
        problem = branch_name_problem(target)
        if problem:
            fail(f"--target: invalid branch name {target!r}: {problem}")
        updates["target"] = target
    config = parsed.run.with_overrides(**updates)
    if interactive:
        parsed = parsed.model_copy(update={"tasks": [
            t.model_copy(update={"interactive": True}) for t in parsed.tasks]})
    for task in parsed.tasks:
        if task.interactive:  # a prefix names its live session
            err.print(f"{task.id}: interactive: `agentrt attach {task.id}` (detach: ctrl-p "
                      "ctrl-q)", highlight=False, markup=False, soft_wrap=True)
    main_repo = open_repo(repo, config.isolation_strategy)  # a folder: its private repository
    view = ProgressView(sys.stderr, len(parsed.tasks))
    coordinator = AgentCoordinator(config=config, repo=main_repo, listener=view)
    # Environment builds (in preflight, before the live view) show their steps.
    coordinator.build_log = lambda line: err.print(terminal_safe(line), highlight=False,
                                                   markup=False, soft_wrap=True)
    view.live_stats = coordinator.live_stats
    view.run_id = coordinator.run_id
    view.limits = {t.id: config.limits_for(t) for t in parsed.tasks}
    view.tasks = {t.id: list(t.deps) for t in parsed.tasks}
    view.final_line = lambda result: last_output_line(main_repo, result.id)
    # Refuses (exit 2) what cannot work, an automatic merge's target among it, before any
    # agent starts.
    coordinator.preflight(parsed.tasks)

    interrupts = 0
    terminal_fds = [fd for fd in (1, 2) if os.isatty(fd)]

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal interrupts
        if signum == signal.SIGHUP:
            detach_from_terminal(terminal_fds)
        interrupts += 1
        # Through the view: on a terminal a line printed here would be drawn over by the table.
        view.stop_requested(forced=interrupts > 1)
        coordinator.cancel(force=interrupts > 1)

    # A closed terminal (SIGHUP) or a service manager (SIGTERM) stops the run as Ctrl-C does:
    # the sessions stop, their work is kept, everything is released.
    previous = {s: signal.signal(s, on_signal)
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with view:
            report = coordinator.run_agents(parsed.tasks)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if report.auto_merge_missed and report.merge_refused is None and not report.interrupted:
        from runtime.git.merge import auto_merge_blocker, missed_merge_reason

        report.merge_refused = missed_merge_reason(
            report.warnings, auto_merge_blocker(main_repo, config.target), None)
    from runtime.cli.manage import print_report

    print_report(report, as_json)
    if report.merge_refused is not None and report.exit_code() == 3:
        branches = ", ".join(s.branch for s in report.sessions
                             if s.status is SessionStatus.SUCCEEDED and s.merge.status != "merged")
        warn(f"not merged: {report.merge_refused}; the work is on {branches or 'its branches'}")
    # The hint works from any directory: it names the repository unless it is the current one.
    # Piped, it stays one line (for scripts); on a terminal it wraps at the terminal's width.
    where = "" if Path.cwd().resolve() == Path(report.repo) else \
        f" --repo {shlex.quote(report.repo)}"
    err.print(f"run {report.run_id}: `agentrt report {report.run_id}{where}` shows it again",
              highlight=False, markup=False, soft_wrap=not err.is_terminal)
    sys.exit(report.exit_code())


@main.command()
@click.option("--repo", default=".", show_default=True,
              help="Also report this repository's volumes kept for a retry (if it is one).")
@click.option("--node", "nodes", multiple=True, metavar="URL",
              help="A Swarm node's engine (tcp://HOST:PORT), repeatable: compare its "
                   "agentrt/base with the manager's (default: $AGENTRT_SWARM_NODES).")
def doctor(repo: str, nodes: tuple[str, ...]) -> None:
    """Check the Docker engine, git, cgroups, disk-limit support, gVisor, images and Swarm."""
    from runtime.backends.registry import node_addresses
    from runtime.engine.discovery import get_client
    from runtime.errors import ConfigError
    from runtime.git.safe_git import MainRepo
    from runtime.run.doctor import run_checks

    try:
        state_dir: Path | None = MainRepo(repo).state_dir
    except ConfigError:
        state_dir = None  # not a repository: the engine and host checks only
    checks = run_checks(get_client, state_dir, node_addresses(nodes))
    worst = 0
    for check in checks:
        color = {"ok": "green", "warn": "yellow", "fail": "red"}[check.status]
        line = (f"[{color}]{check.status:>4}[/] {markup_safe(check.name)}: "
                f"{markup_safe(check.detail)}")
        if check.fix and check.status != "ok":
            line += f"\n      → {markup_safe(check.fix)}"
        Console().print(line, highlight=False, soft_wrap=True)
        worst = max(worst, {"ok": 0, "warn": 0, "fail": 1}[check.status])
    sys.exit(worst)


@main.group()
def images() -> None:
    """Build and list agentrt images."""


@images.command("build")
@click.argument("name", required=False, default="base")
@click.option("--force", is_flag=True, help="Rebuild even if the recipe did not change.")
@click.option("--file", "task_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Build the environments of this task file's tasks instead "
                   "(docs/environments.md), at its base commit of --repo.")
@repo_option
def images_build(name: str, force: bool, task_file: Path | None, repo: str) -> None:
    """Build image NAME (default: base), only if its recipe changed; or, with --file, the
    environments of a task file (each only if its inputs changed)."""
    from runtime.engine.discovery import get_client
    from runtime.engine.image_build import build_image

    if task_file is not None:
        from runtime.cli.env_images import build_task_file_environments

        build_task_file_environments(task_file, repo)
        return

    built = build_image(get_client(), name, force=force,
                        log=lambda line: err.print(terminal_safe(line), highlight=False,
                                                   markup=False))
    state = "built" if built.rebuilt else "up to date"
    click.echo(f"{built.ref}: {state} ({built.digest})")


@images.command("ls")
@click.option("--json", "as_json", is_flag=True)
def images_ls(as_json: bool) -> None:
    """List agentrt images with their digests."""
    from runtime.cli.env_images import print_env_images
    from runtime.engine.discovery import get_client
    from runtime.engine.images import list_images

    found = list_images(get_client())
    if as_json:
        rows: list[dict[str, Any]] = [asdict(i) for i in found]
        rows += [{**env, "name": "env"} for env in print_env_images(as_json=True)]
        click.echo(json.dumps(rows, indent=2))
        return
    for image in found:
        state = "current" if image.current else "stale"
        click.echo(f"{image.ref or '(untagged)'}\t{image.digest}\t{image.recipe_hash[:12]}\t"
                   f"{state}")
    print_env_images(as_json=False)


@images.command("export")
@click.argument("session")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@repo_option
def images_export(session: str, file: Path, repo: str) -> None:
    """Save the exact image a session ran in to FILE (load it elsewhere with `docker load`)."""
    from runtime.engine.discovery import get_client
    from runtime.engine.images import export_image
    from runtime.git.safe_git import MainRepo
    main_repo = MainRepo(repo)
    with open_store(main_repo) as store:
        manifest = store.find_session(session).manifest
    if manifest is None or not manifest.image_digest:
        fail(f"session {session} recorded no image digest")
        return
    export_image(get_client(), manifest.image_digest, manifest.image, file)
    click.echo(f"saved {manifest.image} ({manifest.image_digest}) to {file}")


@images.command("push-nodes")
@click.argument("ref", required=False, default="agentrt/base:latest")
@click.option("--node", "nodes", multiple=True, metavar="URL",
              help="A Swarm node's engine, e.g. tcp://10.0.0.2:2375; repeatable "
                   "(default: $AGENTRT_SWARM_NODES, separated by commas or spaces).")
@click.option("--json", "as_json", is_flag=True)
def images_push_nodes(ref: str, nodes: tuple[str, ...], as_json: bool) -> None:
    """Load image REF (default agentrt/base:latest) from this engine onto each Swarm node by
    `docker save | docker load` (no registry needed), then check its id on every node."""
    from runtime.backends.registry import node_addresses, push_image_to_nodes
    from runtime.engine.discovery import get_client

    results = push_image_to_nodes(get_client(), ref, node_addresses(nodes),
                         log=lambda line: err.print(terminal_safe(line), highlight=False,
                                                    markup=False))
    if as_json:
        click.echo(json.dumps([asdict(r) for r in results], indent=2))
    for r in results if not as_json else []:
        state = ("loaded" if r.loaded else "already there") if r.matches else "FAILED"
        detail = r.image_id[:19] if r.matches else r.error
        click.echo(f"{r.address}\t{state}\t{terminal_safe(detail)}\t{r.seconds:.1f}s")
    sys.exit(0 if all(r.matches for r in results) else 1)


def _register_commands() -> None:
    # Verbs live in modules of their own; registering them imports only click-level code.
    from runtime.cli import attach as cli_attach
    from runtime.cli import continue_cmd as cli_continue
    from runtime.cli import inspect as cli_inspect
    from runtime.cli import manage as cli_manage
    from runtime.cli import revert as cli_revert
    from runtime.cli import session_verbs as cli_session
    from runtime.cli.env_images import images_prune

    for command in (*cli_inspect.COMMANDS, *cli_manage.COMMANDS, *cli_revert.COMMANDS,
                    *cli_session.COMMANDS, *cli_continue.COMMANDS, *cli_attach.COMMANDS):
        main.add_command(command)
    from runtime.cli import mcp_cmd  # noqa: E402 - agentrt add, agentrt mcp
    for command in mcp_cmd.COMMANDS:
        main.add_command(command)
    images.add_command(images_prune)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
