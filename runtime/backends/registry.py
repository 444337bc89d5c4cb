"""The registry: which backend runs a run's sessions, picked from ``[run] engine``.

The only module that imports a backend's folder (``tests/unit/test_layers.py`` holds it to
that): a session, the coordinator, preflight, gc and ``doctor`` ask here and never branch on
the engine themselves.

========================  =====================================================================
``engine = "docker"``     :class:`~runtime.backends.docker.backend.DockerBackend`: one engine;
                          the volume on this disk when the engine shares it, else on the
                          engine's host (asked of the engine, once)
``engine = "swarm"``      :class:`~runtime.backends.swarm.backend.SwarmBackend`: services on
                          the nodes of the Swarm the engine manages
========================  =====================================================================

Adding one (docs/design.md, "Adding a backend"): a folder ``runtime/backends/<name>/`` with a
class that has :class:`~runtime.backends.base.Backend`'s methods, one more value of
``[run] engine``, and one more branch in each function here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker

from runtime.backends.base import Backend, Check, SessionTree
from runtime.config import RunConfig, Task
from runtime.git.safe_git import MainRepo

if TYPE_CHECKING:
    from runtime.state.session_facts import SessionMarker

#: Every ``[run] engine`` value and what it runs on (the contract test runs each).
ENGINES = ("docker", "swarm")


def open_backend(config: RunConfig, client: docker.DockerClient, run_id: str,
                 repo: MainRepo) -> Backend:
    """The backend of ``run_id``'s sessions; :meth:`~runtime.backends.base.Backend.close` it
    when the run is over."""
    if config.engine == "swarm":
        from runtime.backends.swarm.backend import SwarmBackend

        return SwarmBackend(client, run_id)
    from runtime.backends.docker.backend import DockerBackend

    return DockerBackend(client, run_id, repo.state_dir / "probe",
                         engine_timeout=config.engine_timeout)


def preflight(client: docker.DockerClient, repo: MainRepo, config: RunConfig,
              tasks: Sequence[Task]) -> None:
    """Refuse (ConfigError, AdmissionError) what the backend cannot run, before anything
    starts: Swarm's unsupported settings and tasks that fit no node; on one engine, a run
    whose worst case does not fit it."""
    if config.engine == "swarm":
        from runtime.backends.swarm.backend import SwarmBackend

        SwarmBackend.preflight(client, tasks, config)
        return
    from runtime.backends.docker.admission import check_admission

    check_admission(client, config, tasks, repo.state_dir)


# -- gc and recovery: what a backend leaves behind ------------------------------------------------

def kept_tree(client: docker.DockerClient, repo: MainRepo, marker: SessionMarker,
              session_dir: Path, session_id: str) -> SessionTree | None:
    """The tree of a session whose owner died or whose work was kept, from its marker: on a
    Swarm node, on the engine's host, or on this disk (None: its engine-side volume is gone)."""
    if marker.node_id:
        from runtime.backends.swarm.recovery import node_tree

        return node_tree(client, marker, session_id)
    from runtime.backends.docker.leftovers import kept_docker_tree

    return kept_docker_tree(client, repo, marker, session_dir, session_id)


def remove_kept_tree(client: docker.DockerClient, marker: SessionMarker,
                     session_id: str) -> None:
    """Remove the volume a marker names on a Swarm node or on the engine's host (see
    :func:`kept_elsewhere`)."""
    if marker.node_id:
        from runtime.backends.swarm.recovery import remove_node_tree

        remove_node_tree(client, marker, session_id)
        return
    from runtime.backends.docker.leftovers import remove_engine_volume

    remove_engine_volume(client, session_id)


def kept_elsewhere(marker: SessionMarker | None) -> bool:
    """Whether the volume a marker names is not on this disk (a Swarm node, the engine's
    host): only an engine reaches it."""
    return marker is not None and bool(marker.node_id or marker.engine_volume)


def collect_leftovers(client: docker.DockerClient, repo: MainRepo, store: Any,
                      report: Any) -> None:
    """Remove what runs that are over left on every backend the engine reaches (services and
    exchanges on a Swarm manager); what was removed goes to ``report.removed_containers``."""
    from runtime.backends.swarm.recovery import collect_swarm_leftovers

    collect_swarm_leftovers(client, repo, store, report)


# -- doctor and the CLI's backend verbs --------------------------------------------------------

def shares_disk(client: docker.DockerClient, probe_dir: Path) -> bool:
    """Whether the engine sees this machine's disk (asked once per engine)."""
    from runtime.backends.docker.disk_sharing import engine_shares_disk

    return engine_shares_disk(client, probe_dir)


def backend_checks(client: docker.DockerClient, node_urls: Sequence[str] = ()) -> list[Check]:
    """``doctor``'s checks of the backends beyond one engine: the Swarm, its nodes and their
    images (``node_urls``: the nodes' engines)."""
    from runtime.backends.swarm.doctor import swarm_checks

    return swarm_checks(client, node_urls)


def node_addresses(given: Sequence[str]) -> list[str]:
    """The Swarm nodes' engines: ``given``, else ``$AGENTRT_SWARM_NODES``."""
    from runtime.backends.swarm.images import node_addresses as addresses

    return addresses(given)


def push_image_to_nodes(client: docker.DockerClient, ref: str, nodes: Sequence[str],
                        log: Any = None) -> list[Any]:
    """``agentrt images push-nodes``: load ``ref`` onto each Swarm node's engine."""
    from runtime.backends.swarm.images import push_image

    return push_image(client, ref, nodes, log=log)
