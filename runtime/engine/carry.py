"""A branch's carried state: what ``agentrt continue`` hands from one session to the next.

A session's private data directory (``/agentrt/db``: its SQLite file ``AGENT_DB`` and the agent
CLI's conversation state, :data:`runtime.presets.STATE_DIR`) lives on its disk-limited volume,
which goes when the session ends. Before it goes, a helper container copies that directory
into the branch's *carry volume*, a named volume on the engine (labelled
``agentrt.role=carry``, ``agentrt.repo``, ``agentrt.branch`` and the session that wrote it);
a continuation of the branch gets a copy back into its own fresh volume before its agent
starts. One carry per branch: each session of the branch replaces it when it ends.

The host never opens the agent's files (``docs/security.md``): both copies run in a helper
on the engine (agentrt's base image, read-only root, no network, uid 0 of its own container
with only ``CHOWN``, ``DAC_OVERRIDE``, ``DAC_READ_SEARCH`` and ``FOWNER``: enough to copy files
of any mode with their owner, nothing else), ``cp -a`` copying links as links, the source
mounted read-only. What the agent left is bounded by its ``disk_mb``, and so is the copy back
(it lands on the continuation's volume). Works the same with an engine that does not share
agentrt's disk: the carry lives where the engine is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import docker
import docker.errors
from docker.types import Mount

from runtime.engine.discovery import engine_errors
from runtime.engine.labels import LABEL_REPO, LABEL_ROLE
from runtime.engine.volume_helpers import HELPER_IMAGE, HELPER_MEMORY, run_helper
from runtime.errors import VolumeError

ROLE_CARRY = "carry"
LABEL_BRANCH = "agentrt.branch"
CARRY_CAPS = ["CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER"]
# Arguments: none. /from read-only, /to the destination; the destination is emptied first so a
# file the later session deleted does not come back.
COPY_SCRIPT = r"""
set -eu
find /to -mindepth 1 -maxdepth 1 -exec rm -rf {} +
cp -a /from/. /to/
"""


def carry_name(repo_root: str, branch: str) -> str:
    """The carry volume's name for ``branch`` of the repository at ``repo_root`` (pure): one
    per branch and repository on an engine, whatever either name holds."""
    digest = hashlib.sha256(f"{repo_root}\0{branch}".encode()).hexdigest()[:20]
    return f"agentrt-carry-{digest}"


def carry_exists(client: docker.DockerClient, name: str) -> bool:
    """Whether the carry volume ``name`` is on the engine."""
    with engine_errors(f"look up the carry volume {name}"):
        try:
            client.volumes.get(name)
        except docker.errors.NotFound:
            return False
    return True


def _copy(client: docker.DockerClient, source: Mount, dest: Mount, what: str,
          labels: Mapping[str, str]) -> None:
    spec = {
        "image": HELPER_IMAGE, "command": ["sh", "-c", COPY_SCRIPT], "user": "0:0",
        "cap_drop": ["ALL"], "cap_add": CARRY_CAPS,
        "security_opt": ["no-new-privileges:true"], "network_mode": "none",
        "read_only": True, "mounts": [source, dest],
        "mem_limit": HELPER_MEMORY, "memswap_limit": HELPER_MEMORY, "pids_limit": 64,
        # Like a harvest's: the repository's label (so leftovers are found), not a session's
        # (a helper is not one of the session's own containers).
        "labels": {**{k: v for k, v in labels.items() if k == LABEL_REPO},
                   LABEL_ROLE: "carry-helper"}, "detach": True,
    }
    run_helper(client, spec, what)


def _rebind(mount: Mount, target: str, read_only: bool) -> Mount:
    """``mount`` (a session's data directory, bind or named volume) at ``target``."""
    return Mount(target, str(mount["Source"]), type=str(mount.get("Type") or "bind"),
                 read_only=read_only)


def save_carry(client: docker.DockerClient, data_dir: Mount, name: str,
               labels: Mapping[str, str]) -> None:
    """Copy the session's data directory (``data_dir``, as mounted into its container) into
    the carry volume ``name``, made with ``labels`` if new. VolumeError if it fails."""
    with engine_errors(f"create the carry volume {name}"):
        try:
            client.volumes.get(name)
        except docker.errors.NotFound:
            client.volumes.create(name=name, driver="local",
                                  labels={**labels, LABEL_ROLE: ROLE_CARRY})
    _copy(client, _rebind(data_dir, "/from", True),
          Mount("/to", name, type="volume", no_copy=True),
          f"keep the session's state in {name}", labels)


def restore_carry(client: docker.DockerClient, name: str, data_dir: Mount,
                  labels: Mapping[str, str]) -> None:
    """Copy the carry volume ``name`` into a new session's data directory (``data_dir``),
    replacing its fresh database. VolumeError if it fails (or the carry is gone)."""
    if not carry_exists(client, name):
        raise VolumeError(f"the carried state {name} is not on this engine")
    _copy(client, Mount("/from", name, type="volume", read_only=True, no_copy=True),
          _rebind(data_dir, "/to", False), f"restore the state kept in {name}", labels)


def remove_carry(client: docker.DockerClient, name: str) -> bool:
    """Remove the carry volume ``name``; True if there was one. Idempotent."""
    with engine_errors(f"remove the carry volume {name}"):
        try:
            client.api.remove_volume(name, force=True)
        except docker.errors.NotFound:
            return False
    return True
