"""Finding and identifying agentrt's images on the engine: is one there, its digest, which
ones are agentrt's and current, and exporting one for ``docker load``.

An image is tagged ``agentrt/<name>:latest`` and labelled ``agentrt.image=<name>`` and
``agentrt.recipe=<hash>`` (:mod:`runtime.engine.image_build` builds them from
:mod:`runtime.engine.recipes`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

from runtime.engine.discovery import engine_errors
from runtime.engine.recipes import (
    DEFAULT_MIRROR,
    IMAGE_PARENTS,
    ROOTFS_REPO,
    image_ref,
    recipe_hash,
    rootfs_hash,
)
from runtime.errors import ImageNotFoundError

LABEL_IMAGE = "agentrt.image"
LABEL_RECIPE = "agentrt.recipe"
LABEL_METHOD = "agentrt.build"
LABEL_CLI_VERSION = "agentrt.cli.version"  # set by an agent preset's recipe (its pinned ARG)
MAX_VERSION_LEN = 64


@dataclass(frozen=True)
class ImageInfo:
    """One agentrt image on the engine, as :func:`list_images` reports it."""

    name: str
    ref: str  # its first agentrt/<name> tag, "" for an image a rebuild superseded
    tags: tuple[str, ...]
    id: str
    digest: str
    recipe_hash: str
    current: bool  # tagged as agentrt's image, and its recipe label matches the recipe on disk
    created: str
    size_bytes: int


def get_image(client: docker.DockerClient, ref: str) -> Any | None:
    """The engine's image ``ref`` (a tag, an id or a digest), or None if it has none."""
    with engine_errors(f"inspect image {ref}"):
        try:
            return client.images.get(ref)
        except docker.errors.ImageNotFound:
            return None


def image_digest(client: docker.DockerClient, ref: str) -> str:
    """The image's first repo digest if it has one, else its id (``sha256:...``)."""
    return image_facts(client, ref)[0]


def cli_version(client: docker.DockerClient, ref: str) -> str | None:
    """The agent CLI version the image's recipe pinned (its ``agentrt.cli.version`` label), or
    None: no such label, or one that is not a short printable version string."""
    image = get_image(client, ref)
    return _cli_version(image.labels if image is not None else None)


def image_facts(client: docker.DockerClient, ref: str) -> tuple[str, str | None]:
    """:func:`image_digest` and :func:`cli_version` of ``ref`` from one look at the image."""
    image = get_image(client, ref)
    if image is None:
        raise _not_found(ref)
    repo_digests = image.attrs.get("RepoDigests") or []
    digest = str(repo_digests[0]) if repo_digests else str(image.id)
    return digest, _cli_version(image.labels)


def _cli_version(labels: dict[str, str] | None) -> str | None:
    value = str((labels or {}).get(LABEL_CLI_VERSION, "")).strip()
    if not value or len(value) > MAX_VERSION_LEN or not value.isprintable():
        return None
    return value


def build_command(ref: str) -> str | None:
    """``agentrt images build <name>`` when ``ref`` is one of agentrt's images, else None."""
    for name in IMAGE_PARENTS:
        if ref in (image_ref(name), image_ref(name).removesuffix(":latest")):
            return f"agentrt images build {name}"
    return None


def build_hint(ref: str) -> str:
    """What makes image ``ref`` appear, naming the exact command. Pure."""
    command = build_command(ref)
    if command is not None:
        return f"run `{command}` (or `docker load` an exported image)"
    if ref.startswith("sha256:"):
        return "`docker load` the image exported with `agentrt images export`"
    return f"run `docker pull {ref}` or build it (or `docker load` an exported image)"


def _not_found(ref: str) -> ImageNotFoundError:
    return ImageNotFoundError(f"image {ref!r} not found locally: {build_hint(ref)}")


def require_image(client: docker.DockerClient, ref: str) -> None:
    """Raise ImageNotFoundError, saying how to get it, unless ``ref`` exists on the engine."""
    if get_image(client, ref) is None:
        raise _not_found(ref)


def list_images(client: docker.DockerClient) -> list[ImageInfo]:
    """agentrt's images (rootfs images included), by name.

    An image is agentrt's when it carries an ``agentrt.image`` label and a tag of that image's
    repository (``agentrt/<name>``). An image built ``FROM`` one of agentrt's elsewhere inherits
    the labels but not the tag, and is left out. Images a rebuild superseded keep their labels
    and have no tags; they stay (never current) because a session's record (and
    ``agentrt replay``) refers to the image id it ran.
    """
    with engine_errors("list images"):
        images = client.images.list(filters={"label": LABEL_IMAGE})
    found: list[ImageInfo] = []
    for image in images:
        labels = image.labels or {}
        name = str(labels.get(LABEL_IMAGE, ""))
        recipe = str(labels.get(LABEL_RECIPE, ""))
        own = own_tags(name, image.tags)
        if name == "env" or (image.tags and not own):  # environments: list_env_images
            continue
        current = bool(own) and recipe == _current_recipe(name)
        repo_digests = image.attrs.get("RepoDigests") or []
        found.append(
            ImageInfo(
                name=name,
                ref=own[0] if own else "",
                tags=tuple(image.tags),
                id=str(image.id),
                digest=str(repo_digests[0]) if repo_digests else str(image.id),
                recipe_hash=recipe,
                current=current,
                created=str(image.attrs.get("Created", "")),
                size_bytes=int(image.attrs.get("Size", 0)),
            )
        )
    return sorted(found, key=lambda i: (i.name, i.tags))


def own_tags(name: str, tags: Sequence[str]) -> list[str]:
    """The tags among ``tags`` in the repository agentrt builds image ``name`` under."""
    repo = ROOTFS_REPO if name == "rootfs" else image_ref(name).rsplit(":", 1)[0]
    return [tag for tag in tags if tag.rsplit(":", 1)[0] == repo]


def _current_recipe(name: str) -> str | None:
    try:
        if name == "rootfs":
            return rootfs_hash(os.environ.get("AGENTRT_DEBIAN_MIRROR", DEFAULT_MIRROR))
        return recipe_hash(name) if name in IMAGE_PARENTS else None
    except (ImageNotFoundError, OSError):
        return None


def export_image(client: docker.DockerClient, digest: str, ref: str, file: Path) -> None:
    """Save image ``digest`` (tagged ``ref`` in the archive) to ``file`` for `docker load`."""
    image = get_image(client, digest)
    if image is None:
        raise _not_found(digest)
    with engine_errors(f"export image {digest}"):
        if ref not in image.tags:
            image.tag(ref)
        with open(file, "wb") as out:
            for chunk in image.save(named=ref):
                out.write(chunk)
