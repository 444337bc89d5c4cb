"""Disk-limited volumes that hold a session's worktree and private database.

On Linux as root a volume is an ext4 image (fully allocated with ``fallocate``, so the host
cannot be overcommitted) loop-mounted ``nodev,nosuid``: writing past ``disk_mb`` fails with
ENOSPC inside the container and nothing else fills. Elsewhere (not root, macOS) a volume is a
plain directory whose usage the supervisor measures against the limit (a *soft* limit).

Layout of a mounted volume root::

    <root>/workspace   the session's git working tree (and its own .git)
    <root>/db          the session's private SQLite file

Image files live under ``<volumes root>/sessions/<session id>/`` and carry the session id in
their path and ext4 label, so leftovers are found without any registry. The volumes root is
the repository's state directory unless the user chose another place (:func:`volumes_root`):
``AGENTRT_VOLUMES_DIR`` in the environment wins over ``[run] volumes_dir`` in the task file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from runtime.errors import ConfigError, VolumeError

DiskLimitMode = Literal["loop", "soft"]

#: Environment variable naming the directory that holds session volumes (wins over the task
#: file's ``[run] volumes_dir``).
VOLUMES_DIR_ENV = "AGENTRT_VOLUMES_DIR"
#: File in the state directory listing every volumes root this repository has used, one per
#: line, so ``gc`` finds volumes made under a task file's ``volumes_dir`` without that file.
ROOTS_FILE = "volume-roots"

_JOURNAL_MIN_MB = 32
#: How a loop volume is mounted. ``nobarrier``: the file system sends no cache flushes to the
#: loop device, which would turn each into an fsync of the image file on the host's disk; a
#: volume is scratch space deleted once its work is home, so its writes need not reach the
#: disk at all (a kept volume is synced explicitly, :meth:`Volume.sync`). ``noinit_itable``:
#: see :func:`_make_loop_fs`.
FS_MOUNT_OPTIONS = "nodev,nosuid,noatime,noinit_itable,nobarrier"
LOOP_MOUNT_OPTIONS = "loop," + FS_MOUNT_OPTIONS


def run_tool(cmd: list[str], what: str) -> str:
    """Run a host tool (mount, losetup, mkfs...); its stdout, or VolumeError saying ``what``."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VolumeError(f"{what}: {exc}") from exc
    if proc.returncode != 0:
        raise VolumeError(f"{what}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


@functools.cache
def loop_supported() -> bool:
    """True when this host can make loop-mounted ext4 volumes: Linux, root, mkfs.ext4,
    losetup and the loop driver.

    A capability, not the state of the moment: a host whose loop devices happen to be all in
    use right now is still a loop host (the mount then fails with a clear VolumeError), so a
    long-lived process never switches every later session to another mode by accident.
    """
    if not (Path("/proc/mounts").exists() and os.geteuid() == 0
            and shutil.which("mkfs.ext4") and shutil.which("losetup")):
        return False
    return Path("/dev/loop-control").exists() or any(Path("/dev").glob("loop[0-9]*"))


def default_mode() -> DiskLimitMode:
    """The disk-limit mode this host supports."""
    return "loop" if loop_supported() else "soft"


def resolve_volumes_root(state_dir: Path, configured: Path | None, env_value: str | None) -> Path:
    """Where a repository's volumes live (the decision alone; no effect). Pure.

    ``env_value`` (``AGENTRT_VOLUMES_DIR``) wins over ``configured`` (``[run] volumes_dir``):
    where disk space comes from is a property of the host, which the operator sets, while a
    task file travels between hosts. With neither, the state directory itself. A chosen
    directory gets one subdirectory per repository (``<repo name>-<12 hex of the state dir's
    path>``), so repositories may share it and ``gc`` of one never sees another's volumes.
    ConfigError for a relative path (``~`` is expanded).
    """
    if env_value:
        chosen, source = Path(env_value), VOLUMES_DIR_ENV
    elif configured is not None:
        chosen, source = configured, "[run] volumes_dir"
    else:
        return state_dir
    chosen = chosen.expanduser()
    if not chosen.is_absolute():
        raise ConfigError(f"{source}: {chosen} is not an absolute path")
    name = state_dir.parent.parent.name if state_dir.parent.name == ".git" else state_dir.name
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:40] or "repo"
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    return chosen / f"{name}-{digest}"


