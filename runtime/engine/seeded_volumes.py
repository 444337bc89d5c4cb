"""Loop volumes that start as a copy of a seed image instead of an empty file system.

A run of several sessions on one base checks the base out once, into a *seed*: a sparse ext4
image of the sessions' size (:mod:`runtime.git.seed_image`). Each session's volume is then a
fully allocated image (the same reservation as :func:`runtime.engine.volumes.create_volume`)
into which only the seed's data blocks are copied: about 35 MB for a 2,000-file, 25 MB
repository, instead of a ``git checkout`` writing and hashing every file again.

The copy goes *through* the volume's loop device with ``O_DIRECT``: attaching a loop device
to a file with dirty pages makes the kernel write them to disk first (~70 ms here), while
the blocks written through the device land in the image's page cache like any write of the
mounted file system, and are never forced to the disk (the volume is mounted without
barriers and deleted once its work is home).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

from runtime.crash_points import crash_point
from runtime.engine.volumes import (
    Volume,
    format_image,
    make_volume_dirs,
    mount_image,
    removed_on_failure,
    run_tool,
)
from runtime.errors import VolumeError

#: The copy's unit: a page-aligned buffer (O_DIRECT needs aligned memory and lengths).
CHUNK = 4 * 1024 * 1024
_SECTOR = 512


def make_seed_fs(image: Path, root: Path, disk_mb: int, uid: int, gid: int) -> None:
    """A sparse ext4 image of ``disk_mb`` MiB mounted at ``root``, with the volume's
    ``workspace`` and ``db`` directories owned by ``uid:gid``. Only what is written into it
    takes space (the holes are what sessions need not copy)."""
    with open(image, "wb") as handle:
        handle.truncate(disk_mb * 1024 * 1024)
    format_image(image, disk_mb, uid, gid, "agentrt-seed")
    root.mkdir(mode=0o755, exist_ok=True)
    mount_image(image, root)
    make_volume_dirs(root, uid, gid)


def data_extents(fd: int) -> Iterator[tuple[int, int]]:
    """The ``(start, end)`` byte ranges of a file that hold data (``SEEK_DATA``/``SEEK_HOLE``;
    allocated-but-unwritten ranges read as holes on ext4)."""
    size = os.fstat(fd).st_size
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after offset
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end
        offset = end


def copy_data_blocks(seed: Path, device: str) -> None:
    """Write every data range of ``seed`` at the same offset of ``device`` (O_DIRECT)."""
    buffer = mmap.mmap(-1, CHUNK)
    view = memoryview(buffer)
    source = os.open(seed, os.O_RDONLY)
    try:
        target = os.open(device, os.O_WRONLY | os.O_DIRECT)
        try:
            for start, end in data_extents(source):
                offset = start
                while offset < end:
                    length = min(CHUNK, end - offset)
                    if length % _SECTOR or offset % _SECTOR:
                        raise VolumeError(f"seed {seed}: data range not sector-aligned")
                    got = os.preadv(source, [view[:length]], offset)
                    if got != length:
                        raise VolumeError(f"seed {seed}: short read at {offset}")
                    os.pwritev(target, [view[:length]], offset)
                    offset += length
        finally:
            os.close(target)
    finally:
        os.close(source)
        view.release()
        buffer.close()


def create_volume_from_seed(session_dir: Path, disk_mb: int, uid: int, gid: int,
                            seed: Path) -> Volume:
    """A loop volume of ``disk_mb`` MiB (fully allocated) whose file system is a copy of
    ``seed``; mounted like any loop volume. Undo on failure."""
    size = disk_mb * 1024 * 1024
    volume = Volume(session_dir, "loop", size)
    with removed_on_failure(volume):
        if seed.stat().st_size != size:
            raise VolumeError(f"seed {seed} is not {disk_mb} MiB")
        session_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        volume.root.mkdir(mode=0o755)
        fd = os.open(volume.image, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)  # the host's space, reserved up front
        finally:
            os.close(fd)
        device = run_tool(["losetup", "-f", "--show", str(volume.image)],
                          "attach volume image").strip()
        try:
            crash_point("seed copy")
            copy_data_blocks(seed, device)
            mount_image(device, volume.root)
        finally:
            # Detaching a mounted device only marks it to go with its last unmount (as
            # `mount -o loop` does), so Volume.remove needs nothing new.
            run_tool(["losetup", "-d", device], f"detach {device}")
    return volume
