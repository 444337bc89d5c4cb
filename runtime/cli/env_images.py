"""``agentrt images build --file``, ``images ls`` (environments) and ``images prune``."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console

from runtime.cli.lookup import open_store, repo_option
from runtime.errors import NotFoundError
from runtime.text import terminal_safe

err = Console(stderr=True)


def _show(line: str) -> None:
    err.print(terminal_safe(line), highlight=False, markup=False, soft_wrap=True)


def build_task_file_environments(task_file: Path, repo: str) -> None:
    """Build the environments of a task file's tasks at its base commit; print each one."""
    from runtime.config import load_task_file
    from runtime.engine.discovery import get_client
    from runtime.git.directory_mode import open_repo
    from runtime.git.workspace import resolve_base
    from runtime.run.environments import prepare_environments

    parsed = load_task_file(task_file)
    main_repo = open_repo(repo, parsed.run.isolation_strategy)
    base = resolve_base(main_repo, parsed.run.base)
    built = prepare_environments(get_client(), main_repo, base, parsed.run, parsed.tasks,
                                 log=_show)
    if not built:
        click.echo(f"{task_file}: no task has an environment")
    for task_id, env in built.items():
        state = "built" if env.rebuilt else "up to date"
        click.echo(f"{task_id}\t{env.ref}\t{state}\t{env.id[:19]}")


def print_env_images(as_json: bool) -> list[dict[str, object]]:
    """The environment images, as rows (printed unless ``as_json``: the caller merges)."""
    from runtime.engine.discovery import get_client
    from runtime.engine.environment_images import list_env_images

    found = [asdict(i) for i in list_env_images(get_client())]
    if not as_json:
        for row in found:
            click.echo(f"{row['ref'] or '(untagged)'}\t{row['id']}\tenvironment "
                       f"{terminal_safe(str(row['source']))}"
                       + (f" + {row['agent']}" if row["agent"] else ""))
    return found


@click.command("prune")
@click.option("--days", type=click.FloatRange(min=0), default=7, show_default=True,
              help="Only images created more than this many days ago.")
@repo_option
def images_prune(days: float, repo: str) -> None:
    """Remove environment images (agentrt/env:*) older than --days that no session kept in
    this repository's state database ran in (so `agentrt replay` keeps working)."""
    from runtime.engine.discovery import get_client
    from runtime.engine.environment_images import prune_env_images
    from runtime.git.safe_git import MainRepo

    keep: set[str] = set()
    with contextlib.suppress(NotFoundError), open_store(MainRepo(repo)) as store:
        for row in store.list_sessions():
            manifest = row.manifest
            if manifest is not None and manifest.image_digest:
                keep.add(manifest.image_digest)
    removed, refused = prune_env_images(get_client(), keep, days)
    for ref in removed:
        click.echo(f"removed {ref}")
    for message in refused:
        err.print(f"agentrt: kept {terminal_safe(message)}", style="yellow", markup=False,
                  highlight=False)
    click.echo(json.dumps({"removed": len(removed), "kept_in_use": len(refused),
                           "recorded": len(keep)}))
