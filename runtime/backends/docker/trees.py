"""A session's working tree and the volume holding it: on this host or on the engine's host.

One interface, :class:`~runtime.backends.base.SessionTree`, for everything a session does with
its tree; two homes:

* :class:`HostTree`: the volume is made on the machine running agentrt
  (:mod:`runtime.engine.volumes`: a loop-mounted ext4 image, or a plain directory with a soft
  limit) and bound into the container by path; the base is checked out by host git, borrowing
  the run's read-only object store (bound in at the neutral ``/agentrt/objects``, never at its
  host path). The fast path, for an engine that shares this disk.
* :class:`EngineTree`: the volume is made where the engine runs
  (:mod:`runtime.engine.engine_volumes`), the base goes in as a bundle through ``put_archive``
  and is checked out in a helper there (:mod:`runtime.git.engine_checkout`), the secrets file
  goes in through ``put_archive`` too, and usage is read by helpers. For Colima's VM, a remote
  engine, a Docker-in-Docker engine: agentrt's host shares no path with the engine.

Either way the tree is read back only by a harvest container (:mod:`runtime.git.harvest`),
which mounts :meth:`SessionTree.harvest_mounts`. Which home a session gets is decided by
:func:`runtime.backends.docker.disk_sharing.volume_on_engine`, from what the engine reports.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from collections.abc import Callable, Mapping
from pathlib import Path

import docker
from docker.types import Mount

from runtime.backends.base import SessionTree, secrets_text
from runtime.backends.docker.remote_volume import RemoteVolume
from runtime.engine.container import (
    DB_MOUNT,
    SECRETS_FILE,
    SECRETS_MOUNT,
    STORE_MOUNT,
    WORKSPACE,
)
from runtime.engine.discovery import engine_errors
from runtime.engine.engine_volumes import EngineVolume, create_engine_volume
from runtime.engine.seeded_volumes import create_volume_from_seed
from runtime.engine.volumes import DiskLimitMode, Volume, create_volume
from runtime.errors import EngineError, VolumeError
from runtime.git.engine_checkout import checkout_in_engine, create_base_bundle
from runtime.git.harvest import Harvest, HarvestPlan, run_harvest
from runtime.git.safe_git import MainRepo
from runtime.git.workspace import adopt_seed_checkout, create_workspace


class HostTree(SessionTree):
    """The volume on agentrt's own disk, bound into the container by path."""

    on_engine = False
    store: Path

    def __init__(self, volume: Volume, uid: int, gid: int, store: Path,
                 seeded: bool = False) -> None:
        self.volume = volume
        self.mode = volume.mode
        self.limit_bytes = volume.limit_bytes
        self.store = store
        self.seeded = seeded
        self._uid, self._gid = uid, gid

    @classmethod
    def create(cls, session_dir: Path, disk_mb: int, uid: int, gid: int, store: Path,
               mode: DiskLimitMode | None = None, seed: Path | None = None) -> HostTree:
        """Make the volume in ``session_dir`` (see :func:`runtime.engine.volumes.create_volume`);
        with a ``seed`` (a loop volume only), as a copy of the run's seed checkout."""
        if seed is not None:
            volume = create_volume_from_seed(session_dir, disk_mb, uid, gid, seed)
            return cls(volume, uid, gid, store, seeded=True)
        return cls(create_volume(session_dir, disk_mb, uid, gid, mode), uid, gid, store)

    @property
    def location(self) -> str:
        return str(self.volume.root)

    @property
    def host_db_dir(self) -> Path | None:
        return self.volume.db_dir

    @property
    def _secrets_dir(self) -> Path:
        # Inside the volume (never mounted into a harvest): what the agent writes at
        # /run/agentrt counts against its disk_mb like the rest of its tree.
        return self.volume.root / "secrets"

    def checkout(self, repo: MainRepo, branch: str, commit: str, scratch: Path) -> None:
        if self.seeded:  # the seed's checkout is already there: only its branch is new
            adopt_seed_checkout(self.volume.workspace, branch, commit, self._uid, self._gid)
            return
        create_workspace(repo, self.volume.workspace, branch, commit, self._uid, self._gid,
                         objects=self.store)

    def agent_mounts(self) -> list[Mount]:
        return [Mount(WORKSPACE, str(self.volume.workspace), type="bind", read_only=False),
                Mount(DB_MOUNT, str(self.volume.db_dir), type="bind", read_only=False),
                self._store_mount()]

    def harvest_mounts(self) -> list[Mount]:
        return [Mount(WORKSPACE, str(self.volume.workspace), type="bind", read_only=True),
                self._store_mount()]

    def _store_mount(self) -> Mount:
        # Read-only, at a neutral path (never the host's: the container's uid need not reach
        # it); the session repository's alternates reach it there (runtime.git.workspace).
        return Mount(STORE_MOUNT, str(self.store), type="bind", read_only=True)

    def secrets_mount(self, values: Mapping[str, str]) -> Mount:
        """Write the file now: a directory (0700) and file (0400) of the agent's uid, in the
        session's volume (so the mount's writes are held by ``disk_mb``), next to
        ``workspace/`` and ``db/``."""
        directory = self._secrets_dir
        directory.mkdir(mode=0o700)
        fd = os.open(directory / SECRETS_FILE,
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
        try:
            os.write(fd, secrets_text(values))
            if os.getuid() == 0:
                os.fchown(fd, self._uid, self._gid)
        finally:
            os.close(fd)
        if os.getuid() == 0:
            os.chown(directory, self._uid, self._gid)
        return Mount(SECRETS_MOUNT, str(directory), type="bind", read_only=False)

    def deliver_secrets(self, client: docker.DockerClient, container_id: str) -> None:
        """Nothing to do: :meth:`secrets_mount` wrote the file on this host."""

    def discard_secrets(self) -> None:
        # unlink does not follow a link the agent might have planted there.
        with contextlib.suppress(OSError):
            (self._secrets_dir / SECRETS_FILE).unlink()

    def used_bytes(self) -> int:
        return self.volume.used_bytes()

    def free_bytes(self) -> int:
        return self.volume.free_bytes()

    @property
    def usage_walker(self) -> Callable[[], int] | None:
        return self.volume.used_bytes if self.mode == "soft" else None

    def harvest(self, client: docker.DockerClient, plan: HarvestPlan, dest: Path,
                max_bytes: int) -> Harvest:
        """The engine shares this disk: its bundles are taken from the harvest's out volume
        as data (:func:`runtime.git.harvest.take_file`), not streamed through the API."""
        return run_harvest(client, plan, dest, max_bytes, shares_disk=True)

    def remove(self) -> None:
        self.volume.remove()

    @property
    def host_volume(self) -> Volume | None:
        return self.volume

    def keep(self) -> None:
        """Its blocks reach the disk before agentrt lets go of a kept volume."""
        self.volume.sync()


class EngineTree(SessionTree):
    """The volume on the engine's host; every file operation goes through the Docker API."""

    on_engine = True

    def __init__(self, client: docker.DockerClient, volume: EngineVolume, uid: int,
                 gid: int) -> None:
        self.client = client
        self.volume = volume
        self.remote = RemoteVolume(client, volume)
        self.mode = volume.mode
        self.limit_bytes = volume.limit_bytes
        self._uid, self._gid = uid, gid
        self._secrets: bytes | None = None

    @classmethod
    def create(cls, client: docker.DockerClient, session_id: str, disk_mb: int, uid: int,
               gid: int, labels: Mapping[str, str]) -> EngineTree:
        """Make the volume on the engine's host (see
        :func:`runtime.engine.engine_volumes.create_engine_volume`)."""
        volume = create_engine_volume(client, session_id, disk_mb, uid, gid, labels=labels)
        return cls(client, volume, uid, gid)

    @property
    def location(self) -> str:
        return self.volume.root

    def checkout(self, repo: MainRepo, branch: str, commit: str, scratch: Path) -> None:
        """The branch's history as a bundle made on this host (the user's repository, trusted),
        shipped in and checked out by a helper on the engine."""
        bundle = create_base_bundle(repo.git_dir, branch, commit, scratch / "base.bundle")
        try:
            checkout_in_engine(self.client, self.volume, bundle, branch, commit,
                               self._uid, self._gid)
        finally:
            bundle.unlink(missing_ok=True)

    def agent_mounts(self) -> list[Mount]:
        return self.remote.mounts()

    def harvest_mounts(self) -> list[Mount]:
        return self.remote.mounts(db=False, read_only=True)

    def secrets_mount(self, values: Mapping[str, str]) -> Mount:
        self._secrets = secrets_text(values)
        return Mount(SECRETS_MOUNT, self.volume.secrets_dir, type="bind", read_only=False)

    def deliver_secrets(self, client: docker.DockerClient, container_id: str) -> None:
        """``put_archive`` into the created container's secrets mount: the engine writes the
        file (0400, the agent's uid) into the volume on its own host."""
        if self._secrets is None:
            return
        data = io.BytesIO()
        with tarfile.open(fileobj=data, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            info = tarfile.TarInfo(SECRETS_FILE)
            info.size, info.mode = len(self._secrets), 0o400
            info.uid, info.gid = self._uid, self._gid
            tar.addfile(info, io.BytesIO(self._secrets))
        self._secrets = None
        with engine_errors("put the secrets file into the container"):
            if not client.api.put_archive(container_id, SECRETS_MOUNT, data.getvalue()):
                raise EngineError("the engine refused the secrets file")

    def discard_secrets(self) -> None:
        """Forget a file not yet delivered. One delivered to a container that never started
        stays in the volume's ``secrets/`` (0700, never mounted into a harvest) until the
        volume is removed."""
        self._secrets = None

    def used_bytes(self) -> int:
        return self.remote.used_bytes()

    def free_bytes(self) -> int:
        return self.remote.free_bytes()

    def remove(self) -> None:
        try:
            self.remote.remove()
        except EngineError as exc:
            raise VolumeError(str(exc)) from exc
