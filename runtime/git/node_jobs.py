"""A Swarm session's volume made and checked out by one helper service on its node.

Separately, making the loop volume on the node and checking the base out into it are two
one-shot services, each a scheduling round trip through the manager (about a second each on a
small Swarm). Here the node helper of :mod:`runtime.engine.swarm_volumes` does both: it makes
the volume, then waits until the run's exchange has the base (the host ships it meanwhile, and
the exchange may itself still be starting) and runs the checkout as a container of the node's
engine: the agent's uid, every capability dropped, ``no-new-privileges``, limited memory and
pids, the volume's workspace bound, and the network of the helper's own task (the run's
internal network, the only way to the exchange). The checkout script and what it fetches are
the same as the separate checkout helper's (:meth:`Exchange.checkout_on_node`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import docker

from runtime.engine.engine_volumes import EngineVolume
from runtime.engine.labels import LABEL_ROLE, LABEL_RUN, LABEL_SESSION
from runtime.engine.swarm_volumes import (
    NodeStep,
    NodeStepFailed,
    create_node_volume,
    undo_node_volume,
)
from runtime.engine.volume_helpers import HELPER_IMAGE, ROLE_HELPER
from runtime.errors import EngineError, VolumeError, WorkspaceError
from runtime.git.engine_checkout import CHECKOUT_SCRIPT
from runtime.git.exchange import START_TIMEOUT_S, Exchange
from runtime.git.safe_git import MainRepo

CHECKOUT_MEMORY = 512 * 1024 * 1024


def checkout_step(exchange: Exchange, mounts: list[Any], session_id: str, branch: str,
                  commit: str, uid: int, gid: int) -> NodeStep:
    """The checkout of ``commit`` on ``branch`` as a step of the node helper, once the
    exchange has ``refs/base/<commit>``."""
    ref = f"refs/base/{commit}"
    spec = {
        "image": HELPER_IMAGE,
        "command": ["sh", "-c", CHECKOUT_SCRIPT, "agentrt-checkout", branch, commit,
                    exchange.url, ref],
        "user": f"{uid}:{gid}", "working_dir": "/", "environment": {"HOME": "/var/tmp"},
        "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"],
        "network_mode": "container:@SELF@", "mounts": list(mounts),
        "mem_limit": CHECKOUT_MEMORY, "memswap_limit": CHECKOUT_MEMORY, "pids_limit": 256,
        "labels": {LABEL_SESSION: session_id, LABEL_ROLE: ROLE_HELPER,
                   LABEL_RUN: exchange.run_id},
        "detach": True,
    }
    gate = {"url": exchange.url, "go": ref, "stop": None, "timeout": START_TIMEOUT_S + 30,
            "on_timeout": "fail"}
    return NodeStep(spec, gate)


def create_checked_out(client: docker.DockerClient, exchange: Exchange, node_id: str,
                       session_id: str, disk_mb: int, uid: int, gid: int,
                       labels: Mapping[str, str], repo: MainRepo, branch: str, commit: str,
                       scratch: Path) -> EngineVolume:
    """Session ``session_id``'s volume on ``node_id`` with ``commit`` checked out on
    ``branch``; nothing of it is left when it fails (VolumeError, or WorkspaceError when the
    checkout or the shipping of the base failed)."""
    shipped: list[BaseException] = []

    def ship() -> None:
        try:
            exchange.ship_base(repo, branch, commit, scratch)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            shipped.append(exc)

    shipper = threading.Thread(target=ship, name=f"agentrt-ship-{session_id}", daemon=True)
    shipper.start()
    try:
        return create_node_volume(
            client, node_id, session_id, disk_mb, uid, gid, labels,
            then=lambda v: [checkout_step(exchange, v.mounts(db_target=None), session_id,
                                          branch, commit, uid, gid)],
            networks=[exchange.network_id],
            abort=lambda: f"the base did not reach the exchange: {shipped[0]}"
            if shipped else None)
    except NodeStepFailed as exc:  # the node undid the volume
        raise WorkspaceError(f"cannot check {branch} out on node {node_id}: {exc}") from exc
    except (VolumeError, EngineError):
        # Ended from here (abort, timeout, engine error): the node could not undo its work.
        shipper.join()
        with contextlib.suppress(VolumeError, EngineError):
            undo_node_volume(client, node_id, session_id)
        if shipped and isinstance(shipped[0], (WorkspaceError, EngineError)):
            raise WorkspaceError(f"cannot ship the base to the exchange: {shipped[0]}") \
                from None
        raise
    finally:
        shipper.join()
