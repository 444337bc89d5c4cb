"""``agentrt continue SESSION -p PROMPT``: the same agent, a follow-up prompt, the same branch
(:mod:`runtime.run.continuation` decides everything; this only shows it)."""

from __future__ import annotations

import signal
import sys
from typing import Any

import click

from runtime.cli.lookup import open_store, repo_option, resolve_session
from runtime.git.safe_git import MainRepo
from runtime.text import terminal_safe


@click.command("continue")
@click.argument("session")
@click.option("-p", "--prompt", required=True, help="The follow-up prompt.")
@click.option("--merge", "merge_strategy", type=click.Choice(["review", "auto", "none"]),
              help="Override the first run's merge mode.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report alone on stdout.")
@repo_option
def continue_cmd(session: str, prompt: str, merge_strategy: str | None, as_json: bool,
                 repo: str) -> None:
    """Give SESSION's agent a follow-up PROMPT: a new session of its task on its branch, from
    the branch's head, with its database and (where the CLI can resume) its conversation."""
    from runtime.cli.live_view import ProgressView
    from runtime.cli.manage import print_report
    from runtime.cli.session_output import last_output_line
    from runtime.run.continuation import continuation_run

    main_repo = MainRepo(repo)
    with open_store(main_repo) as store:  # a task id names its latest session
        session = resolve_session(store, session).id
    view = ProgressView(sys.stderr, 1)
    coordinator, task = continuation_run(session, prompt, repo=main_repo,
                                         merge=merge_strategy, listener=view)
    continuation = coordinator.continuations[task.id]
    click.echo(f"continuing {continuation.parent} on {terminal_safe(continuation.branch)} "
               f"from {continuation.head[:10]}", err=True)
    view.live_stats = coordinator.live_stats
    view.run_id = coordinator.run_id
    view.limits = {task.id: coordinator.config.limits_for(task)}
    view.tasks = {task.id: []}
    view.final_line = lambda result: last_output_line(main_repo, result.id)

    def on_signal(signum: int, frame: Any) -> None:
        view.stop_requested(forced=False)
        coordinator.cancel()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with view:
            report = coordinator.run_agents([task])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print_report(report, as_json)
    sys.exit(report.exit_code())


COMMANDS: list[click.Command] = [continue_cmd]