def volumes_root(state_dir: Path, configured: Path | None) -> Path:
    """The directory whose ``sessions/<session id>`` holds each session's volume.

    Resolved by :func:`resolve_volumes_root` from ``AGENTRT_VOLUMES_DIR`` and ``configured``;
    a root other than ``state_dir`` is recorded in ``<state_dir>/volume-roots`` (see
    :func:`known_volume_roots`). ConfigError for a relative path, VolumeError if the record
    cannot be written.
    """
    root = resolve_volumes_root(state_dir, configured, os.environ.get(VOLUMES_DIR_ENV))
    if root != state_dir and root not in _recorded_roots(state_dir):
        try:
            state_dir.mkdir(parents=True, exist_ok=True)
            # One short O_APPEND write per line: concurrent sessions cannot interleave it.
            with open(state_dir / ROOTS_FILE, "a", encoding="utf-8") as record:
                record.write(f"{root}\n")
        except OSError as exc:
            raise VolumeError(f"cannot record volumes root {root} in {state_dir}: {exc}") from exc
    return root


def known_volume_roots(state_dir: Path) -> list[Path]:
    """Every volumes root of this repository, state directory first, each listed once.

    The state directory, the roots recorded by :func:`volumes_root`, and the one
    ``AGENTRT_VOLUMES_DIR`` names now: where ``gc`` and ``gc --repair-state`` look for
    ``sessions/<id>`` directories.
    """
    roots = [state_dir, *_recorded_roots(state_dir)]
    with contextlib.suppress(ConfigError):
        roots.append(resolve_volumes_root(state_dir, None, os.environ.get(VOLUMES_DIR_ENV)))
    return list(dict.fromkeys(roots))


def _recorded_roots(state_dir: Path) -> list[Path]:
    try:
        lines = (state_dir / ROOTS_FILE).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    return [Path(line) for line in lines if line.startswith("/")]


def mounted_at(path: Path) -> str | None:
    """The device mounted exactly at ``path`` (from /proc/mounts), or None."""
    target = str(path)
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[1].replace("\\040", " ") == target:
                return fields[0]
    return None


@dataclass
class Volume:
    """One session's volume: where it is, how it is limited, and how to remove it."""

    session_dir: Path
    mode: DiskLimitMode
    limit_bytes: int

    @property
    def root(self) -> Path:
        """The directory the volume is mounted at (or the plain directory in soft mode)."""
        return self.session_dir / "volume"


    @property
    def image(self) -> Path:
        """The ext4 image file (loop mode only)."""
        return self.session_dir / "volume.img"

    @property
    def workspace(self) -> Path:
        """The session's working tree."""
        return self.root / "workspace"

    @property
    def db_dir(self) -> Path:
        """The directory holding the session's private SQLite file."""
        return self.root / "db"

    def used_bytes(self) -> int:
        """Bytes in use: filesystem usage in loop mode, a no-follow walk in soft mode."""
        # ismount (two stats), not mounted_at (all of /proc/mounts): the supervisor asks
        # this of every session twice a second.
        if self.mode == "loop" and os.path.ismount(self.root):
            st = os.statvfs(self.root)
            return (st.f_blocks - st.f_bfree) * st.f_frsize
        return tree_size(self.root)

    def free_bytes(self) -> int:
        """Bytes still free for the agent."""
        if self.mode == "loop" and os.path.ismount(self.root):
            st = os.statvfs(self.root)
            return st.f_bavail * st.f_frsize
        return max(0, self.limit_bytes - tree_size(self.root))

    def sync(self) -> None:
        """Write the volume's data to the host's disk (a kept volume outlives the session:
        it is mounted without barriers, :data:`LOOP_MOUNT_OPTIONS`)."""
        if self.mode == "loop" and mounted_at(self.root):
            run_tool(["sync", "-f", str(self.root)], f"sync {self.root}")

    def remove(self) -> None:
        """Unmount (which detaches the loop device) and delete everything; idempotent."""
        if mounted_at(self.root):
            with contextlib.suppress(VolumeError):
                run_tool(["umount", str(self.root)], f"unmount {self.root}")
            if mounted_at(self.root):
                run_tool(["umount", "-l", str(self.root)], f"lazy unmount {self.root}")
        _detach_loops(self.image)
        if self.session_dir.exists():
            shutil.rmtree(self.session_dir, ignore_errors=True)
        if self.session_dir.exists():
            raise VolumeError(f"could not remove {self.session_dir}")


