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

import docker
import docker.errors

from runtime.engine.labels import (
    LABEL_OWNER_PID,
    LABEL_OWNER_START,
    LABEL_REPO,
    LABEL_ROLE,
    LABEL_RUN,
)
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


def collect_database_servers(client: docker.DockerClient | None, store: Store | None,
                              report: GcReport, repo_root: Path | None = None) -> None:
    """Remove shared PostgreSQL servers whose run is over (finished or owner dead)."""
    if client is None:
        return
    from runtime.databases.postgres import stop_shared_server

    with contextlib.suppress(docker.errors.DockerException):
        servers = client.containers.list(all=True, filters={"label": f"{LABEL_ROLE}=database"})
        for server in servers:
            run_id = server.labels.get(LABEL_RUN, "")
            if not left_over(store, server.labels, repo_root):
                continue
            stop_shared_server(run_id, client)
            report.removed_containers.append(server.name)


def collect_egress_proxies(client: docker.DockerClient | None, store: Store | None,
                            report: GcReport, repo_root: Path | None = None) -> None:
    """Remove the egress proxies and networks of runs that are over (finished or owner dead)."""
    if client is None:
        return
    from runtime.engine.egress import ROLE_EGRESS, remove_run_egress

    with contextlib.suppress(docker.errors.DockerException, AgentRuntimeError):
        found = client.containers.list(all=True, filters={"label": f"{LABEL_ROLE}={ROLE_EGRESS}"})
        found += client.networks.list(filters={"label": f"{LABEL_ROLE}={ROLE_EGRESS}"})
        runs: dict[str, Mapping[str, str]] = {}
        for item in found:
            labels = (item.attrs.get("Labels") or item.attrs.get("Config", {}).get("Labels")
                      or {})
            runs.setdefault(str(labels.get(LABEL_RUN, "")), labels)
        for run_id, labels in sorted(runs.items()):
            if not left_over(store, labels, repo_root):
                continue
            report.removed_containers.extend(remove_run_egress(client, run_id))


def collect_services(client: docker.DockerClient | None, store: Store | None,
                      report: GcReport, repo_root: Path | None = None) -> None:
    """Remove the per-session services (and their networks) of runs that are over."""
    if client is None:
        return
    from runtime.engine.services import ROLE_SERVICE, remove_services

    with contextlib.suppress(docker.errors.DockerException, AgentRuntimeError):
        found = client.containers.list(all=True,
                                       filters={"label": f"{LABEL_ROLE}={ROLE_SERVICE}"})
        runs = {str(c.labels.get(LABEL_RUN, "")): c.labels for c in found}
        for run_id, labels in sorted(runs.items()):
            if not left_over(store, labels, repo_root):
                continue
            report.removed_containers.extend(remove_services(client, run_id=run_id))
