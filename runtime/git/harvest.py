"""The harvest: a session's work is read inside a container and leaves it as one git bundle.

The host never opens a path an agent could write, and the harvest obeys nothing the agent
wrote. When a session's container has stopped, agentrt starts a fresh *harvest container*
(agentrt's base image, read-only root, no network, every capability dropped but
``CAP_DAC_READ_SEARCH``, uid 0 of its own container: a uid the agent never had, whose only
privilege is reading) with only the session's working tree and the run's object store mounted,
read-only, one core, a memory, pids and wall-time limit. Inside it, the script below:

1. reads the agent's ``HEAD`` and branch ref **as data** (bounded size, object-id syntax, no
   link on the way) and never runs git with the agent's ``.git`` as its repository: every git
   runs in a private repository whose alternates name the agent's objects, with agentrt's
   config only (no remotes, no promisor, no lazy fetch, no protocol, no hooks, no fsmonitor);
2. checks that every object the agent's head reaches exists, and snapshots whatever the agent
   left uncommitted on top of it (``read-tree`` + ``add -A`` + ``write-tree`` + ``commit-tree``),
   leaving out the state agent CLIs keep in the repository (:data:`runtime.presets.
   STATE_EXCLUDES`, in the private git dir's ``info/exclude``);
3. writes ``work.bundle`` (the snapshot and the agent's commits, thin against the base) and,
   when the agent made commits, ``files.bundle`` (the same files as one commit on the base:
   used only if the host refuses the agent's commits), into a tmpfs of ``max_import_mb``.

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
import time
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
from runtime.errors import EngineError, HarvestError, HarvestTooLargeError
from runtime.presets import STATE_EXCLUDES

log = logging.getLogger(__name__)

HARVEST_IMAGE = "agentrt/base:latest"
#: The harvest's scratch (its private repository and index) and its bundles: two tmpfs of a
#: fixed size, so what it writes is capped by construction; the finished bundles are copied
#: into OUT_DIR (an anonymous volume, removed with the container), whose bytes are therefore
#: at most the bundles tmpfs, and taken out with ``get_archive`` once it has stopped.
SCRATCH_DIR = "/agentrt-harvest"
BUNDLES_DIR = "/agentrt-bundles"
OUT_DIR = "/agentrt-out"
BUNDLES = ("work.bundle", "files.bundle")
EXIT_UNCHANGED = 3
EXIT_TOO_LARGE = 4
HEAD_UNREADABLE = "agentrt-harvest: agent-head-unreadable"
ADD_ERRORS = "agentrt-harvest: some files could not be read"
HARVEST_MIN_MEMORY_MB = 256
HARVEST_MIN_SCRATCH_MB = 64
HARVEST_TIMEOUT_SECONDS = 600
#: One core: the harvest is git walking one tree.
HARVEST_NANO_CPUS = 1_000_000_000
HARVEST_PIDS = 256
#: The harvest runs as uid 0 of its own container with one capability, CAP_DAC_READ_SEARCH
#: (read any file, search any directory: the agent's files may be 0600). The agent never had
#: uid 0 nor that capability; the tree and the store are mounted read-only, the root file
#: system is read-only, every other capability is dropped and no new privileges can be had.
HARVEST_USER = "0:0"
HARVEST_CAPS = ["DAC_READ_SEARCH"]
#: The environment of every git the harvest runs: agentrt's, never the agent's (no HOME with
#: a config, no system config, no lazy fetch, no prompts, a PATH of the image's own dirs).
HARVEST_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": f"{SCRATCH_DIR}/home",
    "XDG_CONFIG_HOME": f"{SCRATCH_DIR}/home",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_NO_LAZY_FETCH": "1",
    "GIT_PROTOCOL_FROM_USER": "0",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/false",
    "SSH_ASKPASS": "/bin/false",
    "HARVEST_SCRATCH": SCRATCH_DIR,
    "HARVEST_BUNDLES": BUNDLES_DIR,
    "HARVEST_OUT": OUT_DIR,
}

# POSIX sh. Arguments: base commit, object store path (as mounted in the container; empty when
# the volume holds every object), session id. It never runs git with the agent's git dir as
# its repository: the agent's HEAD and branch ref are read as data (bounded size, object-id
# syntax, no link anywhere on the way, inside /workspace/.git only), and every git runs in the
# private repository $h, whose config agentrt wrote and whose alternates name the agent's
# objects. The agent's config (remotes, promisor, sshCommand, fsmonitor, hooks, filters) is
# therefore never read. Scratch goes to $HARVEST_SCRATCH and bundles to $HARVEST_BUNDLES
# (size-capped tmpfs), copied at the end to $HARVEST_OUT (when set).
SCRIPT = r"""
set -eu
base=$1; store=$2; sid=$3
out=${HARVEST_SCRATCH:-/var/tmp/agentrt-harvest}; h=$out/h.git; bundles=${HARVEST_BUNDLES:-$out}
gd=/workspace/.git
mkdir -p "$out" "$out/home" "$bundles"
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null HOME=$out/home XDG_CONFIG_HOME=$out/home
export GIT_TERMINAL_PROMPT=0 GIT_NO_LAZY_FETCH=1 GIT_PROTOCOL_FROM_USER=0
export LC_ALL=C GIT_AUTHOR_NAME=agentrt GIT_AUTHOR_EMAIL=agentrt@localhost
export GIT_COMMITTER_NAME=agentrt GIT_COMMITTER_EMAIL=agentrt@localhost
unset GIT_DIR GIT_WORK_TREE GIT_COMMON_DIR GIT_OBJECT_DIRECTORY GIT_ALTERNATE_OBJECT_DIRECTORIES
g() {
  git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c core.untrackedCache=false \
      -c gc.auto=0 -c maintenance.auto=false -c core.autocrlf=false -c core.safecrlf=false \
      -c protocol.allow=never -c core.sshCommand=false -c core.askPass=/bin/false \
      -c credential.helper= -c core.attributesFile=/dev/null -c core.excludesFile=/dev/null \
      -c submodule.recurse=false -c core.pager=cat -c diff.external= \
      -c advice.addEmbeddedRepo=false -c pack.threads=1 "$@"
}
oid_ok() { case $1 in *[!0-9a-f]*|'') return 1;; esac; [ ${#1} -eq 40 ]; }
# A regular file (not a link) of fewer than $2 bytes whose path has no link anywhere.
plain() {
  [ -f "$1" ] && [ ! -L "$1" ] || return 1
  [ "$(realpath -e -- "$1" 2>/dev/null)" = "$1" ] || return 1
  [ -n "$(find "$1" -maxdepth 0 -type f -size -"$2"c 2>/dev/null)" ]
}
# The agent's HEAD as data: an object id, or "ref: refs/heads/<name>" read from the loose ref
# file or from packed-refs; nothing else (no git in the agent's git dir).
agent_head() {
  [ -d "$gd" ] && [ ! -L "$gd" ] && plain "$gd/HEAD" 4096 || return 1
  line=$(head -n 1 "$gd/HEAD")
  if oid_ok "$line"; then echo "$line"; return 0; fi
  ref=${line#ref: }
  [ "$ref" != "$line" ] || return 1
  case $ref in refs/heads/*) ;; *) return 1;; esac
  case $ref in *[!A-Za-z0-9._/+@-]*) return 1;; esac
  g check-ref-format "$ref" || return 1
  if [ -e "$gd/$ref" ] || [ -L "$gd/$ref" ]; then
    plain "$gd/$ref" 4096 || return 1
    value=$(head -n 1 "$gd/$ref")
  else
    plain "$gd/packed-refs" 67108864 || return 1
    value=$(awk -v r="$ref" '$2 == r { print $1; exit }' "$gd/packed-refs")
  fi
  oid_ok "$value" || return 1
  echo "$value"
}
g init -q --bare "$h"
mkdir -p "$h/info" && printf '%s\n' @STATE_EXCLUDES@ > "$h/info/exclude"
printf '%s\n' "$gd/objects" > "$h/objects/info/alternates"
if [ -n "$store" ]; then printf '%s\n' "$store" >> "$h/objects/info/alternates"; fi
export GIT_INDEX_FILE=$out/index
head=
if a=$(agent_head) \
   && g --git-dir="$h" rev-list --objects "$a" --not "$base" >/dev/null 2>&1 \
   && g --git-dir="$h" read-tree "$a" 2>/dev/null; then
  head=$a
else
  echo "agentrt-harvest: agent-head-unreadable"
  g --git-dir="$h" read-tree "$base"
fi
parent=${head:-$base}
# Its messages go to the bundles' tmpfs (still empty): a full scratch could not hold them.
errs=$bundles/add.err
add() {
  g -c core.trustctime=false -c core.checkStat=minimal --git-dir="$h" --work-tree=/workspace \
    add -A --ignore-errors -- . >/dev/null 2>"$errs"
}
# The agent's own index is only a stat cache (files whose size and mtime did not change are not
# re-read): a copy of a plain file of sane size, in an index of our own; any doubt, or any
# error, and the snapshot starts again from the commit's tree, reading every file.
stat_cache=
if [ -n "$head" ] && plain "$gd/index" 268435456 \
   && cp "$gd/index" "$out/agent.index" 2>/dev/null; then
  stat_cache=$out/agent.index
fi
if [ -n "$stat_cache" ] && GIT_INDEX_FILE=$stat_cache add; then
  mv "$stat_cache" "$GIT_INDEX_FILE"
elif ! add; then
  # The scratch tmpfs is full: the work is larger than the harvest may hold, not unreadable.
  if grep -q -e 'No space left' -e 'Out of diskspace' "$errs"; then
    echo "agentrt-harvest: over-limit"; exit 4
  fi
  echo "agentrt-harvest: some files could not be read"
  head -c 2000 "$errs" >&2 || true
fi
rm -f "$errs"
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
bundle() {
  if ! g --git-dir="$h" bundle create -q "$bundles/$1.bundle" "refs/heads/$1" --not "$base" \
       2>"$out/bundle.err"; then
    if grep -q -e 'No space left' -e 'Out of diskspace' "$out/bundle.err"; then
      echo "agentrt-harvest: over-limit"; exit 4
    fi
    cat "$out/bundle.err" >&2; exit 1
  fi
}
g --git-dir="$h" update-ref refs/heads/work "$snap"
bundle work
base_tree=$(g --git-dir="$h" rev-parse "$base^{tree}")
if [ -n "$head" ] && [ "$head" != "$base" ] && [ "$tree" != "$base_tree" ]; then
  files=$(g --git-dir="$h" commit-tree "$tree" -p "$base" \
          -m "agentrt: snapshot of the files of session $sid (its own commits were refused)")
  g --git-dir="$h" update-ref refs/heads/files "$files"
  bundle files
fi
if [ -n "${HARVEST_OUT:-}" ]; then
  for f in work.bundle files.bundle; do
    if [ -f "$bundles/$f" ]; then cp "$bundles/$f" "$HARVEST_OUT/$f"; rm -f "$bundles/$f"; fi
  done
fi
echo "agentrt-harvest: done"
""".replace("@STATE_EXCLUDES@", " ".join(shlex.quote(p) for p in STATE_EXCLUDES))


@dataclass(frozen=True)
class HarvestPlan:
    """What a harvest container needs: the session's tree, its base and the run's store."""

    session_id: str
    base_commit: str
    # The tree's mounts, read-only (runtime.backends.docker.trees: the workspace, and the store).
    mounts: tuple[Mount, ...]
    store: Path | None  # the run's object store; None when the volume holds the objects
    uid: int
    gid: int
    memory_mb: int
    runtime: str = "runc"
    image: str = HARVEST_IMAGE
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Size of the harvest's scratch tmpfs (its private repository: the objects of what the
    #: agent left uncommitted, and the index); 0: as large as the import limit.
    scratch_mb: int = 0


@dataclass
class Harvest:
    """What came out: bundle files on the host (in a directory agentrt owns) and notes."""

    bundles: dict[str, Path]
    unchanged: bool
    head_unreadable: bool
    unreadable_files: bool
    log: str


def _mb(size: int) -> int:
    return max(1, -(-size // (1024 * 1024)))


def harvest_spec(plan: HarvestPlan, max_bytes: int = 1024 * 1024 * 1024) -> dict[str, Any]:
    """``client.containers.create`` arguments of the harvest container. Pure.

    The hardening of a session (see :data:`runtime.engine.container.HARDENING`), no network,
    a read-only root (the image's own git, a fixed PATH), nothing of the host but the working
    tree and the object store, read-only. It runs as :data:`HARVEST_USER` with only
    :data:`HARVEST_CAPS`, one core, a memory and pids limit, and writes only into two tmpfs of
    fixed size (scratch, and ``max_bytes`` of bundles) and the copy of the finished bundles
    (:data:`OUT_DIR`, at most what the bundles tmpfs held), taken out through the API.
    """
    if plan.uid == 0:
        raise HarvestError("refusing a session whose agent ran as root (uid 0)")
    mounts = list(plan.mounts)
    if any(not m["ReadOnly"] for m in mounts):
        raise HarvestError("a harvest mounts the session's tree read-only")
    mounts.append(Mount(OUT_DIR, None, type="volume"))
    bundles_mb = _mb(max_bytes) + 1
    scratch_mb = max(plan.scratch_mb or _mb(max_bytes), HARVEST_MIN_SCRATCH_MB)
    # tmpfs pages count against the container's memory: the limit makes room for both.
    memory = (max(plan.memory_mb, HARVEST_MIN_MEMORY_MB) + bundles_mb + scratch_mb) * 1024 * 1024
    spec: dict[str, Any] = {
        **HARDENING,
        "cap_add": list(HARVEST_CAPS),
        "image": plan.image,
        "command": ["sh", "-c", SCRIPT, "agentrt-harvest", plan.base_commit,
                    STORE_MOUNT if plan.store is not None else "", plan.session_id],
        "name": f"agentrt-harvest-{plan.session_id}",
        "user": HARVEST_USER,
        "working_dir": "/",
        "environment": dict(HARVEST_ENV),
        "labels": {**plan.labels, LABEL_HARVEST: plan.session_id},
        "mounts": mounts,
        "tmpfs": {SCRATCH_DIR: f"size={scratch_mb}m,mode=0700",
                  BUNDLES_DIR: f"size={bundles_mb}m,mode=0700"},
        "mem_limit": memory,
        "memswap_limit": memory,
        "nano_cpus": HARVEST_NANO_CPUS,
        "pids_limit": HARVEST_PIDS,
        "read_only": True,
        "network_mode": "none",
        "detach": True,
    }
    if plan.runtime != "runc":
        spec["runtime"] = plan.runtime
    return spec


def run_harvest(client: docker.DockerClient, plan: HarvestPlan, dest: Path,
                max_bytes: int, timeout: float = HARVEST_TIMEOUT_SECONDS,
                shares_disk: bool = False) -> Harvest:
    """Run the harvest container for ``plan`` and copy its bundles into ``dest``.

    ``shares_disk``: the engine keeps its volumes on this host's disk, so the bundles are
    taken from the out volume's directory with :func:`take_file` (as data: no link, no FIFO,
    one link, within the cap) rather than streamed through ``get_archive``; the harvest's
    bundles tmpfs has already capped what is there. Raises :class:`HarvestError` when it
    cannot finish (the caller keeps the volume), and :class:`HarvestTooLargeError` when the
    bundles would exceed ``max_bytes``.
    """
    container = None
    try:
        with engine_errors("start the harvest container"):
            spec = harvest_spec(plan, max_bytes)
            try:
                container = create_container(client, spec)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: one left by an interrupted harvest
                    raise
                client.api.remove_container(spec["name"], force=True, v=True)
                container = create_container(client, spec)
            container.start()
        with engine_errors("wait for the harvest container"):
            try:
                status = container.wait(timeout=timeout)
            except Exception as exc:  # requests' read timeout: the harvest hung
                container.kill()
                raise HarvestError(f"the harvest did not finish within {timeout:.0f} s") from exc
            output = _output(client, container.id, tail=200)
        code = int(status.get("StatusCode", -1))
        if code == EXIT_TOO_LARGE:
            raise HarvestTooLargeError(f"the session's work is larger than the import limit "
                                       f"({_mb(max_bytes)} MiB) once bundled")
        if code not in (0, EXIT_UNCHANGED):
            raise HarvestError(f"the harvest failed (exit {code}): {output.strip()[-800:]}")
        bundles: dict[str, Path] = {}
        if code == 0:
            dest.mkdir(mode=0o700, parents=True, exist_ok=True)
            dest.chmod(0o700)
            local = None
            if shares_disk:
                with engine_errors("inspect the harvest container"):
                    local = _out_volume_dir(client.api.inspect_container(container.id))
            for name in BUNDLES:
                if local is not None:
                    path = take_file(local / name, max_bytes, dest=dest / name)
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


def _output(client: docker.DockerClient, container_id: str, tail: int) -> str:
    """The last ``tail`` lines of the stopped harvest's stdout and stderr, in one request (the
    SDK's ``logs`` first inspects the container to learn whether it has a TTY: it has none)."""
    api = client.api
    response = api._get(api._url("/containers/{0}/logs", container_id),
                        params={"stdout": 1, "stderr": 1, "tail": tail}, stream=False)
    return bytes(api._get_result_tty(False, response, False)).decode(errors="replace")


def _out_volume_dir(attrs: Mapping[str, Any]) -> Path | None:
    """The host directory of the stopped harvest's out volume (from ``attrs``, its
    inspection), if this process can read it (else the bundles come by ``get_archive``)."""
    for mount in attrs.get("Mounts") or []:
        if mount.get("Destination") == OUT_DIR and mount.get("Type") == "volume":
            source = Path(str(mount.get("Source") or ""))
            try:  # the engine's volumes are root's: a user who is not cannot read them
                if source.is_absolute() and source.is_dir() and not source.is_symlink() and \
                        os.access(source, os.R_OK | os.X_OK):
                    return source
            except OSError:
                return None
    return None


#: How long the host may spend reading one file the harvest left (a FIFO or a slow device
#: never gets that far: they are refused before a byte is read).
TAKE_DEADLINE_SECONDS = 120.0


def take_file(path: Path, max_bytes: int, dest: Path | None = None,
              deadline: float = TAKE_DEADLINE_SECONDS) -> Path | None:
    """Take a file that something untrusted may have placed at ``path`` only as data.

    Opened ``O_NONBLOCK | O_NOFOLLOW`` (a FIFO or a device never blocks the open, a link is
    never followed), then ``fstat`` must show a regular file with one link and at most
    ``max_bytes``; with ``dest``, its bytes are copied there from that descriptor, within
    ``deadline`` seconds and never past ``max_bytes``. Returns the path of the data (``dest``
    or ``path``), None when nothing is there; :class:`HarvestError` for anything else.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HarvestError(f"{path.name} is not a plain file the harvest wrote: {exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise HarvestError(f"{path.name} is not a plain file the harvest wrote "
                               f"({_kind(st.st_mode)}, {st.st_nlink} links): refused")
        if st.st_size > max_bytes:
            raise HarvestError(f"{path.name} is {st.st_size // (1024 * 1024)} MiB, over the "
                               f"import limit of {max_bytes // (1024 * 1024)} MiB")
        if dest is None:
            return path
        try:
            _copy_bounded(fd, dest, max_bytes, time.monotonic() + deadline, path.name)
        except OSError as exc:  # this host's disk (full, gone): a failed harvest, work kept
            with contextlib.suppress(OSError):
                dest.unlink()
            raise HarvestError(f"{path.name} could not be copied to {dest.parent}: {exc}") \
                from exc
        return dest
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a regular file"


def _copy_bounded(fd: int, dest: Path, max_bytes: int, deadline: float, name: str) -> None:
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        copied = 0
        while True:
            if time.monotonic() > deadline:
                raise HarvestError(f"reading {name} took too long: refused")
            chunk = os.read(fd, 1024 * 1024)
            if not chunk:
                return
            copied += len(chunk)
            if copied > max_bytes:
                raise HarvestError(f"{name} grew past the import limit while read: refused")
            os.write(out, chunk)
    except BaseException:
        os.close(out)
        out = -1
        dest.unlink(missing_ok=True)
        raise
    finally:
        if out >= 0:
            os.close(out)


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
                try:
                    # Cut at the cap: a stream that goes on (a sparse 20 GB "bundle" on a
                    # remote engine) is not read to its end; the container is removed next.
                    for chunk in chunks:
                        size += len(chunk)
                        if size > max_bytes + 64 * 1024:
                            raise HarvestError(f"{name} is larger than the import limit "
                                               f"({max_bytes // (1024 * 1024)} MiB)")
                        raw.write(chunk)
                finally:
                    with contextlib.suppress(Exception):
                        chunks.close()
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
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out)
        if members == 0:
            raise HarvestError(f"the archive of {name} is empty")
        return target
