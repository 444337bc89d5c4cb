"""What a session on the Docker backend leaves for ``gc``: its volume, found again from its
marker (on this disk, or on the engine's host by label)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import docker

from runtime.backends.base import SessionTree
from runtime.backends.docker.remote_volume import RemoteVolume
from runtime.backends.docker.trees import EngineTree, HostTree
from runtime.engine.engine_volumes import list_engine_volumes
from runtime.engine.volumes import open_volume
from runtime.errors import NotFoundError
from runtime.git.object_store import ensure_store
from runtime.git.safe_git import MainRepo
from runtime.state.session_facts import SessionMarker


def engine_volume(client: docker.DockerClient | None, session_id: str) -> RemoteVolume:
    """The engine-side volume of ``session_id`` (found by label); NotFoundError if gone."""
    if client is None:
        raise NotFoundError("no engine")
    found = list_engine_volumes(client, session_id)
    if not found:
        raise NotFoundError(f"no engine volume for {session_id}")
    return RemoteVolume(client, found[0])


def kept_docker_tree(client: docker.DockerClient | None, repo: MainRepo,
                     marker: SessionMarker, session_dir: Path,
                     session_id: str) -> SessionTree | None:
    """The tree of a dead or kept session (None: its engine-side volume no longer exists)."""
    if marker.engine_volume:
        try:
            remote = engine_volume(client, session_id)
        except NotFoundError:
            return None
        return EngineTree(client, remote.volume, marker.uid, marker.gid)
    return HostTree(open_volume(session_dir), marker.uid, marker.gid,
                    ensure_store(repo, marker.run_id, marker.base_commit))


def remove_engine_volume(client: docker.DockerClient | None, session_id: str) -> None:
    """Remove the session's engine-side volume; quiet when it is gone."""
    with contextlib.suppress(NotFoundError):
        engine_volume(client, session_id).remove()
