"""Engine-side volumes (runtime/engine/engine_volumes.py) on an engine that does not share our disk.

The dind engine (tests/integration/dind.py) is a real second dockerd whose data root is a
tmpfs inside its own container: a volume made there is a loop-mounted image on *its* host,
never a file, mount or path of the test process. The same create / ENOSPC test also runs on
the local engine.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import docker
import pytest

from runtime.engine import engine_volumes as ev
from runtime.errors import WorkspaceError
from runtime.git import engine_checkout
from tests.conftest import git, make_repo
from tests.integration.dind import DindEngine

pytestmark = pytest.mark.docker

MIB = 1024 * 1024
IMAGE = "agentrt/base:latest"


def session_id() -> str:
    return f"evtest-{secrets.token_hex(4)}"


def run(client: docker.DockerClient, script: str, *, mounts: list[Any], user: str = "1000:1000",
        read_only: bool = True) -> tuple[int, str]:
    """Run ``sh -c script`` as an agent would (no capabilities, no network); exit and output."""
    container = client.containers.create(
        IMAGE, ["sh", "-c", script], user=user, cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"], network_mode="none", read_only=read_only,
        tmpfs={"/tmp": "rw,size=16m"}, mounts=mounts, working_dir="/")
    try:
        container.start()
        code = int(container.wait(timeout=120)["StatusCode"])
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


FILL = r"""
dd if=/dev/zero of=/workspace/fill bs=1M 2>/tmp/dd.err; echo "dd-exit $?"
cat /tmp/dd.err
echo "size $(stat -c %s /workspace/fill)"
dd if=/dev/zero of=/agentrt/db/more bs=4k 2>&1 | grep -q "No space left" && echo db-full
df -Pk /workspace | tail -1
grep ' /workspace ' /proc/self/mounts
"""


def fill_until_enospc(client: docker.DockerClient, volume: ev.EngineVolume) -> int:
    """A writer as uid 1000 fills the volume; it must stop on ENOSPC near disk_mb. Its size."""
    code, out = run(client, FILL, mounts=volume.mounts())
    assert code == 0, out
    assert "No space left on device" in out, out
    assert "dd-exit 1" in out and "db-full" in out, out
    assert re.search(r"^/dev/loop\d+ /workspace ext4 .*nosuid,nodev", out, re.M), out
    size = int(re.search(r"^size (\d+)$", out, re.M).group(1))  # type: ignore[union-attr]
    # ext4's own overhead (journal, inode tables) comes out of disk_mb: 64 MiB holds ~53 MiB.
    assert 48 * MIB <= size <= 64 * MIB, out
    return size


def blocks_of_image(client: docker.DockerClient, volume: ev.EngineVolume) -> int:
    """Bytes of the engine host's disk the image occupies (its blocks, not its length),
    measured by ``du`` in a container on that engine."""
    assert volume.session_dir is not None
    code, out = run(client, "du -k /s/volume.img; stat -c '%b %B' /s/volume.img",
                    mounts=[docker.types.Mount("/s", volume.session_dir, type="bind",
                                               read_only=True)], user="0:0")
    assert code == 0, out
    du_kib = int(out.split()[0])
    blocks, unit = (int(x) for x in out.splitlines()[1].split())
    assert du_kib * 1024 == blocks * unit, out
    return du_kib * 1024


def host_view(sid: str, dirs: list[Path]) -> dict[str, Any]:
    """What the test process sees of session ``sid``: mounts, loop devices, and listings."""
    mounts = [line for line in Path("/proc/mounts").read_text().splitlines() if sid in line]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False)
    listings = {}
    for d in dirs:
        listings[str(d)] = sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() \
            else None
    return {"mounts": mounts, "loops": [x for x in loops.stdout.splitlines() if sid in x],
            "listings": listings}


def test_dind_engine_volume_is_a_loop_image_on_that_engine_and_only_there(
        dind_engine: DindEngine, docker_client: docker.DockerClient, repo: Path,
        tmp_path: Path) -> None:
    dind = dind_engine.client
    sid = session_id()
    local_state = Path(docker_client.info()["DockerRootDir"]) / "agentrt"
    watched = [repo / ".git", local_state, Path("/var/lib/agentrt")]
    git(repo, "branch", "agent/t/abc123")
    commit = git(repo, "rev-parse", "HEAD").strip()
    before = host_view(sid, watched)
    assert before["mounts"] == [] and before["loops"] == []

    assert ev.engine_volume_mode(dind) == "loop"
    volume = ev.create_engine_volume(dind, sid, 64, 1000, 1000)
    try:
        # The engine's own host: its data root is the dind container's tmpfs.
        assert volume.mode == "loop" and volume.root == (
            f"{dind.info()['DockerRootDir']}/agentrt/sessions/{sid}/volume")
        inside = dind_engine.exec(f"grep ' {volume.root} ' /proc/mounts; losetup -a")
        assert re.search(rf"^/dev/loop\d+ {volume.root} ext4 rw,nosuid,nodev,noatime", inside,
                         re.M), inside
        assert f"/sessions/{sid}/volume.img" in inside
        # A kernel loop device is global: the test process sees it, but its backing file and
        # its mount are not on this side.
        during = host_view(sid, watched)
        assert during["mounts"] == [] and during["listings"] == before["listings"]
        assert len(during["loops"]) == 1, during
        assert volume.session_dir is not None and not Path(volume.session_dir).exists()
        assert [v.session_id for v in ev.list_engine_volumes(dind, sid)] == [sid]

        assert blocks_of_image(dind, volume) >= 64 * MIB

        # The base's files, checked out as the agent's uid from a bundle made on this side.
        bundle = engine_checkout.create_base_bundle(repo / ".git", "agent/t/abc123", commit,
                                       tmp_path / "base.bundle")
        engine_checkout.checkout_in_engine(dind, volume, bundle, "agent/t/abc123", commit, 1000, 1000)
        bundle.unlink()
        code, out = run(dind, "cd /workspace && git log -1 --format=%H && git status "
                        "--porcelain && git symbolic-ref HEAD && stat -c '%u:%g %n' README.md "
                        "src/app.py .git && cat src/app.py", mounts=volume.mounts())
        assert code == 0, out
        assert out.splitlines() == [commit, "refs/heads/agent/t/abc123", "1000:1000 README.md",
                                    "1000:1000 src/app.py", "1000:1000 .git", "print('hi')"]

        fill_until_enospc(dind, volume)
        used, free = ev.engine_volume_usage(dind, volume)
        assert used >= 48 * MIB and free < MIB
    finally:
        ev.remove_engine_volume(dind, volume)

    inside = dind_engine.exec(f"cat /proc/mounts; losetup -a; ls -A {volume.session_dir.rsplit('/', 1)[0]}")
    assert sid not in inside, inside
    assert ev.list_engine_volumes(dind, sid) == []
    assert [c.name for c in dind.containers.list(all=True)] == []  # helpers are gone too
    after = host_view(sid, watched)
    assert after == before
    ev.remove_engine_volume(dind, volume)  # idempotent


def test_local_engine_volume_gets_enospc_at_disk_mb(docker_client: docker.DockerClient) -> None:
    sid = session_id()
    assert ev.engine_volume_mode(docker_client) == "loop"
    volume = ev.create_engine_volume(docker_client, sid, 64, 1000, 1000)
    try:
        assert os.path.ismount(volume.root)  # this engine's host is ours
        assert blocks_of_image(docker_client, volume) >= 64 * MIB
        fill_until_enospc(docker_client, volume)
    finally:
        ev.remove_engine_volume(docker_client, volume)
    assert not Path(volume.root).parent.exists()
    assert sid not in Path("/proc/mounts").read_text()
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False)
    assert sid not in loops.stdout
    assert ev.list_engine_volumes(docker_client, sid) == []


def test_soft_engine_volume_is_a_named_volume_measured_not_limited(
        dind_engine: DindEngine) -> None:
    dind = dind_engine.client
    sid = session_id()
    volume = ev.create_engine_volume(dind, sid, 8, 1000, 1000, mode="soft",
                                     labels={"agentrt.repo": "/r"})
    try:
        assert volume.mode == "soft" and volume.root.endswith(f"/{volume.name}/_data")
        code, out = run(dind, "head -c 12582912 /dev/zero > /workspace/big && echo ok; "
                        "echo db > /agentrt/db/x && echo db-ok", mounts=volume.mounts())
        assert code == 0 and "ok" in out and "db-ok" in out, out  # no kernel limit: soft
        used, free = ev.engine_volume_usage(dind, volume)
        assert used >= 12 * MIB and free == 0
        assert [v.mode for v in ev.list_engine_volumes(dind, sid)] == ["soft"]
        assert dind.volumes.get(volume.name).attrs["Labels"]["agentrt.repo"] == "/r"
    finally:
        ev.remove_engine_volume(dind, volume)
    assert ev.list_engine_volumes(dind, sid) == []
    assert sid not in dind_engine.exec("ls -A /var/lib/docker/volumes")


def test_checkout_refuses_a_bundle_whose_branch_is_not_the_commit(
        docker_client: docker.DockerClient, tmp_path: Path) -> None:
    source = make_repo(tmp_path / "src")
    first = git(source, "rev-parse", "HEAD").strip()
    git(source, "commit", "-q", "--allow-empty", "-m", "second")
    git(source, "branch", "agent/t/def456")
    bundle = tmp_path / "b.bundle"
    git(source, "bundle", "create", "-q", str(bundle), "refs/heads/agent/t/def456")
    with pytest.raises(WorkspaceError, match="not"):
        engine_checkout.create_base_bundle(source / ".git", "agent/t/def456", first, tmp_path / "x.bundle")
    volume = ev.create_engine_volume(docker_client, session_id(), 16, 1000, 1000)
    try:
        with pytest.raises(WorkspaceError, match="agentrt-checkout: the bundle's"):
            engine_checkout.checkout_in_engine(docker_client, volume, bundle, "agent/t/def456", first,
                                  1000, 1000)
    finally:
        ev.remove_engine_volume(docker_client, volume)
