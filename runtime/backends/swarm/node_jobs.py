"""The work of a Swarm session's node helpers: the checkout and the harvest.

**Checkout.** Separately, making the loop volume on the node and checking the base out into it
would be two one-shot services, each a scheduling round trip through the manager (about a second
each on a small Swarm). The node helper of :mod:`runtime.backends.swarm.volumes` does both: it
makes the volume, then waits until the run's exchange has the base (the host ships it meanwhile,
and the exchange may itself still be starting) and runs the checkout as a container of the
node's engine: the agent's uid, every capability dropped, ``no-new-privileges``, limited memory
and pids, the volume's workspace bound, and the network of the helper's own task (the run's
internal network, the only way to the exchange), with the same checkout script as on one engine
(:data:`runtime.git.engine_checkout.CHECKOUT_SCRIPT`).

**Harvest and removal.** :class:`NodeFinish` has one node helper run the harvest (the same
script as on one machine, then a push to the exchange) as a container of the node's engine
made exactly as the one-engine harvest container is (:func:`runtime.git.harvest.harvest_spec`:
the agent's ``HEAD`` and ref read as data, git only in a private repository with agentrt's
config, uid 0 of its own container with ``CAP_DAC_READ_SEARCH`` alone, a uid the agent never
had; read-only root, the volume read-only, scratch and bundles in tmpfs of a fixed size, one
core, memory, pids and the helper's wall-time limit), joined to the helper's network only to
push to the session's own push repository in the exchange
(:meth:`runtime.backends.swarm.exchange.Exchange.open_session`), and then *wait*: the host makes
the bundles, verifies and imports them, and only then writes a verdict into the exchange's
``v.git`` (a repository the helpers may read but not push to: only agentrt's ``exec`` writes
it). ``home``: the helper removes the volume (one round trip instead of two). ``keep``, no
verdict within :data:`VERDICT_TIMEOUT_S`, or the helper killed: the volume stays, as it must
when the work did not get home. :func:`harvest_on_node` is the harvest alone (``agentrt gc``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import docker

from runtime.backends.swarm.exchange import HELPER_TIMEOUT_S, START_TIMEOUT_S, Exchange
from runtime.backends.swarm.service import OneShot
from runtime.backends.swarm.volumes import (
    NodeStep,
    NodeStepFailed,
    create_node_volume,
    start_node_finish,
    start_node_steps,
    undo_node_volume,
)
from runtime.engine.engine_volumes import EngineVolume
from runtime.engine.labels import LABEL_HARVEST, LABEL_ROLE, LABEL_RUN, LABEL_SESSION
from runtime.engine.volume_helpers import HELPER_IMAGE, ROLE_HELPER
from runtime.errors import EngineError, HarvestError, VolumeError, WorkspaceError
from runtime.git.engine_checkout import CHECKOUT_SCRIPT
from runtime.git.harvest import (
    EXIT_UNCHANGED,
    HARVEST_ENV,
    OUT_DIR,
    SCRIPT,
    Harvest,
    HarvestPlan,
    harvest_spec,
)
from runtime.git.safe_git import MainRepo

CHECKOUT_MEMORY = 512 * 1024 * 1024
#: How long a node helper that harvested waits for the host's verdict before it keeps the
#: volume and ends (the host's import of a big bundle takes seconds, not minutes).
VERDICT_TIMEOUT_S = 600
HARVESTED = "agentrt-node: step 0 exit="
REMOVED = "agentrt-node: step 1 exit=0"

# Appended to the harvest script (which exits 3 when nothing changed): push what it made.
# Arguments: the harvest script's three, then the exchange's URL.
PUSH_SCRIPT = r"""
x=$4
# The harvest's git allows no protocol; this push, to agentrt's exchange, git:// only.
g -c protocol.git.allow=always --git-dir="$h" push -q "$x" "refs/heads/work:refs/work/$sid/work"
if g --git-dir="$h" rev-parse -q --verify refs/heads/files >/dev/null; then
  g -c protocol.git.allow=always --git-dir="$h" push -q "$x" "refs/heads/files:refs/work/$sid/files"
