"""CLI verbs that act on runs and sessions: stop, gc, recover, discard, merge, replay, shell,
colima up."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import click

from runtime.cli.lookup import open_store, repo_option
from runtime.errors import ConfigError, NotFoundError
from runtime.git.safe_git import MainRepo
from runtime.models import RunReport
from runtime.text import terminal_safe


def print_report(report: RunReport, as_json: bool) -> None:
    """The report alone on stdout as JSON, or the summary table (wide when piped)."""
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    from rich.console import Console

    from runtime.cli.live_view import summary_table

    Console(width=None if sys.stdout.isatty() else 200).print(summary_table(report))


@click.command()
@click.argument("target")
@repo_option
@click.option("--grace", default=10, show_default=True, help="Seconds between SIGTERM and SIGKILL.")
def stop(target: str, repo: str, grace: int) -> None:
    """Stop a session or a whole run (TARGET: id or unique prefix); work stays on branches."""
    from runtime.run.stop import stop_target

    main_repo = MainRepo(repo)
    with open_store(main_repo) as store:
        stopped = stop_target(main_repo, store, target, grace)
    click.echo("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))


@click.command()
@click.argument("session")
@repo_option
@click.option("--json", "as_json", is_flag=True)
def recover(session: str, repo: str, as_json: bool) -> None:
    """Bring a session's kept work home now (retry its harvest), then free its volume."""
    from runtime.backends.recovery import collect_garbage
    from runtime.engine.discovery import get_client

    main_repo = MainRepo(repo)
    with open_store(main_repo) as store:
        row = store.find_session(session)
    report = collect_garbage(main_repo, get_client(), only_session=row.id)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    elif row.id in report.skipped_live:
        click.echo(f"{row.id} is still running: its work comes home when it ends")
    for branch, head in report.saved_branches.items():
        if not as_json:
            click.echo(f"{row.id}: work home on {terminal_safe(branch)} at {head[:10]}")
    for why in report.lost_work.values():
        click.echo(f"agentrt: {row.id}: {terminal_safe(why)}", err=True)
    for error in report.errors:
        click.echo(f"agentrt: {terminal_safe(error)}", err=True)
    sys.exit(1 if report.errors or report.lost_work else 0)


@click.command()
@click.argument("session")
@repo_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def discard(session: str, repo: str, yes: bool) -> None:
    """Remove a kept session's volume, bundles and container without harvesting it again.

    For a session whose work is kept for a retry (or refused) that you do not want: `gc` and
    `recover` would run its harvest again. Its branch stays where it is.
    """
    from runtime.backends.recovery import collect_garbage
    from runtime.engine.discovery import get_client

    main_repo = MainRepo(repo)
    with open_store(main_repo) as store:
        row = store.find_session(session)
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError(f"discard {row.id}: not a terminal; pass --yes to confirm")
        click.confirm(f"Discard session {row.id} (its volume and any work not on "
                      f"{terminal_safe(row.branch)})?", abort=True)
    report = collect_garbage(main_repo, get_client(), only_session=row.id, discard=True)
    if row.id in report.skipped_live:
        click.echo(f"{row.id} is still running: stop it first (`agentrt stop {row.id}`)",
                   err=True)
        sys.exit(1)
    for error in report.errors:
        click.echo(f"agentrt: {terminal_safe(error)}", err=True)
    if not report.errors:
        click.echo(f"discarded {row.id}; its branch {terminal_safe(row.branch)} is unchanged")
    sys.exit(1 if report.errors else 0)


@click.command()
@repo_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--repair-state", is_flag=True,
              help="First, if the state database is damaged or lost, move it aside and rebuild "
                   "runs and sessions from the agent/* branches, session markers and logs.")
@click.option("--merged-branches", is_flag=True,
              help="Also delete the branches of finished sessions their run's target contains.")
def gc(repo: str, as_json: bool, repair_state: bool, merged_branches: bool) -> None:
    """Find and remove leftovers of dead or finished sessions (never live ones, never a branch
    with an agent's work unless --merged-branches and its target contains it)."""
    from runtime.backends.recovery import collect_garbage
    from runtime.engine.discovery import get_client
    from runtime.errors import EngineError
    from runtime.state.repair import repair_state as repair

    main_repo = MainRepo(repo)
    repaired = repair(main_repo) if repair_state else None
    try:
        client = get_client()
    except EngineError as exc:
        client = None
        click.echo(f"agentrt: {exc}; collecting what is on disk only", err=True)
    report = collect_garbage(main_repo, client)
    deleted: list[str] = []
    if merged_branches:
        from runtime.run.removal import delete_merged_branches

        with open_store(main_repo) as store:
            deleted = delete_merged_branches(main_repo, store)
    if as_json:
        out = report.as_dict()
        out["deleted_branches"] = deleted
        if repaired is not None:
            out["repair"] = repaired.as_dict()
        click.echo(json.dumps(out, indent=2))
    else:
        if repaired is not None and repaired.damage is None:
            click.echo("state database: healthy, nothing to repair")
        elif repaired is not None:
            aside = (f"moved aside to {repaired.moved_aside[0]}" if repaired.moved_aside
                     else "it was missing")
            click.echo(f"state database repaired: {aside}; "
                       f"kept {len(repaired.kept_runs)} runs and {len(repaired.kept_sessions)} "
                       f"sessions; rebuilt {len(repaired.rebuilt_runs)} runs and "
                       f"{len(repaired.rebuilt_sessions)} sessions (crashed: final status "
                       "unknown)")
        click.echo(f"removed {len(report.removed_containers)} containers, "
                   f"{len(report.removed_sessions)} session volumes; "
                   f"saved {len(report.saved_branches)} branches; "
                   f"left {len(report.skipped_live)} live sessions alone")
        for branch, head in report.saved_branches.items():
            click.echo(f"  saved {branch} at {head[:10]}")
        for branch in report.removed_branches:
            click.echo(f"  removed {terminal_safe(branch)} (its agent never started)")
        for session_id, why in report.lost_work.items():
            click.echo(f"  lost {session_id}: {terminal_safe(why)}")
        for session_id in report.forgotten_prepared:
            click.echo(f"  forgot {session_id} (prepared ahead; its run died before it ran)")
        if merged_branches:
            click.echo(f"deleted {len(deleted)} merged branches")
        for error in report.errors:
            click.echo(f"  error: {error}", err=True)
    sys.exit(1 if report.errors else 0)


