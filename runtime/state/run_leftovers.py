"""Removing what a run shared among its sessions once the run is over (finished, or its owner
dead): its shared PostgreSQL server, its egress proxies and their networks, and its sessions'
services. Part of ``agentrt gc`` (:func:`runtime.backends.recovery.collect_garbage`); a run of
another repository is never judged.

A run the state database does not know (a session used on its own from Python has no store)
is judged by the labels of what it started: this repository's, and its owner process gone."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from runtime.engine.labels import (
    LABEL_OWNER_PID,
    LABEL_OWNER_START,
    LABEL_REPO,
    LABEL_RUN,
    labelled,
)
from runtime.engine.types import EngineClient
from runtime.errors import AgentRuntimeError, NotFoundError
from runtime.state.liveness import recorded_alive
from runtime.state.store import Store


class GcReport(Protocol):
    """Where gc's report (:class:`runtime.backends.recovery.GcReport`) lists what it removed."""

    removed_containers: list[str]


def run_is_over(store: Store, run_id: str) -> bool:
    """Whether ``run_id`` is a run of this repository's state that finished or whose owner
    died; False for a live run and for another repository's run (not ours to judge)."""
    try:
        run = store.find_run(run_id)
    except NotFoundError:
        return False
    return run.finished_at is not None or not recorded_alive(run.owner_pid,
                                                             run.owner_start_time)


def left_over(store: Store | None, labels: Mapping[str, str], repo_root: Path | None) -> bool:
    """Whether what carries ``labels`` belongs to a run that is over: a run of this
    repository's state that finished or whose owner died, or, unknown to the state, one
    labelled with ``repo_root`` whose owner (by its labels) is gone."""
    run_id = labels.get(LABEL_RUN, "")
    if store is not None:
        try:
            store.find_run(run_id)
        except NotFoundError:
            pass
        else:
            return run_is_over(store, run_id)
    return repo_root is not None and labels.get(LABEL_REPO) == str(repo_root) and \
        not recorded_alive(labels.get(LABEL_OWNER_PID), labels.get(LABEL_OWNER_START))


def collect_database_servers(client: EngineClient | None, store: Store | None,
                              report: GcReport, repo_root: Path | None = None) -> None:
    """Remove shared PostgreSQL servers whose run is over (finished or owner dead): found by
    their container or their network, so a server whose start a kill cut short after its
    network was made goes too (with its disk volume: stop_shared_server removes all three)."""
    if client is None:
        return
    from runtime.databases.postgres import stop_shared_server

    try:
        parts = labelled(client, "database", networks=True)
    except AgentRuntimeError:  # no engine to ask: nothing to remove now
        return
    runs: dict[str, list[str]] = {}
    for name, labels in parts:
        if labels.get(LABEL_RUN) and left_over(store, labels, repo_root):
            runs.setdefault(labels[LABEL_RUN], []).append(name)
    for run_id, names in sorted(runs.items()):
        stop_shared_server(run_id, client)
        report.removed_containers.extend(names)


def collect_egress_proxies(client: EngineClient | None, store: Store | None,
                            report: GcReport, repo_root: Path | None = None) -> None:
    """Remove the egress proxies and networks of runs that are over (finished or owner dead)."""
    if client is None:
        return
    from runtime.engine.egress import ROLE_EGRESS, remove_run_egress

    with contextlib.suppress(AgentRuntimeError):
        runs: dict[str, Mapping[str, str]] = {}
        for _name, labels in labelled(client, ROLE_EGRESS, networks=True):
            runs.setdefault(str(labels.get(LABEL_RUN, "")), labels)
        for run_id, run_labels in sorted(runs.items()):
            if not left_over(store, run_labels, repo_root):
                continue
            report.removed_containers.extend(remove_run_egress(client, run_id))


def collect_services(client: EngineClient | None, store: Store | None,
                      report: GcReport, repo_root: Path | None = None) -> None:
    """Remove the per-session services (and their networks) of runs that are over."""
    if client is None:
        return
    from runtime.engine.services import ROLE_SERVICE, remove_services

    with contextlib.suppress(AgentRuntimeError):
        runs = {str(labels.get(LABEL_RUN, "")): labels
                for _name, labels in labelled(client, ROLE_SERVICE)}
        for run_id, labels in sorted(runs.items()):
            if not left_over(store, labels, repo_root):
                continue
            report.removed_containers.extend(remove_services(client, run_id=run_id))
