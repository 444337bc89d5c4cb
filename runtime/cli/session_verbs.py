"""CLI verbs for one session's work, the way people work with a branch: apply, checkout, log,
rm (``agentrt merge SESSION...`` is the merge verb's; see :mod:`runtime.cli.manage`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from runtime.cli.lookup import open_store, repo_option, resolve_session, sessions_named
from runtime.errors import NotFoundError
from runtime.git.safe_git import MainRepo
from runtime.git.session_work import work_head
from runtime.state.store import SessionRow
from runtime.text import terminal_safe


def _finished(repo: str, session: str) -> tuple[MainRepo, SessionRow, str]:
    """The repository, the finished session named and its branch's head."""
    main_repo = MainRepo(repo)
    with open_store(main_repo) as store:
        row = resolve_session(store, session)
    return main_repo, row, _finished_head(main_repo, row)


def _finished_head(repo: MainRepo, row: SessionRow) -> str:
    """The head of a finished session's branch (or the one recorded); NotFoundError if none."""
    if not row.status.is_final:
        raise NotFoundError(f"session {row.id} is {row.status.value}: its branch gets its work "
                            "when it ends (`agentrt diff` shows it live)")
    head = work_head(repo, row.result)
    if not head or not row.result.base_commit:
        raise NotFoundError(f"session {row.id} has no work on a branch ({row.status.value})")
    return head


@click.command()
@click.argument("session")
@repo_option
def apply(session: str, repo: str) -> None:
    """Apply SESSION's changes to your checkout as unstaged edits (no commit, no merge)."""
    from runtime.git.session_work import apply_session

    main_repo, row, head = _finished(repo, session)
    changed = apply_session(main_repo, row.result.base_commit, head)
    if not changed:
        click.echo(f"{row.id} changed nothing")
        return
    files = f"{len(changed)} file" + ("s" if len(changed) != 1 else "")
    click.echo(f"applied {row.id}: {files} changed, unstaged "
               "(`git diff` shows them, `git checkout -- .` drops them)")
    for path in changed:
        click.echo(f"  {terminal_safe(path)}")


@click.command()
@click.argument("session")
@click.option("--path", "where", type=click.Path(file_okay=False, path_type=Path),
              help="Where to make the worktree (default: next to the repository, "
                   "<repo>-<session>).")
@repo_option
def checkout(session: str, where: Path | None, repo: str) -> None:
    """A worktree of SESSION's branch, to look at (or build on) its work."""
    from runtime.git.session_work import checkout_session

    main_repo, row, _ = _finished(repo, session)
    path = where or main_repo.root.parent / f"{main_repo.root.name}-{row.id}"
    made = checkout_session(main_repo, row.branch, path.resolve())
    click.echo(f"{row.branch} checked out in {made}")
    click.echo("  to look at it; commits made there land on the session's branch "
               f"(`agentrt merge {row.id}` merges it); `git worktree remove {made}` when done")


@click.command("log")
@click.argument("session")
@repo_option
def log_cmd(session: str, repo: str) -> None:
    """SESSION's commits over its base, newest first (with agentrt's snapshot commit)."""
    from runtime.git.session_work import session_commits

    main_repo, row, head = _finished(repo, session)
    commits = session_commits(main_repo, row.result.base_commit, head)
    if not commits:
        click.echo(f"{row.id}: no commits over its base {row.result.base_commit[:10]}")
    for c in commits:
        click.echo(f"{c.commit[:10]} {c.date[:19]} {terminal_safe(c.subject)}")


@click.command()
@click.argument("names", nargs=-1, required=True, metavar="SESSION|RUN...")
@click.option("--force", is_flag=True, help="Also drop work that is not merged into the target.")
@click.option("--target", help="The branch that counts as merged into (default: the run's).")
@click.option("--dry-run", is_flag=True, help="Only show what would go.")
@repo_option
def rm(names: tuple[str, ...], force: bool, target: str | None, dry_run: bool,
       repo: str) -> None:
    """Forget sessions (or whole runs): their branches, saved logs and records. Work not merged
    into the target is refused without --force; live sessions and work kept in a volume are
    always refused."""
    from runtime.run.removal import plan_removal, remove

    main_repo = MainRepo(repo)
    with open_store(main_repo) as store:
        plan = plan_removal(main_repo, store, sessions_named(store, names), target)
        for sid, why in plan.refused.items():
            click.echo(f"keeping {sid}: {terminal_safe(why)}", err=True)
        if dry_run:
            unmerged = {r.id for r in plan.unmerged}
            for row in plan.sessions:
                note = "  (NOT merged: its branch is the only copy)" if row.id in unmerged else ""
                click.echo(f"would remove {row.id} {terminal_safe(row.branch or '-')}{note}")
            sys.exit(0)
        removed = remove(main_repo, store, plan, force=force)
    for sid in removed:
        click.echo(f"removed {sid}")


COMMANDS: list[click.Command] = [apply, checkout, log_cmd, rm]
