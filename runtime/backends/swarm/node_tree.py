"""A Swarm session's tree: its volume on a node, the base in and the work out through the run's
exchange (a :class:`~runtime.backends.base.SessionTree`; the helpers' work is in
:mod:`runtime.backends.swarm.node_jobs`)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

import docker
from docker.types import Mount

from runtime.backends.base import SessionTree, secrets_text
from runtime.backends.swarm.exchange import Exchange
from runtime.backends.swarm.node_jobs import NodeFinish, create_checked_out, harvest_on_node
from runtime.backends.swarm.secrets import (
    SECRET_PATH,
    SessionSecret,
    create_session_secret,
    remove_session_secret,
)
from runtime.backends.swarm.volumes import remove_node_volume
from runtime.engine.engine_volumes import EngineVolume
from runtime.errors import EngineError, VolumeError, WorkspaceError
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
        #: The session's Docker secret (:meth:`secrets_mount`) until :meth:`take_secret`.
        self._secret: SessionSecret | None = None
        self.run_id = ""
        self.secret_labels: dict[str, str] = {}

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
        """Make the session's Docker secret on the manager (the file the entry point sources,
        :mod:`runtime.backends.swarm.secrets`). The mount returned only says where the task
        finds it: the service gets a reference to the secret, never a bind of this path
        (:meth:`runtime.backends.swarm.backend.SwarmBackend.create_runner`)."""
        self._secret = create_session_secret(self.client, self.volume.session_id, self.run_id,
                                             secrets_text(values), self.secret_labels)
        return Mount(SECRET_PATH, self._secret.name, type="bind", read_only=True)

    def take_secret(self) -> SessionSecret | None:
        """The session's secret, handed to the service that refers to it (which removes it
        after itself); None when the session has none."""
        secret, self._secret = self._secret, None
        return secret

    def deliver_secrets(self, client: docker.DockerClient, container_id: str) -> None:
        """Nothing to deliver: Swarm gives the secret to the task on its node."""

    def discard_secrets(self) -> None:
        """Remove a secret no service was given (the session failed before its runner)."""
        secret = self.take_secret()
        if secret is not None:
            with contextlib.suppress(EngineError):  # `agentrt gc` removes it later
                remove_session_secret(self.client, secret.id)

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
