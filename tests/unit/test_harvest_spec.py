"""The harvest container's arguments (pure) and the bundle header parser."""

from __future__ import annotations

from pathlib import Path

import pytest
from docker.types import Mount

from runtime.engine.volumes import Volume
from runtime.errors import BundleRefusedError, HarvestError
from runtime.git.bundle import read_header
from runtime.git.harvest import BUNDLES_MOUNT, OUT_DIR, HarvestPlan, harvest_spec, take_file
from runtime.git.session_tree import HostTree


def plan(**kw: object) -> HarvestPlan:
    store = Path("/state/runs/r/objects/" + "a" * 40)
    tree = HostTree(Volume(Path("/state/s-1"), "loop", 1 << 20), 1000, 1000, store)
    fields: dict[str, object] = dict(session_id="s-1", base_commit="a" * 40,
                                     mounts=tuple(tree.harvest_mounts()), store=store,
                                     uid=1000, gid=1000, memory_mb=64)
    fields.update(kw)
    return HarvestPlan(**fields)  # type: ignore[arg-type]


def test_the_harvest_has_a_sessions_hardening_and_sees_only_the_tree_and_the_store() -> None:
    spec = harvest_spec(plan())
    assert spec["cap_drop"] == ["ALL"] and "no-new-privileges:true" in spec["security_opt"]
    assert spec["network_mode"] == "none" and spec["user"] == "1000:1000"
    assert spec["mem_limit"] == 256 * 1024 * 1024  # at least enough to pack a snapshot
    targets = {m["Target"]: m for m in spec["mounts"]}
    # The store at a neutral path (the harvest's uid need not reach its host path), named so
    # to the script for its alternates.
    assert set(targets) == {"/workspace", "/agentrt/objects"}
    assert targets["/agentrt/objects"]["Source"] == "/state/runs/r/objects/" + "a" * 40
    assert spec["command"][5] == "/agentrt/objects"
    assert all(m["ReadOnly"] for m in targets.values())
    assert "environment" in spec and "AGENT" not in " ".join(spec["environment"])


def test_an_engine_side_volume_replaces_the_workspace_bind_and_there_is_no_store() -> None:
    remote = Mount("/workspace", "/var/lib/docker/agentrt/s-1/volume/workspace", type="bind",
                   read_only=True)
    spec = harvest_spec(plan(store=None, mounts=(remote,)))
    assert spec["mounts"] == [remote]
    assert spec["command"][5] == ""  # no store for the script's alternates


def test_bundles_go_to_agentrts_own_directory_when_it_is_on_this_host() -> None:
    through_api = harvest_spec(plan())
    # Copied out of the container by the API.
    assert through_api["environment"]["HARVEST_BUNDLES"] == OUT_DIR
    bound = harvest_spec(plan(bundles_dir=Path("/state/harvest/s-1")))
    assert bound["environment"]["HARVEST_BUNDLES"] == BUNDLES_MOUNT
    # The script's arguments are the same either way (the Swarm exchange appends its own).
    assert bound["command"] == through_api["command"] and len(bound["command"]) == 7
    targets = {m["Target"]: m for m in bound["mounts"]}
    assert targets[BUNDLES_MOUNT]["Source"] == "/state/harvest/s-1"
    assert not targets[BUNDLES_MOUNT]["ReadOnly"]
    # Everything of the session's tree stays read-only.
    assert all(m["ReadOnly"] for t, m in targets.items() if t != BUNDLES_MOUNT)


def test_a_bound_bundle_is_taken_only_as_a_plain_file_within_the_limit(
        tmp_path: Path) -> None:
    good = tmp_path / "work.bundle"
    good.write_bytes(b"x" * 100)
    assert take_file(good, max_bytes=100) == good
    assert take_file(tmp_path / "files.bundle", max_bytes=100) is None  # not written
    with pytest.raises(HarvestError, match="over the import limit"):
        take_file(good, max_bytes=99)
    elsewhere = tmp_path / "host-secret"
    elsewhere.write_text("secret")
    link = tmp_path / "link.bundle"
    link.symlink_to(elsewhere)
    with pytest.raises(HarvestError, match="not a plain file"):
        take_file(link, max_bytes=100)
    hard = tmp_path / "hard.bundle"
    hard.hardlink_to(elsewhere)
    with pytest.raises(HarvestError, match="not a plain file"):
        take_file(hard, max_bytes=100)
    (tmp_path / "dir.bundle").mkdir()
    with pytest.raises(HarvestError, match="not a plain file"):
        take_file(tmp_path / "dir.bundle", max_bytes=100)


def test_a_writable_mount_is_refused() -> None:
    writable = Mount("/workspace", "/state/s-1/volume/workspace", type="bind", read_only=False)
    with pytest.raises(HarvestError, match="read-only"):
        harvest_spec(plan(mounts=(writable,)))


def test_root_is_refused() -> None:
    with pytest.raises(HarvestError):
        harvest_spec(plan(uid=0))


def test_a_bundle_header_is_parsed_and_a_forgery_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.bundle"
    good.write_bytes(b"# v2 git bundle\n-" + b"b" * 40 + b" base\n" + b"c" * 40
                     + b" refs/heads/work\n\nPACK....")
    header = read_header(good)
    assert header.prerequisites == ["b" * 40]
    assert header.refs == {"refs/heads/work": "c" * 40}
    for bad in (b"not a bundle", b"# v2 git bundle\nzz refs/heads/x\n\nPACK",
                b"# v2 git bundle\n-nothex base\n\nPACK", b"# v2 git bundle\n" + b"x" * 70000):
        path = tmp_path / "bad.bundle"
        path.write_bytes(bad)
        with pytest.raises(BundleRefusedError):
            read_header(path)
