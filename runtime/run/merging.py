"""Merging a run: the one merge order, and merging a finished run from the state store.

``agentrt run`` (through the coordinator) and ``agentrt merge RUN`` both merge in the order
:func:`merge_order` gives, so a run merged later lands exactly as it would have at its end.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from runtime.config import MergeStrategy
from runtime.errors import ConfigError, NotFoundError
from runtime.git.merge import merge_agent_results
from runtime.git.safe_git import MainRepo
from runtime.models import RunReport, SessionResult
from runtime.state.store import Store


def merge_order(sessions: Sequence[SessionResult]) -> list[SessionResult]:
    """Sessions in the order their branches are merged: by finish time, unfinished last. Pure.

    A dependency always finishes before its dependents start, so this order respects the DAG.
    """
    never = datetime.max.replace(tzinfo=None)

    def key(session: SessionResult) -> tuple[bool, datetime]:
        finished = session.finished_at
        return (finished is None, finished.replace(tzinfo=None) if finished else never)

    return sorted(sessions, key=key)


def merge_run(repo: MainRepo, store: Store, run_id: str, strategy: MergeStrategy,
              target: str | None = None) -> RunReport:
    """Merge (``auto``) or check (``review``) a recorded run's branches; store the outcome."""
    run = store.latest_run() if run_id == "latest" else store.find_run(run_id)
    if run is None:
        raise NotFoundError("no runs recorded yet")
    report = store.run_report(run.id)
    into = target or report.target
    if not into:
        raise ConfigError("no target branch: pass --target")
    merge_agent_results(merge_order(report.sessions), strategy, repo=repo, target=into,
                        run_id=run.id)
    for session in report.sessions:
        if session.branch:
            store.upsert_session(session, run.id)
    store.set_run_merge(run.id, strategy, into)
    report.merge = strategy
    report.target = into
    return report
