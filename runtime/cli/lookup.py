"""What every CLI verb shares: the ``--repo`` option, the repository's state database, and
the runs and sessions named on the command line (an id, a prefix or ``latest``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from runtime import paths
from runtime.errors import NotFoundError
from runtime.git.safe_git import MainRepo

if TYPE_CHECKING:
    from runtime.state.store import RunRow, SessionRow, Store

F = TypeVar("F", bound=Callable[..., Any])


def repo_option(func: F) -> F:
    """The ``--repo PATH`` option every verb takes (default ``$AGENTRT_REPO``, else ``.``)."""
    return click.option("--repo", default=".", show_default=True, envvar="AGENTRT_REPO",
                        show_envvar=True, help="The git repository.")(func)

def open_store(repo: MainRepo) -> Store:
    """The repository's state database; NotFoundError if agentrt never ran here."""
    from runtime.state.store import Store

    path = paths.state_db(repo.state_dir)
    if not path.exists():
        raise NotFoundError(f"no agentrt runs in {repo.root} yet")
    return Store(path)


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


def sessions_named(store: Store, names: Sequence[str]) -> list[SessionRow]:
    """The sessions the command line names: each name a run (all its sessions) or a session
    (id or prefix), in order, each session once."""
    rows: dict[str, SessionRow] = {}
    for name in names:
        try:
            found = store.list_sessions(run_id=resolve_run(store, name).id)
        except NotFoundError:
            found = [resolve_session(store, name)]
        rows.update((row.id, row) for row in found)
    return list(rows.values())
