"""Removing what a run shared among its sessions once the run is over (finished, or its owner
dead): its shared PostgreSQL server, its egress proxies and their networks, and its sessions'
services. Part of ``agentrt gc`` (:func:`runtime.state.recovery.collect_garbage`); a run of
another repository is never judged."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import docker
import docker.errors

from runtime.engine.labels import LABEL_ROLE, LABEL_RUN
from runtime.errors import AgentRuntimeError, NotFoundError
from runtime.state.liveness import recorded_alive
from runtime.state.store import Store

if TYPE_CHECKING:
    from runtime.state.recovery import GcReport


def run_is_over(store: Store, run_id: str) -> bool:
    """Whether ``run_id`` is a run of this repository's state that finished or whose owner
    died; False for a live run and for another repository's run (not ours to judge)."""
    try:
        run = store.find_run(run_id)
    except NotFoundError:
        return False
    return run.finished_at is not None or not recorded_alive(run.owner_pid,
                                                             run.owner_start_time)


def collect_database_servers(client: docker.DockerClient | None, store: Store | None,
                              report: GcReport) -> None:
    """Remove shared PostgreSQL servers whose run is over (finished or owner dead)."""
    if client is None or store is None:
        return
    from runtime.databases.postgres import stop_shared_server

    with contextlib.suppress(docker.errors.DockerException):
        servers = client.containers.list(all=True, filters={"label": f"{LABEL_ROLE}=database"})
        for server in servers:
            run_id = server.labels.get(LABEL_RUN, "")
            if not run_is_over(store, run_id):
                continue
            stop_shared_server(run_id, client)
            report.removed_containers.append(server.name)


def collect_egress_proxies(client: docker.DockerClient | None, store: Store | None,
                            report: GcReport) -> None:
    """Remove the egress proxies and networks of runs that are over (finished or owner dead)."""
    if client is None or store is None:
        return
    from runtime.engine.egress import ROLE_EGRESS, remove_run_egress

    with contextlib.suppress(docker.errors.DockerException, AgentRuntimeError):
        found = client.containers.list(all=True, filters={"label": f"{LABEL_ROLE}={ROLE_EGRESS}"})
        found += client.networks.list(filters={"label": f"{LABEL_ROLE}={ROLE_EGRESS}"})
        for run_id in sorted({str((item.attrs.get("Labels") or item.attrs.get("Config", {})
                                   .get("Labels") or {}).get(LABEL_RUN, "")) for item in found}):
            if not run_is_over(store, run_id):
                continue
            report.removed_containers.extend(remove_run_egress(client, run_id))


def collect_services(client: docker.DockerClient | None, store: Store | None,
                      report: GcReport) -> None:
    """Remove the per-session services (and their networks) of runs that are over."""
    if client is None or store is None:
        return
    from runtime.engine.services import ROLE_SERVICE, remove_services

    with contextlib.suppress(docker.errors.DockerException, AgentRuntimeError):
        found = client.containers.list(all=True,
                                       filters={"label": f"{LABEL_ROLE}={ROLE_SERVICE}"})
        for run_id in sorted({str(c.labels.get(LABEL_RUN, "")) for c in found}):
            if not run_is_over(store, run_id):
                continue
            report.removed_containers.extend(remove_services(client, run_id=run_id))
