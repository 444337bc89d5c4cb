"""A loop volume takes its ``disk_mb`` from the host when it is made, and admission measures
the filesystem the volumes actually go to."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.config import ResourceLimits, RunConfig, Task
from runtime.engine.volumes import VOLUMES_DIR_ENV, create_volume, loop_supported, volumes_root
from runtime.errors import AdmissionError

MIB = 1024 * 1024

needs_loop = pytest.mark.skipif(not loop_supported(),
                                reason="loop volumes need root, mkfs.ext4 and a loop device")


def allocated(path: Path) -> int:
    """Bytes of host disk the file occupies (not its apparent size)."""
    return os.stat(path).st_blocks * 512


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs: a filesystem with far less room than the one holding tmp_path."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mountpoint)],
                   check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@needs_loop
def test_a_volume_holds_its_disk_mb_of_host_blocks_for_its_whole_life(tmp_path: Path) -> None:
    volume = create_volume(tmp_path / "sessions" / "t-abc123", 100, 1000, 1000)
    try:
        assert volume.mode == "loop"
        assert allocated(volume.image) >= 100 * MIB
        du = subprocess.run(["du", "-k", str(volume.image)], capture_output=True, text=True,
                            check=True).stdout.split()[0]
        assert int(du) * 1024 >= 100 * MIB
        # Space the agent frees inside the volume stays reserved on the host.
        scratch = volume.workspace / "scratch"
        scratch.write_bytes(b"x" * (20 * MIB))
        scratch.unlink()
        os.sync()
        assert allocated(volume.image) >= 100 * MIB
    finally:
        volume.remove()
    assert not volume.session_dir.exists()


@needs_loop
def test_volumes_go_where_agentrt_volumes_dir_says(tmp_path: Path, small_fs: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    state_dir = tmp_path / "repo" / ".git" / "agentrt"
    monkeypatch.setenv(VOLUMES_DIR_ENV, str(small_fs))
    root = volumes_root(state_dir, None)
    assert root.parent == small_fs
    volume = create_volume(root / "sessions" / "t-abc123", 32, 1000, 1000)
    try:
        assert volume.image.is_relative_to(small_fs)
        assert allocated(volume.image) >= 32 * MIB
    finally:
        volume.remove()


@needs_loop
@pytest.mark.docker
def test_admission_counts_the_free_space_where_volumes_live(
    tmp_path: Path, small_fs: Path, docker_client: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.backends.docker.admission import check_admission

    state_dir = tmp_path / "repo" / ".git" / "agentrt"
    tasks = [Task(id="big", command=["true"])]
    limits = ResourceLimits(memory_mb=64, disk_mb=100)
    monkeypatch.delenv(VOLUMES_DIR_ENV, raising=False)
    # The state directory's disk has room: without a volumes dir the run is admitted.
    check_admission(docker_client, RunConfig(resource_limits=limits), tasks,  # type: ignore[arg-type]
                    state_dir)
    for config, env in ((RunConfig(resource_limits=limits, volumes_dir=small_fs), None),
                        (RunConfig(resource_limits=limits), str(small_fs))):
        with contextlib.ExitStack() as stack:
            if env:
                stack.enter_context(monkeypatch.context()).setenv(VOLUMES_DIR_ENV, env)
            with pytest.raises(AdmissionError) as refused:
                check_admission(docker_client, config, tasks, state_dir)  # type: ignore[arg-type]
        assert str(small_fs) in str(refused.value)
        assert "need 100 MB" in str(refused.value)


@needs_loop
def test_the_loop_devices_of_an_image_are_found_without_losetup(tmp_path: Path) -> None:
    from runtime.engine.volumes import loops_of

    image = tmp_path / "img"
    subprocess.run(["fallocate", "-l", "8M", str(image)], check=True)
    assert loops_of(image) == []
    device = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True,
                            text=True, check=True).stdout.strip()
    try:
        assert loops_of(image) == [device]
        # The same answer as losetup's own.
        listed = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True,
                                check=True).stdout
        assert [line.split(":", 1)[0] for line in listed.splitlines()] == [device]
    finally:
        subprocess.run(["losetup", "-d", device], check=True)
    assert loops_of(image) == []
