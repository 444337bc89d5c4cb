"""Session volumes made on the Docker engine's host, through the Docker API only.

:mod:`runtime.engine.volumes` makes a session's volume on the host that runs agentrt and binds
it into the container by host path: that only works when the engine shares agentrt's disk. This
module makes the same volume *where the engine runs* (a Colima or Docker Desktop VM, a remote
engine, a Docker-in-Docker engine), with nothing but API calls: every file operation happens in a
short *helper container* (agentrt's base image) on that engine.

**Loop mode** (a Linux engine that is not rootless and has loop devices). The helper runs as
root with exactly three capabilities, ``SYS_ADMIN`` (losetup, mount, umount), ``MKNOD`` (a
container's ``/dev`` has no loop nodes; it makes ``/dev/loopN`` for the numbers the kernel hands
out through ``/dev/loop-control``) and ``CHOWN`` (hands the volume to the agent's uid), plus
``/dev/loop-control`` and the device cgroup rule ``b 7:* rwm``; no-new-privileges and Docker's
default seccomp profile stay on (it allows ``mount`` to a holder of ``SYS_ADMIN``), never
``--privileged``. Where the engine enforces AppArmor or SELinux, their profiles forbid
``mount`` and are lifted for the helper only. The helper

* ``fallocate``\\ s ``<state>/sessions/<id>/volume.img`` (``disk_mb`` MiB, not sparse),
  ``mkfs.ext4 -E nodiscard`` (same settings as :mod:`runtime.engine.volumes`), and
* loop-mounts it ``nodev,nosuid,noatime`` at ``<state>/sessions/<id>/volume`` with
  ``workspace/`` and ``db/`` owned by the agent's uid.

``<state>`` is a directory *on the engine's host*: ``AGENTRT_ENGINE_STATE_DIR`` when set, else
``<DockerRootDir>/agentrt`` (``/var/lib/docker/agentrt``). The helper binds it with ``rshared``
propagation, so the mount it makes leaves its own mount namespace and appears in the engine's:
a session container then binds ``<state>/sessions/<id>/volume/workspace`` like any host path, and
the helper may exit. Docker accepts an ``rshared`` bind only from a shared mount; the data root
is one on every engine (dockerd makes it shared at start, because its own plugins need it),
while ``/`` often is not (it is not on this project's CI host): that is why the state lives
under the data root. Docker never looks into directories of its root that it did not make.
Unmounting in a later helper propagates back the same way; the loop device was attached with
autoclear (``mount -o loop``) and goes with the last unmount. A container binding a path under
the data root gets ``rslave`` propagation (Docker refuses ``rprivate`` there): mounts made
later on the engine's host under that path would appear in it, and only root there can make
them.

The image is mounted ``noinit_itable``: otherwise the kernel's lazy inode-table initialisation
zeroes the tables through the loop device, which punches holes into the image file and gives
part of the reservation made by ``fallocate`` back to the engine's host (4 MiB of 64 within
seconds, measured on this project's host; :mod:`runtime.engine.volumes` has the same leak). The
tables of a freshly allocated file read as zeros anyway.

**Soft mode** (rootless engine, no loop devices, anything the probe finds failing): a plain
named volume holding ``workspace/`` and ``db/``; its size is not limited by the kernel
(``disk_limit_mode = "soft"``), so the caller must measure it (:func:`engine_volume_usage`).

In both modes each session has one **named Docker volume** ``agentrt-vol-<session>`` labelled
``agentrt.session=<id>``, ``agentrt.role=volume`` and ``agentrt.volume.*`` (mode, size, engine
path): ``gc`` finds every engine volume by label (:func:`list_engine_volumes`) and
:func:`remove_engine_volume` needs nothing else. In loop mode it is a bind of the mounted image
(local driver, ``o=bind``), in soft mode it holds the data. Helper containers carry
``agentrt.role=volume-helper`` and are removed when they end.

Nothing of this touches the filesystem of the process running agentrt, except for reading a
git bundle that :func:`checkout_in_engine` ships with ``put_archive``.

The helper containers and their scripts are in :mod:`runtime.engine.volume_helpers`; a session
uses its volume through :class:`runtime.backends.docker.remote_volume.RemoteVolume`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.types import Mount

from runtime.engine.discovery import engine_errors, engine_info
from runtime.engine.labels import LABEL_ROLE, LABEL_SESSION
from runtime.engine.volume_helpers import (
    CREATE_SCRIPT,
    HELPER_IMAGE,
    HELPER_MEMORY,
    JOURNAL_MIN_MB,
    PROBE_SCRIPT,
    REMOVE_SCRIPT,
    ROLE_HELPER,
    SOFT_CREATE_SCRIPT,
    USAGE_SCRIPT,
    loop_helper_spec,
    run_helper,
)
from runtime.engine.volumes import DiskLimitMode
from runtime.errors import EngineError, VolumeError

log = logging.getLogger(__name__)

#: Environment variable naming the state directory on the engine's host (an absolute path
#: there); default ``<DockerRootDir>/agentrt``. It must lie on a shared mount of that host.
STATE_DIR_ENV = "AGENTRT_ENGINE_STATE_DIR"
#: Environment variable forcing a mode (``loop`` or ``soft``) instead of probing the engine.
MODE_ENV = "AGENTRT_ENGINE_VOLUMES"
ROLE_VOLUME = "volume"
LABEL_MODE = "agentrt.volume.mode"
LABEL_LIMIT = "agentrt.volume.limit-bytes"
LABEL_ROOT = "agentrt.volume.root"
LABEL_UID = "agentrt.volume.uid"
VOLUME_PREFIX = "agentrt-vol-"
WORKSPACE_TARGET = "/workspace"
DB_TARGET = "/agentrt/db"
_SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True)
class EngineVolume:
    """One session's volume on the engine's host.

    ``root`` is a path *on the engine's host* (never on agentrt's): the mounted image in loop
    mode, the named volume's directory in soft mode. It holds ``workspace/`` and ``db/``.
    """

    session_id: str
    name: str  # the labelled named Docker volume, agentrt-vol-<session>
    mode: DiskLimitMode
    limit_bytes: int
    root: str
    uid: int = 1000

    @property
    def workspace(self) -> str:
        """The working tree's path on the engine's host."""
        return f"{self.root}/workspace"

    @property
    def db_dir(self) -> str:
        """The private database directory's path on the engine's host."""
        return f"{self.root}/db"

    @property
    def secrets_dir(self) -> str:
        """Where the secrets file waits for the entry point (0700, the agent's uid): outside
        the workspace, never mounted into a harvest."""
        return f"{self.root}/secrets"

    @property
    def session_dir(self) -> str | None:
        """``<state>/sessions/<id>`` on the engine's host (loop mode), else None."""
        return self.root.rsplit("/", 1)[0] if self.mode == "loop" else None

    def mounts(self, workspace_target: str = WORKSPACE_TARGET,
               db_target: str | None = DB_TARGET, read_only: bool = False) -> list[Mount]:
        """The mounts a session (or harvest) container on this engine uses for the volume.

        Binds of engine-host paths, as :func:`runtime.engine.container.container_spec` makes for a
        host-side volume: the engine resolves the source on its own host.
        """
        mounts = [Mount(workspace_target, self.workspace, type="bind", read_only=read_only)]
        if db_target is not None:
            mounts.append(Mount(db_target, self.db_dir, type="bind", read_only=read_only))
        return mounts

    def labels(self) -> dict[str, str]:
        """The labels of the named volume (with its mount point, all that
        :meth:`from_labels` needs). The root of a soft volume is its mount point."""
        labels = {
            LABEL_SESSION: self.session_id,
            LABEL_ROLE: ROLE_VOLUME,
            LABEL_MODE: self.mode,
            LABEL_LIMIT: str(self.limit_bytes),
            LABEL_UID: str(self.uid),
        }
        if self.mode == "loop":
            labels[LABEL_ROOT] = self.root
        return labels

    @classmethod
    def from_labels(cls, name: str, labels: dict[str, str],
                    mountpoint: str = "") -> EngineVolume:
        """The volume a labelled named Docker volume (its labels and ``Mountpoint``)
        describes; VolumeError if it is not one."""
        try:
            mode = labels[LABEL_MODE]
            if mode not in ("loop", "soft") or labels.get(LABEL_ROLE) != ROLE_VOLUME:
                raise ValueError(f"role {labels.get(LABEL_ROLE)!r}, mode {mode!r}")
            session_id = labels[LABEL_SESSION]
            _check_session_id(session_id)
            return cls(session_id=session_id, name=name,
                       mode="loop" if mode == "loop" else "soft",
                       limit_bytes=int(labels[LABEL_LIMIT]),
                       root=labels[LABEL_ROOT] if mode == "loop" else mountpoint,
                       uid=int(labels.get(LABEL_UID, "1000")))
        except (KeyError, ValueError) as exc:
            raise VolumeError(f"named volume {name} is not an agentrt engine volume: {exc}") \
                from exc


def volume_name(session_id: str) -> str:
    """The named Docker volume of a session."""
    return VOLUME_PREFIX + session_id


def _check_session_id(session_id: str) -> None:
    if not _SESSION_ID.match(session_id):
        raise VolumeError(f"session id {session_id!r} cannot name an engine volume")


def engine_state_dir(client: docker.DockerClient) -> str:
    """The state directory on the engine's host: ``AGENTRT_ENGINE_STATE_DIR`` or
    ``<DockerRootDir>/agentrt``."""
    chosen = os.environ.get(STATE_DIR_ENV)
    if chosen:
        if not chosen.startswith("/") or "/.." in chosen or ":" in chosen:
            raise VolumeError(f"{STATE_DIR_ENV}={chosen!r} is not a plain absolute path")
        return chosen.rstrip("/") or "/"
    root = str(engine_info(client).get("DockerRootDir") or "/var/lib/docker")
    return f"{root.rstrip('/')}/agentrt"


_modes: dict[tuple[str, str, str], DiskLimitMode] = {}
_modes_lock = threading.Lock()


def engine_volume_mode(client: docker.DockerClient, refresh: bool = False) -> DiskLimitMode:
    """``loop`` if this engine can hold loop-mounted volumes, else ``soft``.

    ``AGENTRT_ENGINE_VOLUMES`` forces a mode. Otherwise a rootless or non-Linux engine is
    ``soft``, and any other engine runs the probe helper once (a 4 MiB image made, mounted
    through the ``rshared`` state directory, unmounted, deleted): the answer is kept per
    engine and state directory for the life of the process.
    """
    forced = os.environ.get(MODE_ENV)
    if forced in ("loop", "soft"):
        return "loop" if forced == "loop" else "soft"
    info = engine_info(client)
    state = engine_state_dir(client)
    key = (str(client.api.base_url), str(info.get("ID", "")), state)
    with _modes_lock:
        if not refresh and key in _modes:
            return _modes[key]
    options = " ".join(str(o) for o in info.get("SecurityOptions") or [])
    if info.get("OSType", "linux") != "linux" or "name=rootless" in options:
        mode: DiskLimitMode = "soft"
    else:
        try:
            spec = loop_helper_spec(client, state, PROBE_SCRIPT, [secrets.token_hex(6)],
                                     "probe")
            run_helper(client, spec, "probe loop volumes on the engine", timeout=60)
            mode = "loop"
        except VolumeError as exc:
            log.warning("engine volumes fall back to soft limits: %s", exc)
            mode = "soft"
    with _modes_lock:
        _modes[key] = mode
    return mode


def create_engine_volume(client: docker.DockerClient, session_id: str, disk_mb: int, uid: int,
                         gid: int, mode: DiskLimitMode | None = None,
                         labels: Mapping[str, str] | None = None) -> EngineVolume:
    """Make session ``session_id``'s volume of ``disk_mb`` MiB on the engine's host, owned by
    ``uid:gid``, with ``workspace/`` and ``db/``; undone on failure (VolumeError).

    ``labels`` (e.g. ``agentrt.repo``, ``agentrt.run``) go on the named volume only, never on
    the helper containers, so a lookup of containers by repository sees sessions alone."""
    extra = dict(labels or {})
    _check_session_id(session_id)
    if not 1 <= disk_mb <= 16 * 1024 * 1024:
        raise VolumeError(f"disk_mb={disk_mb} is out of range")
    chosen = mode or engine_volume_mode(client)
    name = volume_name(session_id)
    limit = disk_mb * 1024 * 1024
    if chosen == "loop":
        state = engine_state_dir(client)
        volume = EngineVolume(session_id, name, "loop", limit,
                              f"{state}/sessions/{session_id}/volume", uid)
        # The labelled record first: a crash after it leaves something gc finds by label.
        _create_named_volume(client, volume, {"type": "none", "o": "bind",
                                              "device": volume.root}, extra)
        try:
            journal = "yes" if disk_mb >= JOURNAL_MIN_MB else "no"
            label = ("agentrt-" + session_id[-8:])[:16]
            spec = loop_helper_spec(client, state, CREATE_SCRIPT,
                                     [session_id, str(disk_mb), str(uid), str(gid), label,
                                      journal], session_id)
            run_helper(client, spec, f"create the engine volume of {session_id}")
        except VolumeError:
            with contextlib.suppress(VolumeError, EngineError):
                _remove_named_volume(client, name)
            raise
        return volume
    volume = EngineVolume(session_id, name, "soft", limit, "", uid)
    docker_volume = _create_named_volume(client, volume, None, extra)
    volume = EngineVolume(session_id, name, "soft", limit,
                          str(docker_volume.attrs.get("Mountpoint", "")), uid)
    try:
        if not volume.root.startswith("/"):
            raise VolumeError(f"named volume {name} has no mount point on the engine's host")
        spec = {
            "image": HELPER_IMAGE,
            "command": ["sh", "-c", SOFT_CREATE_SCRIPT, "agentrt-volume", str(uid), str(gid)],
            "user": "0:0", "cap_drop": ["ALL"], "cap_add": ["CHOWN"],
            "security_opt": ["no-new-privileges:true"], "network_mode": "none",
            "mounts": [Mount("/vol", name, type="volume", no_copy=True)],
            "mem_limit": HELPER_MEMORY, "memswap_limit": HELPER_MEMORY, "pids_limit": 64,
            "labels": {LABEL_SESSION: session_id, LABEL_ROLE: ROLE_HELPER}, "detach": True,
        }
        run_helper(client, spec, f"prepare the soft engine volume of {session_id}")
    except VolumeError:
        with contextlib.suppress(VolumeError, EngineError):
            _remove_named_volume(client, name)
        raise
    return volume


def _create_named_volume(client: docker.DockerClient, volume: EngineVolume,
                         driver_opts: dict[str, str] | None, extra: dict[str, str]) -> Any:
    with engine_errors(f"create the named volume {volume.name}"):
        try:
            client.volumes.get(volume.name)
        except docker.errors.NotFound:
            pass
        else:
            raise VolumeError(f"named volume {volume.name} already exists on the engine")
        return client.volumes.create(name=volume.name, driver="local",
                                     driver_opts=driver_opts or {},
                                     labels={**extra, **volume.labels()})


def _remove_named_volume(client: docker.DockerClient, name: str) -> None:
    with engine_errors(f"remove the named volume {name}"), \
            contextlib.suppress(docker.errors.NotFound):
        client.api.remove_volume(name, force=True)


def remove_engine_volume(client: docker.DockerClient, volume: EngineVolume) -> None:
    """Unmount and delete ``volume`` on the engine's host, and its named volume; idempotent.

    Remove the containers that bind it first: a container still holding the mount keeps the
    image's blocks (and its loop device) until it goes. VolumeError if something remains.
    """
    _check_session_id(volume.session_id)
    if volume.mode == "loop":
        state = volume.session_dir.rsplit("/sessions/", 1)[0] if volume.session_dir else ""
        expected = f"{state}/sessions/{volume.session_id}/volume"
        if not state.startswith("/") or volume.root != expected:
            raise VolumeError(f"engine volume {volume.name} has an unexpected root {volume.root}")
        spec = loop_helper_spec(client, state, REMOVE_SCRIPT, [volume.session_id],
                                 volume.session_id)
        run_helper(client, spec, f"remove the engine volume of {volume.session_id}")
    try:
        _remove_named_volume(client, volume.name)
    except EngineError as exc:
        raise VolumeError(str(exc)) from exc


def list_engine_volumes(client: docker.DockerClient,
                        session_id: str | None = None) -> list[EngineVolume]:
    """Every agentrt engine volume on this engine (of one session if given), by label."""
    filters = [f"{LABEL_ROLE}={ROLE_VOLUME}"]
    if session_id is not None:
        filters.append(f"{LABEL_SESSION}={session_id}")
    with engine_errors("list engine volumes"):
        found = client.volumes.list(filters={"label": filters})
    volumes = []
    for item in found:
        with contextlib.suppress(VolumeError):
            volumes.append(EngineVolume.from_labels(
                str(item.name), dict(item.attrs.get("Labels") or {}),
                str(item.attrs.get("Mountpoint") or "")))
    return sorted(volumes, key=lambda v: v.session_id)


def engine_volume_usage(client: docker.DockerClient, volume: EngineVolume) -> tuple[int, int]:
    """(used, free) bytes of ``volume``, read by a helper on the engine (``df`` of the image in
    loop mode, ``du`` against the limit in soft mode). A live session is cheaper to ask by
    ``docker exec`` in its own container."""
    spec = {
        "image": HELPER_IMAGE, "command": ["sh", "-c", USAGE_SCRIPT], "user": f"{volume.uid}",
        "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"],
        "network_mode": "none",
        "mounts": [Mount("/vol", volume.root, type="bind", read_only=True)],
        "mem_limit": HELPER_MEMORY, "memswap_limit": HELPER_MEMORY, "pids_limit": 64,
        "labels": {LABEL_SESSION: volume.session_id, LABEL_ROLE: ROLE_HELPER}, "detach": True,
    }
    out = run_helper(client, spec, f"measure the engine volume of {volume.session_id}")
    fields = {line.split()[0]: [int(x) * 1024 for x in line.split()[1:]]  # KiB
              for line in out.splitlines() if line.split()[:1] in (["df"], ["du"])}
    if volume.mode == "loop" and "df" in fields:
        return fields["df"][0], fields["df"][1]
    used = fields.get("du", [0])[0]
    return used, max(0, volume.limit_bytes - used)
