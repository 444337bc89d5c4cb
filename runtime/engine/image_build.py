"""Building agentrt's images from their recipes, each only when its recipe changed.

:func:`build_image` does nothing when the tagged image already carries the current recipe's
hash (:mod:`runtime.engine.recipes`), so calling it before every run is cheap. One build runs
at a time on a host.

``agentrt/base`` is built one of two ways, from the same Dockerfile (its ``BASE`` build argument):

* **registry**: ``FROM debian:bookworm-slim`` when that image is local or pulls quickly;
* **debootstrap** (air-gapped): ``debootstrap --variant=minbase`` of bookworm from a Debian
  mirror, imported with ``docker import`` as ``agentrt/rootfs:<hash>``; needs root on Linux.

The agent images (``claude-code``, ``codex``, ``aider``) build ``FROM agentrt/base:latest`` and
are only built when asked for by name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import docker
import requests.exceptions

from runtime.engine.build_context import build_ca_bundle, build_context
from runtime.engine.discovery import engine_errors
from runtime.engine.images import LABEL_IMAGE, LABEL_METHOD, LABEL_RECIPE, get_image, image_digest
from runtime.engine.recipes import (
    DEBIAN_SUITE,
    DEFAULT_MIRROR,
    IMAGE_PARENTS,
    ROOTFS_REPO,
    image_ref,
    recipe_dir,
    recipe_hash,
    rootfs_hash,
)
from runtime.errors import EngineError
from runtime.text import strip_ansi

LogFn = Callable[[str], None]
BuildMethod = Literal["cached", "registry", "debootstrap", "dockerfile"]

REGISTRY_BASE = "debian:bookworm-slim"
PULL_STALL_S = 20  # no progress for this long: the registry is not usable
PULL_DEADLINE_S = 90  # a pull still running after this is slower than debootstrap

_build_lock = threading.Lock()


@dataclass(frozen=True)
class BuiltImage:
    """The outcome of :func:`build_image`."""

    name: str
    ref: str
    id: str
    digest: str
    recipe_hash: str
    rebuilt: bool
    method: BuildMethod
    seconds: float


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    """One build at a time, across threads and processes on this host."""
    lock_path = Path(tempfile.gettempdir()) / f"agentrt-image-build-{os.getuid()}.lock"
    with _build_lock, open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build_image(
    client: docker.DockerClient,
    name: str = "base",
    force: bool = False,
    log: LogFn | None = None,
) -> BuiltImage:
    """Build ``agentrt/<name>:latest`` unless it already carries the current recipe's hash.

    A parent image (``base`` for the agent images) is built first if it is missing or stale.
    ``force`` rebuilds without the layer cache (and redoes debootstrap). ``log`` receives
    progress lines. Raises EngineError if the build fails, with its last lines.
    """
    emit: LogFn = log or (lambda _line: None)
    started = time.monotonic()
    recipe = recipe_hash(name)
    ref = image_ref(name)
    if not force and _is_current(client, ref, recipe):
        emit(f"{ref} is up to date (recipe {recipe[:12]})")
        return _built(client, name, recipe, False, "cached", started)
    parent = IMAGE_PARENTS[name]
    if parent is not None:
        build_image(client, parent, force=False, log=log)
    with _exclusive():
        # Another process may have built it while this one waited for the lock.
        if not force and _is_current(client, ref, recipe):
            return _built(client, name, recipe, False, "cached", started)
        buildargs: dict[str, str] = {}
        method: BuildMethod = "dockerfile"
        if parent is None and registry_base_available(client, emit):
            method, buildargs = "registry", {"BASE": REGISTRY_BASE}
        elif parent is None:
            method, buildargs = "debootstrap", {"BASE": build_rootfs(client, force, emit)}
        emit(f"building {ref} ({method})")
        labels = {LABEL_IMAGE: name, LABEL_RECIPE: recipe, LABEL_METHOD: method}
        with build_context(recipe_dir(name), build_ca_bundle()) as context:
            _docker_build(client, context, ref, buildargs, labels, force, emit)
    built = _built(client, name, recipe, True, method, started)
    emit(f"built {ref} {built.id[:19]} in {built.seconds:.0f}s")
    return built


def _is_current(client: docker.DockerClient, ref: str, recipe: str) -> bool:
    image = get_image(client, ref)
    return image is not None and (image.labels or {}).get(LABEL_RECIPE) == recipe


def _built(
    client: docker.DockerClient,
    name: str,
    recipe: str,
    rebuilt: bool,
    method: BuildMethod,
    started: float,
) -> BuiltImage:
    ref = image_ref(name)
    image = get_image(client, ref)
    if image is None:
        raise EngineError(f"image {ref} vanished right after its build")
    return BuiltImage(
        name=name,
        ref=ref,
        id=str(image.id),
        digest=image_digest(client, ref),
        recipe_hash=recipe,
        rebuilt=rebuilt,
        method=method,
        seconds=time.monotonic() - started,
    )


def _docker_build(
    client: docker.DockerClient,
    context: Path,
    ref: str,
    buildargs: dict[str, str],
    labels: dict[str, str],
    nocache: bool,
    emit: LogFn,
) -> None:
    tail: list[str] = []
    with engine_errors(f"build {ref}"):
        stream = client.api.build(
            path=str(context),
            tag=ref,
            buildargs=buildargs,
            labels=labels,
            nocache=nocache,
            pull=False,
            rm=True,
            forcerm=True,
            decode=True,
        )
        for chunk in stream:
            # The classic builder colours a step's stderr (ESC [91m): dropped, not shown.
            text = strip_ansi(chunk.get("stream") or chunk.get("status") or "").rstrip()
            if text:
                emit(text)
                tail = (tail + text.splitlines())[-15:]
            if "error" in chunk:
                last = "\n".join(tail)
                error = strip_ansi(chunk["error"]).strip()
                raise EngineError(f"building {ref} failed: {error}\n{last}".rstrip())


def registry_base_available(client: docker.DockerClient, log: LogFn | None = None) -> bool:
    """Whether ``debian:bookworm-slim`` is local, or pulls without stalling for 20 s."""
    emit: LogFn = log or (lambda _line: None)
    if get_image(client, REGISTRY_BASE) is not None:
        return True
    emit(f"pulling {REGISTRY_BASE}")
    repo, tag = REGISTRY_BASE.split(":")
    url = f"{client.api.base_url}/v{client.api.api_version}/images/create"
    deadline = time.monotonic() + PULL_DEADLINE_S
    # The SDK's pull has no timeout at all; a raw streamed request bounds both the wait for
    # each progress line and the whole pull, so a black-holed registry cannot hang the build.
    try:
        with client.api.post(
            url, params={"fromImage": repo, "tag": tag}, stream=True, timeout=(5, PULL_STALL_S)
        ) as response:
            if response.status_code != 200:
                emit(f"registry unavailable: {_api_message(response)}")
                return False
            for line in response.iter_lines():
                message = json.loads(line) if line else {}
                if "error" in message:
                    emit(f"registry unavailable: {message['error']}")
                    return False
                if time.monotonic() > deadline:
                    emit(f"pull slower than {PULL_DEADLINE_S}s; using debootstrap instead")
                    return False
    except (requests.exceptions.RequestException, ValueError) as exc:
        emit(f"registry unavailable: {exc}")
        return False
    return get_image(client, REGISTRY_BASE) is not None


def _api_message(response: requests.Response) -> str:
    try:
        return str(response.json().get("message", ""))[:300]
    except ValueError:
        return response.text.strip()[:300]


def build_rootfs(client: docker.DockerClient, force: bool = False, log: LogFn | None = None) -> str:
    """Debootstrap Debian (``images/base/rootfs.sh``) and ``docker import`` it; return its tag.

    Reuses ``agentrt/rootfs:<hash>`` if it exists (unless ``force``). Needs root on Linux,
    ``debootstrap`` and ``tar``; the mirror is ``AGENTRT_DEBIAN_MIRROR`` or deb.debian.org.
    """
    emit: LogFn = log or (lambda _line: None)
    mirror = os.environ.get("AGENTRT_DEBIAN_MIRROR", DEFAULT_MIRROR)
    digest = rootfs_hash(mirror)
    ref = f"{ROOTFS_REPO}:{digest[:16]}"
    if not force and get_image(client, ref) is not None:
        emit(f"reusing {ref}")
        return ref
    missing = [tool for tool in ("debootstrap", "tar") if shutil.which(tool) is None]
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or missing:
        raise EngineError(
            f"cannot build the base image: {REGISTRY_BASE} cannot be pulled, and the "
            "air-gapped build (debootstrap) needs root on Linux with debootstrap and tar"
            f"{' (missing: ' + ', '.join(missing) + ')' if missing else ''}: run "
            "`sudo agentrt images build`, or `docker load` an exported agentrt/base image"
        )
    # /tmp is often a small tmpfs; the rootfs and its tarball need a few hundred MiB.
    scratch = os.environ.get("AGENTRT_BUILD_DIR") or "/var/tmp"
    work = Path(tempfile.mkdtemp(prefix="agentrt-build-", dir=scratch))
    tarball = work / "rootfs.tar"
    try:
        emit(f"debootstrap {DEBIAN_SUITE} from {mirror} (a minute or two)")
        script = recipe_dir("base") / "rootfs.sh"
        _run_logged(["sh", str(script), str(tarball), mirror, DEBIAN_SUITE], emit)
        emit(f"importing {ref} ({tarball.stat().st_size // 2**20} MiB)")
        with engine_errors(f"import {ref}"), open(tarball, "rb") as data:
            client.api.import_image_from_data(
                data,
                repository=ROOTFS_REPO,
                tag=digest[:16],
                changes=[f"LABEL {LABEL_IMAGE}=rootfs", f"LABEL {LABEL_RECIPE}={digest}"],
            )
    finally:
        # Not rmtree: rootfs.sh keeps its directory in here if a mount inside it survived.
        tarball.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            work.rmdir()
    if get_image(client, ref) is None:
        raise EngineError(f"docker import of {ref} reported success but the image is missing")
    return ref


def _run_logged(argv: list[str], emit: LogFn) -> None:
    tail: list[str] = []
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as proc:
        if proc.stdout is None:
            raise EngineError(f"{argv[0]}: no output pipe")
        for line in proc.stdout:
            emit(line.rstrip())
            tail = (tail + [line.rstrip()])[-15:]
    if proc.returncode != 0:
        detail = "\n".join(tail)
        raise EngineError(f"{argv[0]} failed with exit code {proc.returncode}:\n{detail}")