fi
echo "agentrt-harvest: pushed"
"""


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
        "network_mode": "container:@SELF@", "mounts": list(mounts), "init": True,
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


def harvest_command(push_url: str, plan: HarvestPlan) -> list[str]:
    """The harvest script, then the push of what it made to ``push_url`` (the session's own
    push repository in the exchange)."""
    return ["sh", "-c", SCRIPT + PUSH_SCRIPT, "agentrt-harvest", plan.base_commit, "",
            plan.session_id, push_url]


def node_harvest_spec(run_id: str, push_url: str, plan: HarvestPlan,
                      max_bytes: int) -> dict[str, Any]:
    """``containers.create`` arguments of the harvest on a Swarm node: the one-engine harvest
    container (:func:`runtime.git.harvest.harvest_spec`) without its out volume (the work
    leaves by the push), in the node helper's network (``container:@SELF@``, the run's
    internal network: the exchange and nothing else), labelled as a helper. Pure."""
    spec = harvest_spec(plan, max_bytes)
    spec.pop("name", None)
    spec["mounts"] = [m for m in spec["mounts"] if m["Target"] != OUT_DIR]
    spec["environment"] = {k: v for k, v in HARVEST_ENV.items() if k != "HARVEST_OUT"}
    spec["command"] = harvest_command(push_url, plan)
    spec["network_mode"] = "container:@SELF@"
    spec["labels"] = {LABEL_SESSION: plan.session_id, LABEL_ROLE: ROLE_HELPER,
                      LABEL_RUN: run_id, LABEL_HARVEST: plan.session_id}
    return spec


def harvest_on_node(exchange: Exchange, node_id: str, plan: HarvestPlan, dest: Path,
                    max_bytes: int) -> Harvest:
    """The harvest of :mod:`runtime.git.harvest` by a node helper on ``node_id`` (the same
    container as :class:`NodeFinish` runs, without holding the volume); its bundles made in
    the exchange and copied out. HarvestError when it cannot finish."""
    try:
        push_url = exchange.open_session(plan.session_id, max_bytes)
        step = NodeStep(node_harvest_spec(exchange.run_id, push_url, plan, max_bytes),
                        ok=(0, EXIT_UNCHANGED))
        one_shot = start_node_steps(exchange.client, node_id, plan.session_id, [step],
                                    [exchange.network_id], HELPER_TIMEOUT_S)
        try:
            ended, output = one_shot.wait(HELPER_TIMEOUT_S + 60)
        finally:
            one_shot.remove()
    except EngineError as exc:
        raise HarvestError(f"the harvest could not run on node {node_id}: {exc}") from exc
    code = _harvest_code(output)
    if code is None:
        raise HarvestError(f"the harvest did not run on node {node_id} (helper exit {ended}): "
                           f"{output.strip()[-800:]}")
    return exchange.collect_harvest(node_id, plan, code, output, dest, max_bytes)


class NodeFinish:
    """A node helper that harvested a session's volume and holds it until the verdict."""

    def __init__(self, exchange: Exchange, one_shot: OneShot, session_id: str) -> None:
        self.exchange = exchange
        self.one_shot: OneShot | None = one_shot
        self.session_id = session_id

    @classmethod
    def harvest(cls, exchange: Exchange, node_id: str, volume: EngineVolume, plan: HarvestPlan,
                dest: Path, max_bytes: int) -> tuple[Harvest, NodeFinish]:
        """Harvest ``volume`` on ``node_id`` and bring the bundles out as
        :func:`harvest_on_node` does; the helper then waits for :meth:`release`. HarvestError
        when it cannot finish (the volume is kept, the helper gone)."""
        sid = plan.session_id
        gate = {"url": exchange.verdicts_url, "go": f"refs/{sid}/home",
                "stop": f"refs/{sid}/keep", "timeout": VERDICT_TIMEOUT_S, "on_timeout": "stop"}
        try:
            spec = node_harvest_spec(exchange.run_id, exchange.open_session(sid, max_bytes),
                                     plan, max_bytes)
            one_shot = start_node_finish(exchange.client, node_id, volume,
                                         NodeStep(spec, ok=(0, EXIT_UNCHANGED)), gate,
                                         [exchange.network_id], HELPER_TIMEOUT_S)
        except (EngineError, VolumeError) as exc:
            raise HarvestError(f"the harvest could not run on node {node_id}: {exc}") from exc
        finish = cls(exchange, one_shot, sid)
        try:
            ended, output = one_shot.wait(HELPER_TIMEOUT_S + 60, until=HARVESTED)
            code = _harvest_code(output)
            if code is None:
                raise HarvestError(f"the harvest did not run on node {node_id} (helper exit "
                                   f"{ended}): {output.strip()[-800:]}")
            return exchange.collect_harvest(node_id, plan, code, output, dest,
                                            max_bytes), finish
        except EngineError as exc:
            finish.release(home=False)
            raise HarvestError(f"the harvest could not run on node {node_id}: {exc}") from exc
        except BaseException:
            finish.release(home=False)
            raise

    def release(self, home: bool) -> bool:
        """Give the verdict and wait for the helper to end; whether it removed the volume
        (only ever when ``home``). Idempotent; the helper is gone afterwards."""
        one_shot, self.one_shot = self.one_shot, None
        if one_shot is None:
            return False
        try:
            with contextlib.suppress(EngineError):
                self.exchange.verdict(self.session_id, home)
            code, output = one_shot.wait(HELPER_TIMEOUT_S)
            return home and code == 0 and REMOVED in output
        except EngineError:
            return False
        finally:
            one_shot.remove()


def _harvest_code(output: str) -> int | None:
    """The harvest step's exit code in a node helper's output (None: it did not end)."""
    for line in output.splitlines():
        if line.startswith(HARVESTED):
            with contextlib.suppress(ValueError):
                return int(line[len(HARVESTED):].strip())
    return None