@click.command()
@click.argument("names", nargs=-1, required=True, metavar="RUN|SESSION...")
@repo_option
@click.option("--strategy", type=click.Choice(["auto", "review"]), default="review",
              show_default=True)
@click.option("--target", help="Branch to merge into (default: the run's target).")
@click.option("--no-gate", is_flag=True,
              help="Land without running the run's merge_gate (recorded as skipped).")
@click.option("--json", "as_json", is_flag=True)
def merge(names: tuple[str, ...], repo: str, strategy: str, target: str | None, no_gate: bool,
          as_json: bool) -> None:
    """Merge (auto) or check (review) a finished run's branches, or only the named sessions,
    into the target; an automatic merge runs the run's merge gate on each would-be merge
    result first."""
    from runtime.cli.lookup import resolve_run, sessions_named
    from runtime.run.merging import merge_run, merge_sessions

    main_repo = MainRepo(repo)
    with open_store(main_repo) as store:
        if len(names) == 1:
            try:
                run = resolve_run(store, names[0])
            except NotFoundError:
                run = None
            if run is not None:
                report = merge_run(main_repo, store, run.id, strategy,  # type: ignore[arg-type]
                                   target, gate=not no_gate)
                print_report(report, as_json)
                sys.exit(report.exit_code())
        ids = [row.id for row in sessions_named(store, names)]
        report = merge_sessions(main_repo, store, ids, strategy,  # type: ignore[arg-type]
                                target, gate=not no_gate)
    print_report(report, as_json)
    sys.exit(report.exit_code())


@click.command()
@click.argument("session")
@repo_option
@click.option("--json", "as_json", is_flag=True)
def replay(session: str, repo: str, as_json: bool) -> None:
    """Run a session's task again from its recorded image digest, base commit and limits."""
    from runtime.run.replay import replay_session

    main_repo = MainRepo(repo)
    with open_store(main_repo) as store:
        row = store.find_session(session)
    if row.manifest is not None:  # what is replayed; the report says what ran this time
        recorded = row.manifest
        click.echo(f"replaying {row.id}: {recorded.image_digest or recorded.image}"
                   + (f", agent CLI {recorded.cli_version}" if recorded.cli_version else "")
                   + f", base {recorded.base_commit[:10]}", err=True)
    report = replay_session(main_repo, row)
    print_report(report, as_json)
    sys.exit(report.exit_code())


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("session")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@repo_option
def shell(session: str, command: tuple[str, ...], repo: str) -> None:
    """A shell (or COMMAND) inside a running session's container: same user, limits, mounts.

    `agentrt shell SESSION` is interactive; `agentrt shell SESSION -- git status` runs one
    command and returns its exit code.
    """
    main_repo = MainRepo(repo)
    with open_store(main_repo) as store:
        row = store.find_session(session)
    if row.result.status.is_final:
        raise ConfigError(
            f"session {row.id} has finished ({row.result.status.value}); its work is on branch "
            f"{row.branch}: `agentrt diff {row.id}`, or `agentrt replay {row.id}` to run it again")
    docker = shutil.which("docker")
    if docker is None:
        raise ConfigError("the docker CLI is needed for an interactive shell")
    flags = ["-it"] if sys.stdin.isatty() and sys.stdout.isatty() else ["-i"]
    argv = list(command) or ["sh"]
    from runtime.engine.discovery import get_client
    from runtime.engine.labels import find_container

    container = find_container(get_client(), row.id)
    if container is None:
        raise NotFoundError(f"the container of {row.id} is gone")
    os.execv(docker, [docker, "exec", *flags, "-w", "/workspace", container.id, *argv])


@click.group()
def colima() -> None:
    """Colima VM sized for agentrt (macOS; also Linux)."""


@colima.command("up")
@click.option("--agents", type=click.IntRange(min=1), help="Concurrent agents to fit.")
@click.option("--file", "task_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Take agents and limits from this task file.")
@click.option("--dry-run", is_flag=True, help="Write and run nothing; print the colima command.")
@click.option("--show-profile", is_flag=True,
              help="Also print the profile (colima.yaml) written before `colima start`.")
def colima_up_cmd(agents: int | None, task_file: Path | None, dry_run: bool,
                  show_profile: bool) -> None:
    """Create or resize the `agentrt` Colima profile to fit N agents."""
    from runtime.config import RunConfig, load_task_file
    from runtime.engine.colima import (
        colima_home,
        colima_up,
        profile_path,
        read_template,
        render_profile,
        size_for,
    )

    config = load_task_file(task_file).run if task_file else RunConfig()
    size = size_for(agents or config.max_concurrent_agents, config.resource_limits)
    argv = colima_up(size, dry_run=dry_run)
    click.echo(" ".join(argv))
    if show_profile:
        # A YAML comment naming the file, then the file: the block is valid YAML as it stands.
        click.echo(f"# {profile_path(colima_home())}")
        click.echo(render_profile(size, read_template()), nl=False)


COMMANDS: list[click.Command] = [stop, gc, recover, discard, merge, replay, shell, colima]
