"""The harvest: a session's work is read inside a container and leaves it as one git bundle.

The host never opens a path an agent could write. When a session's container has stopped,
agentrt starts a short-lived *harvest container* (agentrt's base image, the same hardening as a
session: every capability dropped, no new privileges, no network, the agent's uid) with only the
session's working tree and the run's read-only object store mounted. Inside it, the script
below (the image's own git, agentrt's safe settings, a private git dir and index outside the
agent's tree):

1. reads the agent's ``HEAD`` (its own commits) and checks that every object it reaches exists;
2. snapshots whatever the agent left uncommitted on top of it (``read-tree`` + ``add -A`` +
   ``write-tree`` + ``commit-tree``), leaving out the state agent CLIs keep in the repository
   (:data:`runtime.presets.STATE_EXCLUDES`, the private git dir's ``info/exclude``);
3. writes ``work.bundle`` (the snapshot and the agent's commits, thin against the base) and,
   when the agent made commits, ``files.bundle`` (the same files as one commit on the base:
   used only if the host refuses the agent's commits).

Symlinks, ``gitdir:`` pointers and ``.git`` tricks resolve inside the sandbox, where the host's
files do not exist: the worst an agent can do is spoil its own branch. The bundles come back
through the Docker API (``get_archive`` of a named regular file from the stopped container);
:mod:`runtime.git.bundle` verifies and imports them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.types import Mount

from runtime.engine.container import HARDENING, STORE_MOUNT, create_container
from runtime.engine.discovery import engine_errors
from runtime.engine.labels import LABEL_HARVEST
from runtime.errors import EngineError, HarvestError
from runtime.presets import STATE_EXCLUDES

log = logging.getLogger(__name__)

HARVEST_IMAGE = "agentrt/base:latest"
OUT_DIR = "/var/tmp/agentrt-harvest"
BUNDLES_MOUNT = "/agentrt-bundles"
BUNDLES = ("work.bundle", "files.bundle")
EXIT_UNCHANGED = 3
HEAD_UNREADABLE = "agentrt-harvest: agent-head-unreadable"
ADD_ERRORS = "agentrt-harvest: some files could not be read"
HARVEST_MIN_MEMORY_MB = 256
HARVEST_TIMEOUT_SECONDS = 600

# POSIX sh. Arguments: base commit, object store path, session id. The bundles go to
# $HARVEST_BUNDLES when agentrt binds a directory of its own there (else into the container).
SCRIPT = r"""
set -eu
base=$1; store=$2; sid=$3
out=/var/tmp/agentrt-harvest; h=$out/h.git; bundles=${HARVEST_BUNDLES:-$out}
mkdir -p "$out"
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null HOME=/var/tmp GIT_TERMINAL_PROMPT=0
export LC_ALL=C GIT_AUTHOR_NAME=agentrt GIT_AUTHOR_EMAIL=agentrt@localhost
export GIT_COMMITTER_NAME=agentrt GIT_COMMITTER_EMAIL=agentrt@localhost
g() {
  git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c core.untrackedCache=false \
      -c gc.auto=0 -c maintenance.auto=false -c core.autocrlf=false -c core.safecrlf=false \
      -c protocol.file.allow=never -c submodule.recurse=false -c core.pager=cat \
      -c advice.addEmbeddedRepo=false -c pack.threads=1 "$@"
}
g init -q --bare "$h"
mkdir -p "$h/info" && printf '%s\n' @STATE_EXCLUDES@ > "$h/info/exclude"
printf '%s\n' /workspace/.git/objects > "$h/objects/info/alternates"
if [ -n "$store" ]; then printf '%s\n' "$store" >> "$h/objects/info/alternates"; fi
export GIT_INDEX_FILE=$out/index
head=
if a=$(g --git-dir=/workspace/.git rev-parse --verify -q 'HEAD^{commit}' 2>/dev/null) \
   && g --git-dir="$h" rev-list --objects "$a" --not "$base" >/dev/null 2>&1 \
   && g --git-dir="$h" read-tree "$a" 2>/dev/null; then
  head=$a
else
  echo "agentrt-harvest: agent-head-unreadable"
  g --git-dir="$h" read-tree "$base"
fi
parent=${head:-$base}
add() {
  g -c core.trustctime=false -c core.checkStat=minimal --git-dir="$h" --work-tree=/workspace \
    add -A --ignore-errors -- . >/dev/null 2>"$out/add.err"
}
# The agent's own index is only a stat cache (files whose size and mtime did not change are not
# re-read): a copy of a plain file of sane size, in an index of our own; any doubt, or any
# error, and the snapshot starts again from the commit's tree, reading every file.
stat_cache=
if [ -n "$head" ] && [ -f /workspace/.git/index ] && [ ! -L /workspace/.git/index ] \
   && [ -n "$(find /workspace/.git/index -maxdepth 0 -type f -size -256M 2>/dev/null)" ] \
   && cp /workspace/.git/index "$out/agent.index" 2>/dev/null; then
  stat_cache=$out/agent.index
