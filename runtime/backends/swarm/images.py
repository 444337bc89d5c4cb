"""Carrying an image to every Swarm node when no registry is reachable (``images push-nodes``).

A Swarm service names its image; each node must already have it, and without a registry
nothing pulls it there. agentrt talks to the manager only, and the manager cannot hand an image
to its nodes, so this talks to each node's engine directly, at an address the user gives
(``--node tcp://host:2375``, repeatable, or :data:`NODES_ENV`, addresses separated by commas or
spaces; anything ``docker.DockerClient(base_url=...)`` accepts: ``tcp://``, ``ssh://``,
``unix://``): the image is ``docker save``\\ d once from the local engine into a temporary file,
``docker load``\\ ed on each node that does not already hold that exact image id, and then
verified there by id (the id is the digest of the image's configuration, so equal ids are the
same image).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

import docker
import docker.errors

from runtime.engine.discovery import engine_errors
from runtime.errors import ConfigError, EngineError, ImageNotFoundError

#: Environment variable listing the nodes' engine addresses (commas or spaces between them).
NODES_ENV = "AGENTRT_SWARM_NODES"
NODE_TIMEOUT_S = 600
_ADDRESS = re.compile(r"^(tcp|ssh|unix|http|https)://\S+$")


@dataclass(frozen=True)
class NodeImage:
    """What one node holds of an image after :func:`push_image` or :func:`compare_node_images`."""

    address: str
    image_id: str  # "" when the node does not have it (or could not be asked)
    matches: bool
    loaded: bool = False
    seconds: float = 0.0
    error: str = ""


def node_addresses(given: Sequence[str] = (), env: str | None = None) -> list[str]:
    """Pure: the node addresses given (or, when none are, those in ``AGENTRT_SWARM_NODES``),
    in order, without repeats; ConfigError for one that is not a URL."""
    raw = list(given) if given else re.split(r"[\s,]+", env if env is not None
                                             else os.environ.get(NODES_ENV, ""))
    found: list[str] = []
    for address in (a.strip() for a in raw):
        if not address:
            continue
        if not _ADDRESS.match(address):
            raise ConfigError(f"node address {address!r} is not a URL such as "
                              "tcp://10.0.0.2:2375 or ssh://user@host")
        if address not in found:
            found.append(address)
    return found


@contextlib.contextmanager
def node_client(address: str) -> Iterator[docker.DockerClient]:
    """A client of the engine at ``address`` (EngineError if it does not answer)."""
    with engine_errors(f"reach the node engine at {address}"):
        client = docker.DockerClient(base_url=address, timeout=NODE_TIMEOUT_S)
    try:
        yield client
    finally:
        client.close()


def local_image_id(client: docker.DockerClient, ref: str) -> tuple[str, str]:
    """(image id, the tag to name it by in the archive) of ``ref`` (a tag, id or digest)."""
    with engine_errors(f"inspect image {ref}"):
        try:
            image = client.images.get(ref)
        except docker.errors.ImageNotFound as exc:
            raise ImageNotFoundError(f"image {ref!r} is not on the local engine: build or "
                                     "load it first") from exc
    tags = list(image.tags)
    name = ref if ref in tags else (tags[0] if tags else "")
    return str(image.id), name


def _node_image_id(client: docker.DockerClient, ref: str) -> str:
    with engine_errors(f"inspect image {ref}"):
        try:
            return str(client.images.get(ref).id)
        except docker.errors.ImageNotFound:
            return ""


def push_image(client: docker.DockerClient, ref: str, addresses: Sequence[str],
               log: Callable[[str], None] | None = None) -> list[NodeImage]:
    """Make sure every node at ``addresses`` holds the local image ``ref`` (same id, and its
    tag): save it once, load it where it is missing, verify the id everywhere. A node that
    fails is reported (``error``), the others still get the image."""
    emit = log or (lambda _line: None)
    if not addresses:
        raise ConfigError(f"no node addresses: give --node tcp://HOST:PORT or set {NODES_ENV}")
    image_id, name = local_image_id(client, ref)
    results: list[NodeImage] = []
    with contextlib.ExitStack() as stack:
        archive: IO[bytes] | None = None
        for address in addresses:
            started = time.monotonic()
            try:
                with node_client(address) as node:
                    held = _node_image_id(node, image_id)
                    loaded = False
                    if held != image_id:
                        if archive is None:
                            emit(f"saving {name or image_id} ({image_id[:19]})")
                            archive = stack.enter_context(_scratch_file())
                            _save(client, image_id, name, archive)
                        emit(f"loading it on {address}")
                        archive.seek(0)
                        with engine_errors(f"load {name or image_id} on {address}"):
                            node.images.load(archive)
                        loaded = True
                    elif name:
                        with engine_errors(f"tag {name} on {address}"):
                            node.images.get(image_id).tag(name)
                    held = _node_image_id(node, name or image_id)
            except EngineError as exc:
                results.append(NodeImage(address, "", False, error=str(exc),
                                         seconds=time.monotonic() - started))
                continue
            problem = "" if held == image_id else \
                f"the node holds {held or 'nothing'} under {name or image_id} after the load"
            results.append(NodeImage(address, held, held == image_id, loaded,
                                     time.monotonic() - started, problem))
    return results


def _scratch_file() -> IO[bytes]:
    """A temporary file for the archive, deleted when closed (``AGENTRT_BUILD_DIR`` or
    /var/tmp: /tmp is often a small tmpfs)."""
    scratch = os.environ.get("AGENTRT_BUILD_DIR") or "/var/tmp"
    return tempfile.TemporaryFile(prefix="agentrt-image-", suffix=".tar",
                                  dir=scratch if os.path.isdir(scratch) else None)


def _save(client: docker.DockerClient, image_id: str, name: str, archive: IO[bytes]) -> None:
    """``docker save`` of ``image_id`` (tagged ``name`` in the archive) into ``archive``."""
    with engine_errors(f"save image {name or image_id}"):
        for chunk in client.images.get(image_id).save(named=name or None):
            archive.write(chunk)
    archive.flush()


def compare_node_images(ref: str, image_id: str, addresses: Sequence[str]) -> list[NodeImage]:
    """What each node at ``addresses`` holds under ``ref``, compared with ``image_id``."""
    results = []
    for address in addresses:
        try:
            with node_client(address) as node:
                held = _node_image_id(node, ref)
        except EngineError as exc:
            results.append(NodeImage(address, "", False, error=str(exc)))
            continue
        results.append(NodeImage(address, held, bool(held) and held == image_id))
    return results
