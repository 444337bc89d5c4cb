"""``agentrt revert SESSION|RUN``: undo a session's merge on the target (see runtime.run.revert)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

import click

from runtime.cli.lookup import repo_option
from runtime.git.safe_git import MainRepo
from runtime.text import terminal_safe


@click.command()
@click.argument("name")
@repo_option
@click.option("--target", help="Branch to revert on (default: the run's target).")
@click.option("--json", "as_json", is_flag=True, help="Print what was reverted as JSON.")
def revert(name: str, repo: str, target: str | None, as_json: bool) -> None:
    """Revert the merge commit of session NAME on the target, in one new commit (or of every
    merged session of run NAME, newest first). Exit 3 on conflict, nothing changed."""
    from runtime.run.revert import RevertConflictError, revert_session

    try:
        done = revert_session(name, MainRepo(repo), target=target)
    except RevertConflictError as exc:
        click.echo(f"agentrt: {terminal_safe(str(exc))}", err=True)
        for session, conflicts in exc.conflicts.items():
            for conflict in conflicts:
                click.echo(f"  {terminal_safe(session)}: {terminal_safe(conflict.path)} "
                           f"({terminal_safe(conflict.kind)})", err=True)
        sys.exit(3)
    if as_json:
        click.echo(json.dumps([asdict(item) for item in done], indent=2))
        return
    for item in done:
        click.echo(f"reverted {item.session_id} (task {item.task_id}): merge "
                   f"{item.merge_commit[:10]} undone by {item.revert_commit[:10]} on "
                   f"{terminal_safe(item.target)}")


COMMANDS: list[click.Command] = [revert]