fi
if [ -n "$stat_cache" ] && GIT_INDEX_FILE=$stat_cache add; then
  mv "$stat_cache" "$GIT_INDEX_FILE"
elif ! add; then
  echo "agentrt-harvest: some files could not be read"
  head -c 2000 "$out/add.err" >&2 || true
fi
tree=$(g --git-dir="$h" write-tree)
snap=$parent
if [ "$tree" != "$(g --git-dir="$h" rev-parse "$parent^{tree}")" ]; then
  snap=$(g --git-dir="$h" commit-tree "$tree" -p "$parent" \
         -m "agentrt: snapshot of uncommitted work in session $sid")
fi
if [ "$snap" = "$base" ]; then
  echo "agentrt-harvest: unchanged"
  exit 3
fi
g --git-dir="$h" update-ref refs/heads/work "$snap"
g --git-dir="$h" bundle create -q "$bundles/work.bundle" refs/heads/work --not "$base"
base_tree=$(g --git-dir="$h" rev-parse "$base^{tree}")
if [ -n "$head" ] && [ "$head" != "$base" ] && [ "$tree" != "$base_tree" ]; then
  files=$(g --git-dir="$h" commit-tree "$tree" -p "$base" \
          -m "agentrt: snapshot of the files of session $sid (its own commits were refused)")
  g --git-dir="$h" update-ref refs/heads/files "$files"
  g --git-dir="$h" bundle create -q "$bundles/files.bundle" refs/heads/files --not "$base"
fi
echo "agentrt-harvest: done"
""".replace("@STATE_EXCLUDES@", " ".join(shlex.quote(p) for p in STATE_EXCLUDES))


@dataclass(frozen=True)
class HarvestPlan:
    """What a harvest container needs: the session's tree, its base and the run's store."""

    session_id: str
    base_commit: str
    # The tree's mounts, read-only (runtime.git.session_tree: the workspace, and the store).
    mounts: tuple[Mount, ...]
    store: Path | None  # the run's object store; None when the volume holds the objects
    uid: int
    gid: int
    memory_mb: int
    runtime: str = "runc"
    image: str = HARVEST_IMAGE
    labels: Mapping[str, str] = field(default_factory=dict)
    #: A directory of this host the bundles are written into (bound in), or None: they are
    #: copied out of the stopped container through the API (an engine on another host).
    bundles_dir: Path | None = None


@dataclass
class Harvest:
    """What came out: bundle files on the host (in a directory agentrt owns) and notes."""

    bundles: dict[str, Path]
    unchanged: bool
    head_unreadable: bool
    unreadable_files: bool
    log: str


def harvest_spec(plan: HarvestPlan) -> dict[str, Any]:
    """``client.containers.create`` arguments of the harvest container. Pure.

    The same hardening as a session (see :data:`runtime.engine.container.HARDENING`) with no network
    and nothing of the host but the working tree and the read-only object store. The root
    filesystem stays writable so the bundles can be taken out of the stopped container through
    the API (a tmpfs is gone once it stops); only agentrt's script runs there.
    """
    if plan.uid == 0:
        raise HarvestError("refusing to harvest as root (uid 0)")
    memory = max(plan.memory_mb, HARVEST_MIN_MEMORY_MB) * 1024 * 1024
    mounts = list(plan.mounts)
    if any(not m["ReadOnly"] for m in mounts):
        raise HarvestError("a harvest mounts the session's tree read-only")
    bundles = OUT_DIR
    if plan.bundles_dir is not None:
        # agentrt's own directory, for the script's bundles only (the agent never had it).
        bundles = BUNDLES_MOUNT
        mounts.append(Mount(BUNDLES_MOUNT, str(plan.bundles_dir), type="bind", read_only=False))
    spec: dict[str, Any] = {
        **HARDENING,
        "image": plan.image,
        "command": ["sh", "-c", SCRIPT, "agentrt-harvest", plan.base_commit,
                    STORE_MOUNT if plan.store is not None else "", plan.session_id],
        "name": f"agentrt-harvest-{plan.session_id}",
        "user": f"{plan.uid}:{plan.gid}",
        "working_dir": "/",
        "environment": {"HOME": "/var/tmp", "HARVEST_BUNDLES": bundles},
        "labels": {**plan.labels, LABEL_HARVEST: plan.session_id},
        "mounts": mounts,
        "mem_limit": memory,
        "memswap_limit": memory,
        "pids_limit": 256,
        "read_only": False,
        "network_mode": "none",
        "detach": True,
    }
    if plan.runtime != "runc":
        spec["runtime"] = plan.runtime
    return spec


def run_harvest(client: docker.DockerClient, plan: HarvestPlan, dest: Path,
                max_bytes: int, timeout: float = HARVEST_TIMEOUT_SECONDS) -> Harvest:
    """Run the harvest container for ``plan`` and copy its bundles into ``dest``.

    Raises :class:`HarvestError` when it cannot finish (the caller keeps the volume).
    """
    container = None
    if plan.bundles_dir is not None:
        _bundles_dir(plan.bundles_dir, plan.uid, plan.gid)
    try:
        with engine_errors("start the harvest container"):
            spec = harvest_spec(plan)
            try:
                container = create_container(client, spec)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: one left by an interrupted harvest
                    raise
                client.api.remove_container(spec["name"], force=True)
                container = create_container(client, spec)
            container.start()
        with engine_errors("wait for the harvest container"):
            try:
                status = container.wait(timeout=timeout)
            except Exception as exc:  # requests' read timeout: the harvest hung
                container.kill()
                raise HarvestError(f"the harvest did not finish within {timeout:.0f} s") from exc
            output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        code = int(status.get("StatusCode", -1))
        if code not in (0, EXIT_UNCHANGED):
            raise HarvestError(f"the harvest failed (exit {code}): {output.strip()[-800:]}")
        bundles: dict[str, Path] = {}
        if code == 0:
            dest.mkdir(parents=True, exist_ok=True)
            for name in BUNDLES:
                if plan.bundles_dir is not None:
                    path = take_file(plan.bundles_dir / name, max_bytes)
                else:
                    path = fetch_file(client, container.id, f"{OUT_DIR}/{name}", dest,
                                      max_bytes)
                if path is not None:
                    bundles[name] = path
            if "work.bundle" not in bundles:
                raise HarvestError("the harvest finished but left no work.bundle")
        return Harvest(bundles=bundles, unchanged=code == EXIT_UNCHANGED,
                       head_unreadable=HEAD_UNREADABLE in output,
                       unreadable_files=ADD_ERRORS in output, log=output)
    except EngineError as exc:
        raise HarvestError(f"the harvest could not run: {exc}") from exc
    finally:
        if container is not None:
            with contextlib.suppress(docker.errors.DockerException, EngineError,
                                     requests.exceptions.RequestException):
                container.remove(force=True, v=True)


def _bundles_dir(path: Path, uid: int, gid: int) -> None:
    """agentrt's directory for the bundles, writable by the harvest's uid only, without the
    bundles of an earlier attempt."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
    for name in BUNDLES:
        (path / name).unlink(missing_ok=True)