def tree_size(root: Path) -> int:
    """Disk usage of a tree without following symlinks (agents write these trees)."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames + dirnames:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if not stat.S_ISDIR(st.st_mode):
                    total += st.st_blocks * 512
    return total


def _detach_loops(image: Path) -> None:
    if not image.exists() or shutil.which("losetup") is None:
        return
    for device in loops_of(image):
        with contextlib.suppress(VolumeError):
            run_tool(["losetup", "-d", device], f"detach {device}")


def loops_of(image: Path) -> list[str]:
    """The loop devices backed by ``image`` (``losetup -j``, read from sysfs: no process)."""
    wanted = os.path.realpath(image)
    devices = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            name = backing.read_text().strip().removesuffix(" (deleted)")
            if name == wanted:
                devices.append(f"/dev/{backing.parent.parent.name}")
    return devices


def create_volume(
    session_dir: Path, disk_mb: int, uid: int, gid: int, mode: DiskLimitMode | None = None
) -> Volume:
    """Create and mount a volume of ``disk_mb`` MiB owned by ``uid:gid``; undo on failure."""
    chosen = mode or default_mode()
    volume = Volume(session_dir, chosen, disk_mb * 1024 * 1024)
    with removed_on_failure(volume):
        session_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        volume.root.mkdir(mode=0o755)
        if chosen == "loop":
            _make_loop_fs(volume, disk_mb, uid, gid)
        make_volume_dirs(volume.root, uid, gid)
    return volume


def make_volume_dirs(root: Path, uid: int, gid: int) -> None:
    """The volume's ``workspace`` and ``db`` directories in ``root``, all owned by the agent."""
    for sub in ("workspace", "db"):
        (root / sub).mkdir(mode=0o755)
        os.chown(root / sub, uid, gid)
    os.chown(root, uid, gid)


@contextlib.contextmanager
def removed_on_failure(volume: Volume) -> Iterator[Volume]:
    """Undo a volume being made if the block fails (an OSError becomes a VolumeError)."""
    try:
        yield volume
    except (OSError, VolumeError) as exc:
        with contextlib.suppress(OSError, VolumeError):
            volume.remove()
        if isinstance(exc, VolumeError):
            raise
        raise VolumeError(f"cannot create volume in {volume.session_dir}: {exc}") from exc


def _make_loop_fs(volume: Volume, disk_mb: int, uid: int, gid: int) -> None:
    # fallocate (not a sparse file) so the host's free space is reserved up front: a full
    # host disk cannot surprise an agent mid-run, and the agent cannot fill the host.
    run_tool(["fallocate", "-l", f"{disk_mb}M", str(volume.image)], "allocate volume image")
    format_image(volume.image, disk_mb, uid, gid, "agentrt-" + volume.session_dir.name[-8:])
    # Where the host filesystem cannot zero a range in place (tmpfs, for one), mke2fs zeroes
    # by punching holes even with nodiscard; allocating again fills them (data untouched).
    run_tool(["fallocate", "-l", f"{disk_mb}M", str(volume.image)], "allocate volume image")
    mount_image(volume.image, volume.root)


def format_image(image: Path, disk_mb: int, uid: int, gid: int, label: str) -> None:
    """``mkfs.ext4`` on ``image``, its root owned by ``uid:gid``.

    ``nodiscard`` matters: by default mke2fs discards the whole device, which on an image
    file punches holes into it and hands a reservation straight back to the host."""
    journal = ["-J", "size=4"] if disk_mb >= _JOURNAL_MIN_MB else ["-O", "^has_journal"]
    run_tool(
        [
            "mkfs.ext4", "-q", "-F", "-m", "0", *journal, "-L", label[:16],
            "-E", f"nodiscard,lazy_itable_init=1,lazy_journal_init=1,root_owner={uid}:{gid}",
            str(image),
        ],
        "format volume image",
    )


def mount_image(image: Path | str, root: Path) -> None:
    """Mount an ext4 image file (or a loop device) at ``root``."""
    # noinit_itable: the kernel would otherwise zero the inode tables through the loop
    # device a few seconds later and punch holes in the reserved image.
    options = LOOP_MOUNT_OPTIONS if Path(image).is_file() else FS_MOUNT_OPTIONS
    run_tool(["mount", "-o", options, str(image), str(root)], "mount volume image")
    with contextlib.suppress(OSError):
        (root / "lost+found").rmdir()


def found_volume(session_dir: Path) -> Volume:
    """An existing volume as it is, to remove it: nothing is mounted (the image a kill left
    half-written, during its making or its seed copy, cannot be; removing it needs no mount)."""
    return Volume(session_dir, "loop" if (session_dir / "volume.img").exists() else "soft", 0)


def open_volume(session_dir: Path, limit_bytes: int = 0) -> Volume:
    """Re-open an existing volume (for recovery): remount a loop image that lost its mount."""
    image = session_dir / "volume.img"
    volume = Volume(session_dir, "loop" if image.exists() else "soft", limit_bytes)
    if volume.mode == "loop" and not mounted_at(volume.root) and loop_supported():
        volume.root.mkdir(exist_ok=True)
        mount_image(image, volume.root)
    return volume
