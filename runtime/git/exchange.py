"""The exchange: how a base reaches a Swarm node and work comes home, with plain git.

On one engine agentrt ships bundles in and out of containers with ``put_archive`` and
``get_archive``. On Swarm it talks only to a manager, whose API cannot reach a container on a
worker. So a run on Swarm gets one small service, ``agentrt-x-<run>``: agentrt's base image
running ``git daemon`` (anonymous push on) over one bare repository, pinned to the manager
agentrt talks to, on an *internal* overlay network of the run that only agentrt's own helper
tasks join (the checkout and the harvest), never a session.

* **Base in**: the host makes a bundle of the session's branch (the user's repository, trusted),
  ``put_archive``\\ s it into the exchange's container through the manager and fetches it there
  into ``refs/base/<commit>`` (once per base commit). The checkout helper on the node fetches
  that ref over ``git://`` into the session's volume.
* **Work out**: the harvest helper on the node runs the same script as on one machine
  (:data:`runtime.git.harvest.SCRIPT`), then pushes its ``work`` (and ``files``) commit to
  ``refs/work/<session>/...``. The exchange fsck's what it receives; the host then has the
  exchange ``git bundle create`` that ref against the base, copies the bundle out with
  ``get_archive`` and verifies and imports it exactly as on one machine
  (:func:`runtime.git.bundle.import_bundle`).

What a session wrote is only ever read by git in containers (the node's harvest, the
exchange) and by the host's bundle checks, never by host git in the session's tree.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests.exceptions

from runtime.engine.discovery import engine_errors
from runtime.engine.labels import LABEL_ROLE, LABEL_RUN, LABEL_SESSION
from runtime.engine.swarm_service import helper_service_spec, run_one_shot
from runtime.engine.volume_helpers import HELPER_IMAGE, ROLE_HELPER
from runtime.errors import EngineError, HarvestError, WorkspaceError
from runtime.git.engine_checkout import CHECKOUT_SCRIPT, create_base_bundle, tar_one_file
from runtime.git.harvest import (
    ADD_ERRORS,
    EXIT_UNCHANGED,
    HARVEST_MIN_MEMORY_MB,
    HEAD_UNREADABLE,
    SCRIPT,
    Harvest,
    HarvestPlan,
    fetch_file,
)
from runtime.git.safe_git import MainRepo

log = logging.getLogger(__name__)

ROLE_EXCHANGE = "exchange"
PORT = 9418
REPO = "/srv/x.git"
START_TIMEOUT_S = 90
HELPER_TIMEOUT_S = 600
EXCHANGE_MEMORY = 512 * 1024 * 1024

START_SCRIPT = r"""
set -eu
export HOME=/srv GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
mkdir -p /srv/in /srv/out
git init -q --bare /srv/x.git
git --git-dir=/srv/x.git config receive.fsckObjects true
git --git-dir=/srv/x.git config gc.auto 0
git --git-dir=/srv/x.git config core.hooksPath /dev/null
exec git daemon --reuseaddr --export-all --enable=receive-pack --informative-errors \
  --base-path=/srv --listen=0.0.0.0 --port=9418 /srv
"""

# Appended to the harvest script (which exits 3 when nothing changed): push what it made.
PUSH_SCRIPT = r"""
x=$4
g --git-dir="$h" push -q "$x" "refs/heads/work:refs/work/$sid/work"
if g --git-dir="$h" rev-parse -q --verify refs/heads/files >/dev/null; then
  g --git-dir="$h" push -q "$x" "refs/heads/files:refs/work/$sid/files"
fi
echo "agentrt-harvest: pushed"
"""


def exchange_name(run_id: str) -> str:
    """The exchange service's name (its host name on the run's network) and network's."""
    return f"agentrt-x-{run_id}"[:63]