def take_file(path: Path, max_bytes: int) -> Path | None:
    """A bundle the harvest wrote into its bound directory: a regular file of at most
    ``max_bytes`` with one link, never followed if it is a link; None if it is not there."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HarvestError(f"{path.name} is not a plain file the harvest wrote: {exc}") from exc
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        raise HarvestError(f"{path.name} is not a plain file the harvest wrote: refused")
    if st.st_size > max_bytes:
        raise HarvestError(f"{path.name} is {st.st_size // (1024 * 1024)} MiB, over the import "
                           f"limit of {max_bytes // (1024 * 1024)} MiB")
    return path


def fetch_file(client: docker.DockerClient, container_id: str, path: str, dest: Path,
               max_bytes: int) -> Path | None:
    """Copy one regular file out of a container through the API; None if it does not exist.

    The archive must hold exactly that file: a link, a directory, a device, a second member or
    anything larger than ``max_bytes`` is refused with :class:`HarvestError`.
    """
    name = os.path.basename(path)
    try:
        with engine_errors(f"copy {name} out of the harvest container"):
            try:
                chunks, _stat = client.api.get_archive(container_id, path)
            except docker.errors.NotFound:
                return None
            with tempfile.TemporaryFile(dir=dest) as raw:
                size = 0
                failure: Exception | None = None
                # The stream is always read to its end: the engine holds the container until
                # it is, so a failure here (disk full) must not leave it half-read.
                for chunk in chunks:
                    size += len(chunk)
                    if failure is not None:
                        continue
                    if size > max_bytes + 64 * 1024:
                        failure = HarvestError(f"{name} is larger than the import limit "
                                               f"({max_bytes // (1024 * 1024)} MiB)")
                        continue
                    try:
                        raw.write(chunk)
                    except OSError as exc:
                        failure = exc
                if failure is not None:
                    raise failure
                raw.flush()
                raw.seek(0)
                return _extract_one(raw, name, dest, max_bytes)
    except (OSError, tarfile.TarError) as exc:
        raise HarvestError(f"cannot copy {name} out of the harvest container: {exc}") from exc


def _extract_one(raw: Any, name: str, dest: Path, max_bytes: int) -> Path:
    with tarfile.open(fileobj=raw, mode="r|") as archive:
        members = 0
        target = dest / name
        for member in archive:
            members += 1
            if members > 1 or member.name != name or not member.isreg():
                raise HarvestError(f"the archive of {name} holds something else "
                                   f"({member.name!r}, type {member.type!r}): refused")
            if member.size > max_bytes:
                raise HarvestError(
                    f"{name} is {member.size // (1024 * 1024)} MiB, over the import limit of "
                    f"{max_bytes // (1024 * 1024)} MiB")
            source = archive.extractfile(member)
            if source is None:
                raise HarvestError(f"cannot read {name} from its archive")
            with open(target, "wb") as out:
                shutil.copyfileobj(source, out)
        if members == 0:
            raise HarvestError(f"the archive of {name} is empty")
        return target
