"""An engine-side volume behind the host volume's interface (what a session's tree uses): its
mounts resolved on the engine, its usage read by a helper there (one reading per moment), and
its removal."""

from __future__ import annotations

import time

import docker
from docker.types import Mount

from runtime.engine.engine_volumes import (
    DB_TARGET,
    EngineVolume,
    engine_volume_usage,
    remove_engine_volume,
)
from runtime.engine.volumes import DiskLimitMode

USAGE_FRESH_S = 2.0


class RemoteVolume:
    """An engine-side volume with the host volume's interface (what a session uses)."""

    def __init__(self, client: docker.DockerClient, volume: EngineVolume) -> None:
        self.client = client
        self.volume = volume
        self.mode: DiskLimitMode = volume.mode
        self.limit_bytes = volume.limit_bytes
        self._read: tuple[float, tuple[int, int]] | None = None

    @property
    def root(self) -> str:
        """Where the volume is on the engine's host (for the record)."""
        return self.volume.root

    def mounts(self, db: bool = True, read_only: bool = False) -> list[Mount]:
        """Binds of the workspace (and the database directory), resolved on the engine."""
        return self.volume.mounts(db_target=DB_TARGET if db else None, read_only=read_only)

    def used_bytes(self) -> int:
        """Bytes in use, read by a helper on the engine."""
        return self._usage()[0]

    def free_bytes(self) -> int:
        """Bytes still free, read by a helper on the engine."""
        return self._usage()[1]

    def _usage(self) -> tuple[int, int]:
        # Each reading is a helper container: one reading answers both questions of a moment
        # (classifying an exit asks for free space, then usage).
        now = time.monotonic()
        if self._read is None or now - self._read[0] > USAGE_FRESH_S:
            self._read = (now, engine_volume_usage(self.client, self.volume))
        return self._read[1]

    def remove(self) -> None:
        """Unmount and delete it on the engine's host; idempotent."""
        remove_engine_volume(self.client, self.volume)
