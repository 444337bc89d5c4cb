"""agentrt's image recipes on disk, and the hashes that say when an image is out of date.

Recipes live in ``images/<name>/`` at the top of the repository; the wheel carries them as
``runtime/images`` (mapped by the build backend), found through ``importlib.resources``, so an
installed wheel builds as a checkout does (``AGENTRT_IMAGES_DIR`` overrides). An image's
recipe hash covers its recipe's files and its parent's hash; a debootstrap rootfs's covers the
suite, the mirror, the package list and the script.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
from pathlib import Path

from runtime.errors import ImageNotFoundError

IMAGE_PARENTS: dict[str, str | None] = {
    "base": None,
    "claude-code": "base",
    "codex": "base",
    "aider": "base",
    "postgres": "base",
    "egress": "base",  # the egress proxy of network = "allowlist"
    "dind": "base",  # a second engine for the tests of runtime/engine/engine_volumes.py
}
DEBIAN_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
ROOTFS_REPO = "agentrt/rootfs"


def shipped_dir(name: str, override_var: str) -> Path:
    """The data folder ``name`` (``images`` or ``colima``) of agentrt: the directory the
    environment variable ``override_var`` names if set; else the copy an installed wheel carries
    inside the ``runtime`` package (``runtime/images``, mapped there at build time); else the
    folder at the top of the checkout ``runtime`` was imported from (a checkout or an editable
    install). ImageNotFoundError when none exists."""
    override = os.environ.get(override_var)
    if override:
        return Path(override)
    installed = importlib.resources.files("runtime").joinpath(name)
    if isinstance(installed, Path) and installed.is_dir():
        return installed
    checkout = Path(__file__).resolve().parents[2] / name
    if checkout.is_dir():
        return checkout
    # A zip import yields no directory to hand to `docker build` as its context.
    raise ImageNotFoundError(
        f"agentrt's {name!r} folder is neither installed with the package ({installed}) nor in "
        f"a checkout ({checkout}): reinstall agentrt unzipped, or set {override_var} to a copy "
        "of it"
    )


def images_dir() -> Path:
    """The directory holding one recipe directory per image: ``AGENTRT_IMAGES_DIR`` if set,
    else ``images/`` as installed with the package or at the top of the checkout."""
    return shipped_dir("images", "AGENTRT_IMAGES_DIR")


def image_ref(name: str) -> str:
    """The tag an image is built under, e.g. ``agentrt/base:latest``."""
    return f"agentrt/{name}:latest"


def recipe_dir(name: str) -> Path:
    """The recipe directory of image ``name``; ImageNotFoundError for an unknown name."""
    if name not in IMAGE_PARENTS:
        choices = ", ".join(IMAGE_PARENTS)
        raise ImageNotFoundError(f"unknown image {name!r}: agentrt builds {choices}")
    path = images_dir() / name
    if not (path / "Dockerfile").is_file():
        raise ImageNotFoundError(f"recipe of image {name!r} is missing: no {path}/Dockerfile")
    return path


def recipe_hash(name: str) -> str:
    """sha256 of the recipe's files (paths and contents) and of its parent's recipe hash."""
    digest = hashlib.sha256(f"agentrt-image\0{name}\0".encode())
    root = recipe_dir(name)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    parent = IMAGE_PARENTS[name]
    if parent is not None:
        digest.update(recipe_hash(parent).encode())
    return digest.hexdigest()


def base_packages() -> list[str]:
    """The Debian packages of ``agentrt/base`` (``images/base/packages``)."""
    lines = (recipe_dir("base") / "packages").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def rootfs_hash(mirror: str) -> str:
    """Identity of a debootstrap rootfs: suite, mirror, package list and the script."""
    digest = hashlib.sha256(f"{DEBIAN_SUITE}\0{mirror}\0".encode())
    for part in ("packages", "rootfs.sh"):
        digest.update((recipe_dir("base") / part).read_bytes() + b"\0")
    return digest.hexdigest()
