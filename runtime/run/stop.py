"""`agentrt stop` from another terminal: ask the owner to stop, or reconcile an orphan.

The request is recorded in the state database first (so the owning process classifies the
session as ``cancelled`` and a run-level request stops it from starting more tasks), then the
container is stopped (SIGTERM, grace, SIGKILL). A session whose owner is dead is reconciled
like ``gc`` does: work saved onto its branch, resources removed.
"""

from __future__ import annotations

from runtime.engine.container import AgentContainer
from runtime.engine.labels import find_container
from runtime.errors import NotFoundError
from runtime.git.safe_git import MainRepo
from runtime.run.session_end import STOP_REQUESTED
from runtime.state.liveness import owner_alive
from runtime.state.store import SessionRow, Store


def _targets(store: Store, target: str) -> tuple[str, list[SessionRow]]:
    try:
        row = store.find_session(target)
        return row.run_id, [row]
    except NotFoundError as session_error:
        try:
            run = store.find_run(target)
        except NotFoundError:
            raise session_error from None
        store.add_event(run.id, STOP_REQUESTED, "stop requested for the run")
        return run.id, store.list_sessions(run_id=run.id)


def stop_target(repo: MainRepo, store: Store, target: str, grace: int = 10) -> list[str]:
    """Stop the session or run named by ``target`` (id or unique prefix); return what stopped."""
    from runtime.backends.recovery import collect_garbage
    from runtime.engine.discovery import get_client

    _, rows = _targets(store, target)
    client = get_client()
    stopped: list[str] = []
    for row in rows:
        if row.result.status.is_final:
            continue
        store.add_event(row.run_id, STOP_REQUESTED, "stop requested", session_id=row.id)
        if owner_alive(row.owner_pid, row.owner_start_time):
            container = find_container(client, row.id)
            if container is not None:
                AgentContainer(client, container).stop(grace)
        else:
            collect_garbage(repo, client, only_session=row.id, grace_seconds=grace)
        stopped.append(row.id)
    return stopped
