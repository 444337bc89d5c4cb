"""What every backend shares: the session's tree interface (and, with it, the secrets file).

A backend (:mod:`runtime.backends.docker`, :mod:`runtime.backends.swarm`) decides *where* a
session runs; everything it makes for the session's working tree is behind
:class:`SessionTree`, so the session itself never asks which backend it has.
"""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path

import docker
from docker.types import Mount

from runtime.engine.volumes import DiskLimitMode
from runtime.git.harvest import Harvest, HarvestPlan, run_harvest
from runtime.git.safe_git import MainRepo


def secrets_text(values: Mapping[str, str]) -> bytes:
    """The secrets file the entry point sources: one ``export NAME='value'`` line each."""
    return "".join(f"export {name}={shlex.quote(value)}\n"
                   for name, value in values.items()).encode()


class SessionTree(ABC):
    """A session's volume and working tree, wherever the engine keeps them."""

    mode: DiskLimitMode
    limit_bytes: int
    #: True when the tree is on the engine's host: nothing of it is on agentrt's disk.
    on_engine: bool
    #: The run's object store the tree borrows from (a host path; bound into the session and
    #: its harvest at STORE_MOUNT), if any.
    store: Path | None = None

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the volume is, for the record (a path on agentrt's or the engine's host)."""

    @property
    def host_db_dir(self) -> Path | None:
        """The database directory on agentrt's host, or None when it is on the engine's."""
        return None

    @abstractmethod
    def checkout(self, repo: MainRepo, branch: str, commit: str, scratch: Path) -> None:
        """Make the working tree a repository on ``branch`` at ``commit``, owned by the agent.

        ``scratch`` is a directory of agentrt's own for a temporary file (the base bundle)."""

    @abstractmethod
    def agent_mounts(self) -> list[Mount]:
        """The session container's mounts: workspace, database directory, object store."""

    @abstractmethod
    def harvest_mounts(self) -> list[Mount]:
        """The harvest container's mounts: the workspace (and object store), read-only."""

    @abstractmethod
    def secrets_mount(self, values: Mapping[str, str]) -> Mount:
        """The mount at which the entry point finds the secrets file (written now, or by
        :meth:`deliver_secrets` once the container exists)."""

    @abstractmethod
    def deliver_secrets(self, client: docker.DockerClient, container_id: str) -> None:
        """Put the secrets file into the created (not started) container, where needed."""

    @abstractmethod
    def discard_secrets(self) -> None:
        """Delete a secrets file no entry point consumed (a container that never started)."""

    @abstractmethod
    def used_bytes(self) -> int:
        """Bytes in use on the volume."""

    @abstractmethod
    def free_bytes(self) -> int:
        """Bytes still free for the agent."""

    @property
    def usage_walker(self) -> Callable[[], int] | None:
        """A cheap host-side reading of usage for the supervisor's soft limit, if any."""
        return None

    def harvest(self, client: docker.DockerClient, plan: HarvestPlan, dest: Path,
                max_bytes: int) -> Harvest:
        """Run the harvest where the tree is (a container on ``client``'s engine)."""
        return run_harvest(client, plan, dest, max_bytes)

    @abstractmethod
    def remove(self) -> None:
        """Unmount and delete the volume; idempotent."""
