"""The harvest container's arguments (pure) and the bundle header parser."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from docker.types import Mount

from runtime.backends.docker.trees import HostTree
from runtime.engine.volumes import Volume
from runtime.errors import BundleRefusedError, HarvestError
from runtime.git.bundle import read_header
from runtime.git.harvest import (
    BUNDLES_DIR,
    OUT_DIR,
    SCRATCH_DIR,
    HarvestPlan,
    harvest_spec,
    take_file,
)


def plan(**kw: object) -> HarvestPlan:
    store = Path("/state/runs/r/objects/" + "a" * 40)
    tree = HostTree(Volume(Path("/state/s-1"), "loop", 1 << 20), 1000, 1000, store)
    fields: dict[str, object] = dict(session_id="s-1", base_commit="a" * 40,
                                     mounts=tuple(tree.harvest_mounts()), store=store,
                                     uid=1000, gid=1000, memory_mb=64)
    fields.update(kw)
    return HarvestPlan(**fields)  # type: ignore[arg-type]


def test_the_harvest_has_a_sessions_hardening_and_sees_only_the_tree_and_the_store() -> None:
    spec = harvest_spec(plan(), max_bytes=100 * 1024 * 1024)
    assert spec["cap_drop"] == ["ALL"] and "no-new-privileges:true" in spec["security_opt"]
    # A uid the agent never had, whose only privilege is reading the agent's files.
    assert spec["user"] == "0:0" and spec["cap_add"] == ["DAC_READ_SEARCH"]
    assert spec["network_mode"] == "none" and spec["read_only"] is True
    assert spec["nano_cpus"] == 1_000_000_000 and spec["pids_limit"] == 256
    # Memory: the floor, plus the two tmpfs whose pages it is charged for.
    assert spec["mem_limit"] == (256 + 101 + 100) * 1024 * 1024
    assert spec["tmpfs"] == {SCRATCH_DIR: "size=100m,mode=0700",
                             BUNDLES_DIR: "size=101m,mode=0700"}
    targets = {m["Target"]: m for m in spec["mounts"]}
    # The store at a neutral path (the harvest's uid need not reach its host path), named so
    # to the script for its alternates; the out directory an anonymous volume.
    assert set(targets) == {"/workspace", "/agentrt/objects", OUT_DIR}
    assert targets["/agentrt/objects"]["Source"] == "/state/runs/r/objects/" + "a" * 40
    assert spec["command"][5] == "/agentrt/objects"
    assert all(m["ReadOnly"] for t, m in targets.items() if t != OUT_DIR)
    # The out directory is an anonymous volume of the container, not a host directory.
    assert targets[OUT_DIR]["Type"] == "volume" and not targets[OUT_DIR].get("Source")
    env = spec["environment"]
    assert env["PATH"] == "/usr/sbin:/usr/bin:/sbin:/bin" and env["GIT_NO_LAZY_FETCH"] == "1"
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["HOME"].startswith(SCRATCH_DIR)
    assert "AGENT" not in " ".join(env)


def test_the_scratch_follows_the_plan_and_has_a_floor() -> None:
    assert harvest_spec(plan(scratch_mb=300), 1 << 20)["tmpfs"][SCRATCH_DIR].startswith("size=300m")
    assert harvest_spec(plan(), 1 << 20)["tmpfs"][SCRATCH_DIR].startswith("size=64m")


def test_an_engine_side_volume_replaces_the_workspace_bind_and_there_is_no_store() -> None:
    remote = Mount("/workspace", "/var/lib/docker/agentrt/s-1/volume/workspace", type="bind",
                   read_only=True)
    spec = harvest_spec(plan(store=None, mounts=(remote,)))
    assert spec["mounts"][0] == remote and len(spec["mounts"]) == 2
    assert spec["command"][5] == ""  # no store for the script's alternates


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


def test_an_agent_that_ran_as_root_is_refused() -> None:
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


def test_a_fifo_or_device_is_refused_at_once_and_a_file_copied_as_data(tmp_path: Path) -> None:
    fifo = tmp_path / "work.bundle"
    os.mkfifo(fifo)  # nobody ever writes to it: a blocking open would wait forever
    began = time.monotonic()
    with pytest.raises(HarvestError, match="a FIFO"):
        take_file(fifo, max_bytes=100, dest=tmp_path / "copy")
    assert time.monotonic() - began < 2
    with pytest.raises(HarvestError, match="a device"):
        take_file(Path("/dev/zero"), max_bytes=100, dest=tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
    good = tmp_path / "good.bundle"
    good.write_bytes(b"y" * 50)
    assert take_file(good, max_bytes=100, dest=tmp_path / "copy") == tmp_path / "copy"
    assert (tmp_path / "copy").read_bytes() == b"y" * 50
    assert (tmp_path / "copy").stat().st_mode & 0o777 == 0o600


def test_a_checkout_writes_every_added_or_changed_path_of_a_blob() -> None:
    from runtime.git.bundle import written_blobs

    z, a, b, c = "0" * 40, "a" * 40, "b" * 40, "c" * 40
    entries = [f":000000 100644 {z} {a} A", "one", f":000000 100644 {z} {a} A", "two",
               f":100644 100644 {b} {c} M", "changed", f":100644 000000 {b} {z} D", "gone",
               f":000000 160000 {z} {c} A", "sub"]
    assert written_blobs(("\0".join(entries) + "\0").encode()) == [a, a, c]
    assert written_blobs(b"") == []


def test_every_form_of_a_secret_is_redacted_by_name() -> None:
    import base64

    from runtime.git.bundle import redact_secrets, secret_needles

    value = "hunter2-" + "x" * 12
    hexed, b64 = value.encode().hex(), base64.b64encode(value.encode()).decode()
    assert hexed.encode() in secret_needles(value)
    text = f"fsck: update = !{value}; hex {hexed} {hexed.upper()}; b64 {b64}"
    clean = redact_secrets(text, {"TOKEN": value})
    assert value not in clean and hexed not in clean.lower() and b64[:16] not in clean
    assert clean.count("[REDACTED:TOKEN]") >= 4
    assert redact_secrets("short ab", {"S": "ab"}) == "short ab"  # under 4 characters: kept