@dataclass
class Exchange:
    """A run's exchange: its service, network and container (on the manager's own engine)."""

    client: docker.DockerClient
    run_id: str
    service_id: str
    network_id: str
    container_id: str
    _bases: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        """The repository as the run's helper tasks reach it."""
        return f"git://{exchange_name(self.run_id)}:{PORT}/x.git"

    @classmethod
    def start(cls, client: docker.DockerClient, run_id: str, node_id: str,
              timeout: float = START_TIMEOUT_S) -> Exchange:
        """Start the run's exchange on ``node_id`` (the manager agentrt talks to); EngineError
        when it does not come up (nothing of it is left)."""
        name = exchange_name(run_id)
        labels = {LABEL_RUN: run_id, LABEL_ROLE: ROLE_EXCHANGE}
        network = service = None
        try:
            with engine_errors(f"start the exchange {name}"):
                network = client.networks.create(name, driver="overlay", internal=True,
                                                 labels=labels)
                spec = helper_service_spec(
                    image=HELPER_IMAGE, command=["sh", "-c", START_SCRIPT], node_id=node_id,
                    labels=labels, memory_bytes=EXCHANGE_MEMORY, pids=256,
                    name_prefix="agentrt-x", session_id=run_id)
                # Writable root (the repository lives there); reached by name on the run's
                # network, by DNS round robin (no IPVS virtual IP needed).
                spec.update(name=name, read_only=False, networks=[network.id],
                            endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"))
                service = client.services.create(**spec)
                container_id = _wait_for_container(client, service, timeout)
                exchange = cls(client, run_id, str(service.id), str(network.id), container_id)
                exchange._git("rev-parse", "--git-dir")  # answers: the repository exists
                return exchange
        except BaseException:
            _remove(service, network)
            raise

    def _exec(self, argv: list[str], what: str) -> str:
        with engine_errors(what):
            result = self.client.api.exec_create(self.container_id, argv, user="0:0",
                                                 environment={"HOME": "/srv",
                                                              "GIT_CONFIG_NOSYSTEM": "1",
                                                              "GIT_CONFIG_GLOBAL": "/dev/null"})
            out = self.client.api.exec_start(result["Id"])
            code = self.client.api.exec_inspect(result["Id"]).get("ExitCode")
        text = bytes(out or b"").decode(errors="replace")
        if code != 0:
            raise EngineError(f"{what}: exit {code}: {text.strip()[-500:]}")
        return text

    def _git(self, *args: str) -> str:
        return self._exec(["git", f"--git-dir={REPO}", "-c", "core.hooksPath=/dev/null", *args],
                          f"git {args[0]} in the exchange")

    def ship_base(self, repo: MainRepo, branch: str, commit: str, scratch: Path) -> str:
        """Make ``commit`` (the tip of ``branch``) available in the exchange; its ref there."""
        ref = f"refs/base/{commit}"
        with self._lock:
            if commit in self._bases:
                return ref
            bundle = create_base_bundle(repo.git_dir, branch, commit, scratch / "base.bundle")
            inside = f"/srv/in/{commit}.bundle"
            try:
                with engine_errors("ship the base into the exchange"):
                    if not self.client.api.put_archive(
                            self.container_id, "/srv/in",
                            tar_one_file(bundle, f"{commit}.bundle")):
                        raise EngineError("the exchange refused the base bundle")
                self._git("fetch", "-q", "--no-tags", inside, f"+refs/heads/{branch}:{ref}")
                self._exec(["rm", "-f", inside], "remove the shipped bundle")
            except EngineError as exc:
                raise WorkspaceError(f"cannot ship the base to the exchange: {exc}") from exc
            finally:
                bundle.unlink(missing_ok=True)
            self._bases.add(commit)
            return ref

    def checkout_on_node(self, node_id: str, mounts: list[Any], session_id: str,
                         branch: str, commit: str, uid: int, gid: int) -> None:
        """Check ``commit`` out on ``branch`` in the volume ``mounts`` give, on ``node_id``:
        a helper task as the agent's uid fetches the base from the exchange."""
        spec = self._helper(node_id, session_id, "agentrt-checkout", mounts, uid, gid,
                            ["sh", "-c", CHECKOUT_SCRIPT, "agentrt-checkout", branch, commit,
                             self.url, f"refs/base/{commit}"], 512)
        try:
            code, output = run_one_shot(self.client, spec, timeout=HELPER_TIMEOUT_S)
        except EngineError as exc:
            raise WorkspaceError(f"cannot check {branch} out on node {node_id}: {exc}") from exc
        if code != 0:
            raise WorkspaceError(f"the checkout of {branch} on node {node_id} failed (exit "
                                 f"{code}): {output.strip()[-800:]}")

    def harvest_on_node(self, node_id: str, plan: HarvestPlan, dest: Path,
                        max_bytes: int) -> Harvest:
        """The harvest of :mod:`runtime.git.harvest`, run on ``node_id``; its bundles made in
        the exchange and copied out. HarvestError when it cannot finish."""
        sid = plan.session_id
        spec = self._helper(node_id, sid, "agentrt-harvest", list(plan.mounts), plan.uid,
                            plan.gid, ["sh", "-c", SCRIPT + PUSH_SCRIPT, "agentrt-harvest",
                                       plan.base_commit, "", sid, self.url],
                            max(plan.memory_mb, HARVEST_MIN_MEMORY_MB))
        try:
            code, output = run_one_shot(self.client, spec, timeout=HELPER_TIMEOUT_S)
            if code not in (0, EXIT_UNCHANGED):
                raise HarvestError(f"the harvest failed (exit {code}): {output.strip()[-800:]}")
            bundles: dict[str, Path] = {}
            if code == 0:
                dest.mkdir(parents=True, exist_ok=True)
                for name in ("work", "files"):
                    ref = f"refs/work/{sid}/{name}"
                    if not self._has(ref):
                        continue
                    inside = f"/srv/out/{sid}-{name}.bundle"
                    self._git("bundle", "create", "-q", inside, ref, "--not", plan.base_commit)
                    path = fetch_file(self.client, self.container_id, inside, dest, max_bytes)
                    self._exec(["rm", "-f", inside], "remove a made bundle")
                    if path is not None:
                        bundles[f"{name}.bundle"] = path
                if "work.bundle" not in bundles:
                    raise HarvestError("the harvest finished but the exchange has no work")
        except EngineError as exc:
            raise HarvestError(f"the harvest could not run on node {node_id}: {exc}") from exc
        return Harvest(bundles=bundles, unchanged=code == EXIT_UNCHANGED,
                       head_unreadable=HEAD_UNREADABLE in output,
                       unreadable_files=ADD_ERRORS in output, log=output)

    def _has(self, ref: str) -> bool:
        try:
            self._git("rev-parse", "-q", "--verify", ref)
        except EngineError:
            return False
        return True

    def forget(self, session_id: str) -> None:
        """Delete a session's refs from the exchange (its work is home)."""
        for name in ("work", "files"):
            with contextlib.suppress(EngineError):
                self._git("update-ref", "-d", f"refs/work/{session_id}/{name}")

    def _helper(self, node_id: str, session_id: str, prefix: str, mounts: list[Any],
                uid: int, gid: int, command: list[str], memory_mb: int) -> dict[str, Any]:
        spec = helper_service_spec(
            image=HELPER_IMAGE, command=command, node_id=node_id,
            labels={LABEL_SESSION: session_id, LABEL_ROLE: ROLE_HELPER, LABEL_RUN: self.run_id},
            mounts=mounts, user=f"{uid}:{gid}", memory_bytes=memory_mb * 1024 * 1024, pids=256,
            name_prefix=prefix, session_id=session_id)
        # Only agentrt's helpers join the run's network; their scratch is the writable root.
        spec.update(networks=[self.network_id], read_only=False, env={"HOME": "/var/tmp"})
        return spec

    def stop(self) -> None:
        """Remove the exchange's service and network; idempotent (EngineError if it cannot)."""
        with engine_errors("remove the exchange"):
            _remove(_get_or_none(self.client.services, self.service_id),
                    _get_or_none(self.client.networks, self.network_id))


def _get_or_none(collection: Any, object_id: str) -> Any:
    """``collection.get(object_id)``, or None when it is gone."""
    try:
        return collection.get(object_id)
    except docker.errors.NotFound:
        return None


def _wait_for_container(client: docker.DockerClient, service: Any, timeout: float) -> str:
    """The id of ``service``'s running task container on the engine ``client`` speaks to."""
    deadline = time.monotonic() + timeout
    state = "new"
    while time.monotonic() < deadline:
        tasks = service.tasks()
        if tasks:
            task = max(tasks, key=lambda t: str(t.get("CreatedAt", "")))
            status = task.get("Status") or {}
            state = str(status.get("State", ""))
            cid = str((status.get("ContainerStatus") or {}).get("ContainerID") or "")
            if state == "running" and cid:
                return cid
            if state in ("failed", "rejected", "shutdown", "complete"):
                raise EngineError(f"the exchange's task ended {state}: "
                                  f"{status.get('Err') or status.get('Message') or ''}")
        time.sleep(0.25)
    raise EngineError(f"the exchange did not start within {timeout:.0f} s (its task is {state})")


def _remove(service: Any, network: Any, wait_s: float = 60.0) -> None:
    """Remove the service, then the network once its tasks have left it; EngineError if
    something is still there after ``wait_s`` seconds."""
    for thing in (service, network):
        if thing is None:
            continue
        deadline = time.monotonic() + wait_s
        while True:
            try:
                thing.remove()
                if thing is network:  # the manager removes it a few seconds later
                    thing.reload()
                    raise docker.errors.APIError("still there")
                break
            except docker.errors.NotFound:
                break
            except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
                if time.monotonic() > deadline:
                    raise EngineError(f"cannot remove {getattr(thing, 'name', thing)}: "
                                      f"{exc}") from exc
                time.sleep(0.5)


def remove_exchanges(client: docker.DockerClient, run_id: str | None = None) -> list[str]:
    """Remove the exchanges (services and networks) of ``run_id`` (of every run if None),
    found by label; their names."""
    filters = [f"{LABEL_ROLE}={ROLE_EXCHANGE}"]
    if run_id is not None:
        filters.append(f"{LABEL_RUN}={run_id}")
    removed: list[str] = []
    with engine_errors("list the exchanges"):
        services = client.services.list(filters={"label": filters})
        networks = client.networks.list(filters={"label": filters})
    for service in services:
        removed.append(str(service.name))
        _remove(service, None)
    for network in networks:
        _remove(None, network)
    return removed
