"""The helper containers that do the file work of engine-side volumes
(:mod:`runtime.engine.engine_volumes`): agentrt's base image run briefly on the engine, the
loop helper's capabilities, devices and device rules, its POSIX sh scripts (create, remove,
probe, soft create, usage), its ``containers.create`` arguments and :func:`run_helper`, which
runs one to the end and returns its output."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import docker
import docker.errors
import requests.exceptions

from runtime.engine.discovery import engine_errors, engine_info
from runtime.engine.labels import LABEL_ROLE, LABEL_SESSION
from runtime.errors import EngineError, VolumeError

HELPER_IMAGE = "agentrt/base:latest"
ROLE_HELPER = "volume-helper"
#: What the loop helper needs, and no more (see the module docstring).
LOOP_CAPS = ("SYS_ADMIN", "MKNOD", "CHOWN")
LOOP_DEVICES = ("/dev/loop-control:/dev/loop-control:rwm",)
LOOP_CGROUP_RULES = ("b 7:* rwm",)
HELPER_MEMORY = 256 * 1024 * 1024
HELPER_TIMEOUT_S = 120
CHECKOUT_TIMEOUT_S = 600
JOURNAL_MIN_MB = 32

# POSIX sh, in the loop helper, /state = the engine's state dir (rshared).
# Make the nodes of the loop devices the kernel will hand out next (a container's /dev has
# none): the first free one and a margin for helpers racing on the same engine.
_LOOP_NODES = r"""
loop_nodes() {
  free=$(losetup -f) || { echo "agentrt: no free loop device" >&2; return 1; }
  last=$(( ${free#/dev/loop} + 16 )); i=0
  while [ "$i" -le "$last" ]; do
    [ -e "/dev/loop$i" ] || mknod -m 0660 "/dev/loop$i" b 7 "$i"
    i=$((i + 1))
  done
}
"""

# Arguments: session id, size in MiB, uid, gid, ext4 label, journal (yes/no).
CREATE_SCRIPT = _LOOP_NODES + r"""
set -eu
sid=$1; mb=$2; uid=$3; gid=$4; label=$5; journal=$6
d=/state/sessions/$sid
mkdir -p -m 0711 /state /state/sessions
mkdir -m 0711 "$d"          # fails if it exists: a session's volume is never reused
undo() {
  if mountpoint -q "$d/volume"; then umount "$d/volume" || umount -l "$d/volume"; fi
  mountpoint -q "$d/volume" || rm -rf "$d"
}
trap 'rc=$?; [ "$rc" -eq 0 ] || undo; exit "$rc"' EXIT
mkdir -m 0755 "$d/volume"
# fallocate, not a sparse file: the engine host's space is taken up front. nodiscard keeps
# mke2fs from punching the reservation back out; the second fallocate refills what a file
# system without in-place zeroing (tmpfs) punched anyway.
fallocate -l "${mb}M" "$d/volume.img"
if [ "$journal" = yes ]; then j="-J size=4"; else j="-O ^has_journal"; fi
# shellcheck disable=SC2086
mkfs.ext4 -q -F -m 0 $j -L "$label" \
  -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 "$d/volume.img"
fallocate -l "${mb}M" "$d/volume.img"
loop_nodes
mount -o loop,nodev,nosuid,noatime,noinit_itable "$d/volume.img" "$d/volume"
rmdir "$d/volume/lost+found" 2>/dev/null || :
mkdir -m 0755 "$d/volume/workspace" "$d/volume/db"
mkdir -m 0700 "$d/volume/secrets"
chown "$uid:$gid" "$d/volume" "$d/volume/workspace" "$d/volume/db" "$d/volume/secrets"
echo "agentrt-volume: created $(losetup -j "$d/volume.img" | cut -d: -f1)"
"""

# Arguments: session id. Idempotent.
REMOVE_SCRIPT = _LOOP_NODES + r"""
set -eu
sid=$1; d=/state/sessions/$sid
[ -e "$d" ] || { echo "agentrt-volume: absent"; exit 0; }
if mountpoint -q "$d/volume"; then umount "$d/volume" 2>/dev/null || umount -l "$d/volume"; fi
if [ -e "$d/volume.img" ]; then
  for dev in $(losetup -n -O NAME -j "$d/volume.img"); do
    [ -e "$dev" ] || loop_nodes
    losetup -d "$dev" || :
  done
fi
if mountpoint -q "$d/volume"; then echo "agentrt: $d/volume is still mounted" >&2; exit 1; fi
rm -rf "$d"
echo "agentrt-volume: removed"
"""

# The probe: the same steps on a 4 MiB image, then undone. Argument: a random name.
PROBE_SCRIPT = _LOOP_NODES + r"""
set -eu
p=/state/probe-$1
undo() { mountpoint -q "$p" && umount "$p"; rm -rf "$p" "$p.img"; }
trap 'undo 2>/dev/null || :' EXIT
mkdir -p -m 0711 /state; mkdir "$p"
fallocate -l 4M "$p.img"
mkfs.ext4 -q -F -O ^has_journal -E nodiscard "$p.img"
loop_nodes
mount -o loop,nodev,nosuid,noatime "$p.img" "$p"
touch "$p/ok"
echo "agentrt-volume: loop ok"
"""

# Soft mode; /vol is the named volume. Arguments: uid, gid.
SOFT_CREATE_SCRIPT = r"""
set -eu
mkdir -p -m 0755 /vol/workspace /vol/db
mkdir -p -m 0700 /vol/secrets
chmod 0755 /vol
chown "$1:$2" /vol /vol/workspace /vol/db /vol/secrets
"""

# As the agent's uid, /workspace = the volume's workspace. Arguments: branch, commit.
USAGE_SCRIPT = r"""
set -eu
df -Pk /vol | awk 'NR == 2 { print "df", $3, $4 }'
du -sxk /vol | awk '{ print "du", $1 }'
"""


def security_opts(client: docker.DockerClient) -> list[str]:
    """The ``security_opt`` of a loop helper: no new privileges; AppArmor and SELinux
    confinement lifted where the engine enforces them (they forbid ``mount``)."""
    opts = ["no-new-privileges:true"]
    enforced = " ".join(str(o) for o in engine_info(client).get("SecurityOptions") or [])
    # docker-default (AppArmor) says `deny mount`; container_t (SELinux) cannot mount either.
    if "name=apparmor" in enforced:
        opts.append("apparmor=unconfined")
    if "name=selinux" in enforced:
        opts.append("label=disable")
    return opts


def loop_helper_spec(client: docker.DockerClient, state: str, script: str,
                      args: Sequence[str], session_id: str) -> dict[str, Any]:
    """``containers.create`` arguments of a loop helper: root with LOOP_CAPS, loop devices,
    the state directory bound ``rshared`` at /state, no network."""
    return {
        "image": HELPER_IMAGE,
        "command": ["sh", "-c", script, "agentrt-volume", *args],
        "user": "0:0",
        "working_dir": "/",
        "cap_drop": ["ALL"],
        "cap_add": list(LOOP_CAPS),
        "security_opt": security_opts(client),
        "devices": list(LOOP_DEVICES),
        "device_cgroup_rules": list(LOOP_CGROUP_RULES),
        # Binds (not Mounts) so the engine creates the state directory on first use.
        "volumes": {state: {"bind": "/state", "mode": "rw,rshared"}},
        "network_mode": "none",
        "mem_limit": HELPER_MEMORY,
        "memswap_limit": HELPER_MEMORY,
        "pids_limit": 64,
        "labels": {LABEL_SESSION: session_id, LABEL_ROLE: ROLE_HELPER},
        "detach": True,
    }


def run_helper(client: docker.DockerClient, spec: dict[str, Any], what: str,
                timeout: float = HELPER_TIMEOUT_S,
                put: tuple[str, Iterator[bytes]] | None = None) -> str:
    """Create, (fill,) start and wait for a helper; its output. VolumeError if it fails."""
    container = None
    try:
        with engine_errors(what):
            container = client.containers.create(**spec)
            if put is not None and not client.api.put_archive(container.id, put[0], put[1]):
                raise VolumeError(f"{what}: the engine refused the archive")
            container.start()
            try:
                status = container.wait(timeout=timeout)
            except requests.exceptions.RequestException as exc:
                container.kill()
                raise VolumeError(f"{what}: did not finish within {timeout:.0f} s") from exc
            output = str(container.logs(stdout=True, stderr=True).decode(errors="replace"))
        code = int(status.get("StatusCode", -1))
        if code != 0:
            raise VolumeError(f"{what} failed (exit {code}): {output.strip()[-800:]}")
        return output
    except EngineError as exc:
        raise VolumeError(f"{what}: {exc}") from exc
    finally:
        if container is not None:
            with contextlib.suppress(docker.errors.DockerException,
                                     requests.exceptions.RequestException):
                container.remove(force=True, v=True)

