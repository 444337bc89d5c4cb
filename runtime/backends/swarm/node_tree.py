"""A Swarm session's tree: its volume on a node, the base in and the work out through the run's
exchange (a :class:`~runtime.backends.base.SessionTree`; the helpers' work is in
:mod:`runtime.backends.swarm.node_jobs`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import docker
from docker.types import Mount

from runtime.backends.base import SessionTree
from runtime.backends.swarm.exchange import Exchange
from runtime.backends.swarm.node_jobs import NodeFinish, create_checked_out, harvest_on_node
from runtime.backends.swarm.volumes import remove_node_volume
from runtime.engine.engine_volumes import EngineVolume
from runtime.errors import ConfigError, EngineError, VolumeError, WorkspaceError
from runtime.git.harvest import Harvest, HarvestPlan
from runtime.git.safe_git import MainRepo


class NodeTree(SessionTree):
    """The volume on a Swarm node; the base in and the work out through the run's exchange.

    Usage is not read while the session runs (a reading is a helper task on the node): the
    session's entry point reports it when the agent ends (:meth:`record_usage`).
    """

    on_engine = True
    carries_state = False

    def __init__(self, client: docker.DockerClient, volume: EngineVolume, node_id: str,
                 exchange: Exchange, uid: int, gid: int) -> None:
        self.client = client
        self.volume = volume
        self.node_id = node_id
        self.exchange = exchange
        self.mode = volume.mode
        self.limit_bytes = volume.limit_bytes
        self._uid, self._gid = uid, gid
        self._usage: tuple[int, int] = (0, volume.limit_bytes)
        self._checked_out = ""
        self._finish: NodeFinish | None = None

    @classmethod
    def create_checked_out(cls, client: docker.DockerClient, exchange: Exchange, node_id: str,
                           session_id: str, disk_mb: int, uid: int, gid: int,
                           labels: Mapping[str, str], repo: MainRepo, branch: str,
                           commit: str, scratch: Path) -> NodeTree:
        """:meth:`create` and :meth:`checkout` by one helper service on the node (see
        :func:`runtime.backends.swarm.node_jobs.create_checked_out`)."""
        volume = create_checked_out(client, exchange, node_id, session_id, disk_mb, uid, gid,
                                    labels, repo, branch, commit, scratch)
        tree = cls(client, volume, node_id, exchange, uid, gid)
        tree._checked_out = commit
        return tree

    @property
    def location(self) -> str:
        return f"node {self.node_id}: {self.volume.root}"

    def checkout(self, repo: MainRepo, branch: str, commit: str, scratch: Path) -> None:
        if self._checked_out != commit:  # checked out when made (create_checked_out)
            raise WorkspaceError(f"the volume on node {self.node_id} holds "
                                 f"{self._checked_out or 'nothing'}, not {commit}")

    def agent_mounts(self) -> list[Mount]:
        return self.volume.mounts()

    def harvest_mounts(self) -> list[Mount]:
        return self.volume.mounts(db_target=None, read_only=True)

    def secrets_mount(self, values: Mapping[str, str]) -> Mount:
        raise ConfigError("field secrets: sessions on Docker Swarm cannot receive secrets yet")

    def deliver_secrets(self, client: docker.DockerClient, container_id: str) -> None:
        """Nothing to deliver (secrets are refused on Swarm)."""

    def discard_secrets(self) -> None:
        """Nothing to discard (secrets are refused on Swarm)."""

    def record_usage(self, used: int | None, free: int | None) -> None:
        """What the entry point measured on the volume when the agent ended."""
        if used is not None and free is not None:
            self._usage = (used, free)

    def used_bytes(self) -> int:
        return self._usage[0]

    def free_bytes(self) -> int:
        return self._usage[1]

    def harvest(self, client: docker.DockerClient, plan: HarvestPlan, dest: Path,
                max_bytes: int) -> Harvest:
        """On the node, through the exchange; a tree made by :meth:`create_checked_out` has
        the helper that harvested hold the volume until :meth:`remove` or :meth:`keep`."""
        if not self._checked_out:  # gc's tree of a dead run: the harvest alone
            return harvest_on_node(self.exchange, self.node_id, plan, dest, max_bytes)
        harvest, self._finish = NodeFinish.harvest(self.exchange, self.node_id, self.volume,
                                                   plan, dest, max_bytes)
        return harvest

    def keep(self) -> None:
        """The work is not home: a helper holding the volume lets it go, kept."""
        finish, self._finish = self._finish, None
        if finish is not None:
            finish.release(home=False)

    def let_go(self) -> None:
        """No node helper is left holding the volume (it is kept)."""
        self.keep()

    def remove(self) -> None:
        finish, self._finish = self._finish, None
        if finish is None or not finish.release(home=True):
            try:
                remove_node_volume(self.client, self.node_id, self.volume)
            except EngineError as exc:
                raise VolumeError(str(exc)) from exc
        self.exchange.forget(self.volume.session_id)
