"""Check a session's base out *inside* the engine: a bundle in through the API, git in a helper.

For an engine that does not share agentrt's disk (:mod:`runtime.engine.engine_volumes`),
the base cannot be written into the volume from the host. :func:`create_base_bundle` packs the
session's branch on the host (the user's repository, trusted); :func:`checkout_in_engine`
streams it with ``put_archive`` into a helper container that runs as the agent's uid with no
capabilities and no network, and checks it out into the volume's workspace.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

from runtime.engine.engine_volumes import EngineVolume
from runtime.engine.labels import LABEL_ROLE, LABEL_SESSION
from runtime.engine.types import EngineClient
from runtime.engine.volume_helpers import (
    CHECKOUT_TIMEOUT_S,
    HELPER_IMAGE,
    ROLE_HELPER,
    run_helper,
)
from runtime.errors import GitError, VolumeError, WorkspaceError
from runtime.git.safe_git import run_git

CHECKOUT_SCRIPT = r"""
set -eu
branch=$1; commit=$2; w=/workspace
# The source: the shipped bundle, or (on Swarm) the run's exchange and the base's ref there.
src=${3:-/var/tmp/agentrt-base.bundle}; ref=${4:-refs/heads/$branch}
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null HOME=/var/tmp GIT_TERMINAL_PROMPT=0
export LC_ALL=C
g() {
  git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c core.untrackedCache=false \
      -c gc.auto=0 -c maintenance.auto=false -c core.pager=cat -c submodule.recurse=false \
      -c protocol.file.allow=always -c advice.detachedHead=false -c pack.threads=1 "$@"
}
g init -q --template= --initial-branch="$branch" "$w"
g --git-dir="$w/.git" config user.name "agentrt agent"
g --git-dir="$w/.git" config user.email agent@agentrt.invalid
g --git-dir="$w/.git" config gc.auto 0
g --git-dir="$w/.git" config maintenance.auto false
g --git-dir="$w/.git" fetch -q --no-tags --no-write-fetch-head --update-head-ok "$src" \
  "+$ref:refs/heads/$branch"
got=$(g --git-dir="$w/.git" rev-parse --verify -q "refs/heads/$branch^{commit}") || got=
if [ "$got" != "$commit" ]; then
  echo "agentrt-checkout: the bundle's $branch is '$got', not $commit" >&2; exit 4
fi
g --git-dir="$w/.git" --work-tree="$w" reset -q --hard "$commit"
echo "agentrt-checkout: done"
"""


def create_base_bundle(git_dir: Path, branch: str, commit: str, dest: Path) -> Path:
    """``git bundle create`` of ``refs/heads/<branch>`` (which must be at ``commit``) on the
    host, for :func:`checkout_in_engine`. The whole history the commit reaches goes in."""
    try:
        head = run_git(["rev-parse", "--verify", "-q", f"refs/heads/{branch}^{{commit}}"],
                       git_dir=git_dir).stdout.strip()
        if head != commit:
            raise WorkspaceError(f"branch {branch} is at {head or 'nothing'}, not {commit}")
        run_git(["bundle", "create", "-q", str(dest), f"refs/heads/{branch}"], git_dir=git_dir)
    except GitError as exc:
        raise WorkspaceError(f"cannot bundle {branch}: {exc}") from exc
    return dest


def tar_one_file(path: Path, name: str) -> Iterator[bytes]:
    """A tar stream of one regular file, read as it is sent (no copy on disk or in memory)."""
    with open(path, "rb") as source:
        size = os.fstat(source.fileno()).st_size
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.uid, info.gid = size, 0o644, 0, 0
        yield info.tobuf(format=tarfile.PAX_FORMAT)
        sent = 0
        while chunk := source.read(1024 * 1024):
            sent += len(chunk)
            yield chunk
        if sent != size:
            raise VolumeError(f"{path} changed while it was sent")
        yield b"\0" * ((512 - size % 512) % 512) + b"\0" * 1024


def checkout_in_engine(client: EngineClient, volume: EngineVolume, bundle: Path,
                       branch: str, commit: str, uid: int, gid: int,
                       timeout: float = CHECKOUT_TIMEOUT_S) -> None:
    """Check ``commit`` out on ``branch`` in ``volume``'s workspace, on the engine's host.

    ``bundle`` (made on the host, see :func:`create_base_bundle`) is shipped with
    ``put_archive`` into a helper container running as ``uid:gid`` with no capabilities and no
    network; it ``git init``\\ s ``workspace/.git`` (no template), fetches the branch from the
    bundle, checks it is ``commit`` and checks it out. No alternates: the objects live in the
    volume and count against ``disk_mb``. WorkspaceError if it fails.
    """
    if uid == 0:
        raise WorkspaceError("refusing to check out as root (uid 0)")
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", commit):
        raise WorkspaceError(f"{commit!r} is not a full commit id")
    spec = {
        "image": HELPER_IMAGE,
        "command": ["sh", "-c", CHECKOUT_SCRIPT, "agentrt-checkout", branch, commit],
        "user": f"{uid}:{gid}", "working_dir": "/",
        "environment": {"HOME": "/var/tmp"},
        "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"],
        "network_mode": "none",
        "mounts": volume.mounts(db_target=None),
        "mem_limit": 512 * 1024 * 1024, "memswap_limit": 512 * 1024 * 1024, "pids_limit": 128,
        "labels": {LABEL_SESSION: volume.session_id, LABEL_ROLE: ROLE_HELPER}, "detach": True,
    }
    try:
        run_helper(client, spec, f"check out {branch} in the engine volume of "
                    f"{volume.session_id}", timeout=timeout,
                    put=("/var/tmp", tar_one_file(bundle, "agentrt-base.bundle")))
    except (VolumeError, OSError) as exc:
        raise WorkspaceError(str(exc)) from exc
