"""The harvest obeys nothing the agent wrote, and writes only into size-capped places.

Each attack is planted by a real agent in a real session; the harvest of its kept tree is then
run again by hand (the library's :func:`runtime.git.harvest.run_harvest`) to read its log, next
to a control: the command the harvest used to run (git with the agent's git dir as its
repository) does execute the agent's program.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import docker.types
import pytest

from runtime.backends.docker.trees import HostTree
from runtime.backends.recovery import collect_garbage
from runtime.config import ResourceLimits
from runtime.engine.discovery import get_client
from runtime.engine.volumes import open_volume
from runtime.git.harvest import HARVEST_IMAGE, HarvestPlan, run_harvest
from runtime.git.object_store import ensure_store
from runtime.git.safe_git import MainRepo
from runtime.models import SessionResult, SessionStatus, WorkState
from tests.conftest import git
from tests.integration.helpers import by_task, run_tasks, sh

pytestmark = pytest.mark.docker

CANARY = "AGENTRT-PWNED"
MISSING = "0123456789abcdef0123456789abcdef01234567"

# A promisor remote over ssh with the agent's own sshCommand, a HEAD at a commit nobody has
# (git's lazy fetch runs the sshCommand to get it), plus fsmonitor, hooks and a clean filter,
# and a `git` of its own at the top of its tree: every program says CANARY and tries to write.
HOSTILE = f"""
cat > /workspace/payload.sh <<'EOS'
#!/bin/sh
echo {CANARY} >&2
for d in /agentrt-harvest /agentrt-bundles /agentrt-out /var/tmp /tmp; do
  head -c 1048576 /dev/zero > "$d/{CANARY}" 2>/dev/null
done
exit 1
EOS
chmod 755 /workspace/payload.sh
cp /workspace/payload.sh /workspace/git
git config extensions.partialClone origin
git config remote.origin.url ssh://example.invalid/x.git
git config remote.origin.promisor true
git config remote.origin.partialclonefilter blob:none
git config core.sshCommand /workspace/payload.sh
git config core.fsmonitor /workspace/payload.sh
git config core.hooksPath /workspace
git config filter.x.clean /workspace/payload.sh
git config filter.x.required true
echo '* filter=x' > .gitattributes
echo mine > mine.txt
echo {MISSING} > .git/refs/heads/$AGENT_BRANCH
"""


def kept_session(repo: Path, report_id: str) -> tuple[Path, Path]:
    session_dir = repo / ".git/agentrt/sessions" / report_id
    return session_dir, session_dir / "volume" / "workspace"


def test_the_harvest_runs_none_of_the_agents_programs(repo: Path) -> None:
    base = git(repo, "rev-parse", "HEAD").strip()
    report = run_tasks(repo, [sh("hostile", HOSTILE)], cleanup_on_complete=False)
    client = get_client()
    try:
        result = by_task(report)["hostile"]
        assert result.status is SessionStatus.SUCCEEDED, result.reason
        # The agent's HEAD (a commit nobody has) is refused; its files come home as a snapshot.
        assert result.work is WorkState.HOME, result.warnings
        assert any("could not be imported" in w for w in result.warnings), result.warnings
        tree = git(repo, "ls-tree", "-r", "--name-only", result.head_commit or "").split()
        assert "mine.txt" in tree
        session_dir, workspace = kept_session(repo, result.id)
        tree = HostTree(open_volume(session_dir), 1000, 1000,
                        ensure_store(MainRepo(repo), report.run_id, base))
        mounts = tuple(tree.harvest_mounts())
        plan = HarvestPlan(session_id=result.id + "-again", base_commit=base, mounts=mounts,
                           store=tree.store, uid=1000, gid=1000, memory_mb=256)
        dest = session_dir / "again"
        harvest = run_harvest(client, plan, dest, max_bytes=64 * 1024 * 1024)
        assert CANARY not in harvest.log, harvest.log
        assert harvest.head_unreadable and "work.bundle" in harvest.bundles
        # Control: git with the agent's git dir as its repository (what the harvest ran before)
        # runs the agent's sshCommand (the lazy fetch of the missing commit).
        output = client.containers.run(
            HARVEST_IMAGE, ["sh", "-c", "git --git-dir=/workspace/.git rev-parse --verify -q "
                            "'HEAD^{commit}'; true"],
            user="1000:1000", network_mode="none", remove=True, stderr=True, stdout=True,
            environment={"HOME": "/tmp", "GIT_CONFIG_NOSYSTEM": "1"},
            mounts=list(mounts), tmpfs={"/tmp": "size=8m"}).decode(errors="replace")
        assert CANARY in output, f"control: the attack is not real: {output}"
    finally:
        collect_garbage(MainRepo(repo), client)


def test_work_larger_than_the_harvests_scratch_is_refused_not_retried(repo: Path) -> None:
    """100 MiB of uncommitted random data and a 64 MiB scratch: the harvest stops at its tmpfs
    and says the work is too large (a retry would fail the same way), not unreadable."""
    from runtime.errors import HarvestTooLargeError

    base = git(repo, "rev-parse", "HEAD").strip()
    limits = ResourceLimits(memory_mb=256, cpu_percent=100, time_seconds=120, disk_mb=256,
                            pids=128)
    report = run_tasks(repo, [sh("big", "head -c 104857600 /dev/urandom > big.bin; false")],
                       resource_limits=limits, cleanup_on_complete=False, max_import_mb=1024,
                       max_file_mb=1024)
    client = get_client()
    try:
        result = by_task(report)["big"]
        session_dir, _workspace = kept_session(repo, result.id)
        tree = HostTree(open_volume(session_dir), 1000, 1000,
                        ensure_store(MainRepo(repo), report.run_id, base))
        plan = HarvestPlan(session_id=result.id + "-small", base_commit=base,
                           mounts=tuple(tree.harvest_mounts()), store=tree.store, uid=1000,
                           gid=1000, memory_mb=256, scratch_mb=64)
        with pytest.raises(HarvestTooLargeError):
            run_harvest(client, plan, session_dir / "small", max_bytes=1024 * 1024 * 1024)
        # Control: with the session's own scratch (its disk_mb) the same tree is harvested.
        plan = HarvestPlan(session_id=result.id + "-fits", base_commit=base,
                           mounts=tuple(tree.harvest_mounts()), store=tree.store, uid=1000,
                           gid=1000, memory_mb=256, scratch_mb=256)
        assert "work.bundle" in run_harvest(client, plan, session_dir / "fits",
                                            max_bytes=1024 * 1024 * 1024).bundles
    finally:
        collect_garbage(MainRepo(repo), client)


def test_a_bundle_over_the_import_limit_fills_nothing_and_is_refused(repo: Path) -> None:
    # 40 MiB of incompressible uncommitted data with max_import_mb = 8: the bundle cannot be
    # written past its tmpfs; nothing lands in agentrt's state directory.
    script = "head -c 41943040 /dev/urandom > big.bin"
    state = repo / ".git" / "agentrt"
    report = run_tasks(repo, [sh("big", script)], max_import_mb=8, max_file_mb=100)
    result = by_task(report)["big"]
    assert result.work is WorkState.REFUSED, result.warnings
    assert any("import limit" in w for w in result.warnings), result.warnings
    assert report.exit_code() == 1
    harvest_dirs = list((state / "harvest").glob("*")) if (state / "harvest").exists() else []
    assert not harvest_dirs


def test_a_secret_fsck_would_quote_is_refused_by_name_before_fsck_speaks(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = "fsck-quoted-" + os.urandom(8).hex()
    monkeypatch.setenv("AGENTRT_TEST_TOKEN", value)
    modules = '[submodule "x"]\n\tpath = x\n\turl = https://example.invalid/x\n\tupdate = !'
    script = (f"printf '%s%s\\n' '{modules}' \"$AGENTRT_TEST_TOKEN\" > .gitmodules && "
              "git add -A && git commit -qm modules")
    base = git(repo, "rev-parse", "HEAD").strip()
    report = run_tasks(repo, [sh("modules", script, secrets=["AGENTRT_TEST_TOKEN"])])
    result = by_task(report)["modules"]
    assert result.work is WorkState.REFUSED, result.warnings
    assert report.exit_code() == 1
    assert any("AGENTRT_TEST_TOKEN" in w for w in result.warnings), result.warnings
    assert value not in report.model_dump_json()
    assert git(repo, "rev-parse", result.branch).strip() == base
    state = repo / ".git" / "agentrt"
    holding = [p for p in state.rglob("*") if p.is_file() and value.encode() in p.read_bytes()]
    assert not holding, holding
    assert not list(state.rglob("*.bundle")), "a bundle holding a secret is deleted"
    # Control: fsck itself quotes the value (what reached the report and state.db before).
    scratch = tmp_path / "scratch"
    git(tmp_path, "init", "-q", str(scratch))
    (scratch / ".gitmodules").write_text(f"{modules}{value}\n")
    git(scratch, "add", "-A")
    git(scratch, "commit", "-qm", "modules")
    git(scratch, "bundle", "create", "-q", str(tmp_path / "b.bundle"), "HEAD")
    raw = (tmp_path / "b.bundle").read_bytes()
    strict = subprocess.run(["git", "-C", str(scratch), "index-pack", "--strict", "--stdin"],
                            input=raw[raw.index(b"PACK"):], capture_output=True, check=False)
    assert value in strict.stderr.decode(errors="replace"), strict.stderr


def test_state_and_logs_are_private(repo: Path) -> None:
    report = run_tasks(repo, [sh("a", "echo hello")])
    assert by_task(report)["a"].work is WorkState.HOME
    state = repo / ".git" / "agentrt"
    assert state.stat().st_mode & 0o777 == 0o700
    private = [p for p in state.rglob("*") if p.is_file() and not p.is_symlink()
               and (p.name.startswith("state.db") or p.suffix in (".log", ".bundle"))]
    assert any(p.name == "state.db" for p in private) and any(p.suffix == ".log" for p in private)
    for path in private:
        assert path.stat().st_mode & 0o077 == 0, (path, oct(path.stat().st_mode))


def refused(repo: Path, name: str, script: str, disk_mb: int, **run: Any
            ) -> tuple[SessionResult, list[Path]]:
    """Run ``script`` as task ``name``; its result, refused, and the bundles kept for it."""
    limits = ResourceLimits(memory_mb=512, cpu_percent=100, time_seconds=300, disk_mb=disk_mb,
                            pids=128)
    result = by_task(run_tasks(repo, [sh(name, script)], resource_limits=limits, **run))[name]
    assert result.work is WorkState.REFUSED, result.warnings
    return result, list((repo / ".git/agentrt/harvest" / result.id).glob("rejected-*.bundle"))


def test_a_small_bundle_that_expands_past_max_import_mb_is_refused(repo: Path) -> None:
    # 24 files of 8 MiB of zeros (each different by its first line): the bundle is ~200 KiB,
    # every blob is under max_file_mb, but the objects expand to 192 MiB.
    script = ("for i in $(seq 1 24); do { echo $i; head -c 8388608 /dev/zero; } > z$i.bin; "
              "done; git add -A; git commit -qm zeros")
    base = git(repo, "rev-parse", "HEAD").strip()
    result, kept = refused(repo, "zeros", script, 400, max_import_mb=16, max_file_mb=10)
    assert any("expand to more than max_import_mb=16" in w for w in result.warnings)
    assert git(repo, "rev-parse", result.branch).strip() == base
    # Control: the bundle itself is far under the limit (its compressed size is not the cap).
    assert kept and all(p.stat().st_size < 2 * 1024 * 1024 for p in kept), kept


def test_a_hardlink_checkout_bomb_is_refused_before_any_merge(repo: Path) -> None:
    # One 1 MiB file at 300 paths: 300 MiB once checked out, from a 64 MiB volume.
    script = ("{ echo one; head -c 1048575 /dev/zero; } > f0; "
              "for i in $(seq 1 299); do ln f0 f$i; done; git add -A; git commit -qm links")
    main_before = git(repo, "rev-parse", "main").strip()
    result, kept = refused(repo, "links", script, 64, merge="auto")
    assert any("once checked out" in w and "over the 128 MiB" in w for w in result.warnings)
    assert git(repo, "rev-parse", "main").strip() == main_before
    assert not (repo / "f299").exists()
    # Control: the agent's volume did hold all 300 paths (the hardlinks share one inode),
    # and the pack is tiny: neither the bundle nor the file size caps see it.
    assert kept and kept[0].stat().st_size < 1024 * 1024


def test_the_secrets_mount_is_held_by_the_sessions_disk_quota(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_TEST_TOKEN", "quota-" + os.urandom(6).hex())
    script = ("head -c 209715200 /dev/zero > /run/agentrt/fill 2>/dev/null; "
              "s=$(stat -c %s /run/agentrt/fill); rm -f /run/agentrt/fill; echo $s > size.txt")
    report = run_tasks(repo, [sh("fill", script, secrets=["AGENTRT_TEST_TOKEN"])])
    result = by_task(report)["fill"]
    assert result.work is WorkState.HOME, result.warnings
    size = int(git(repo, "show", f"{result.branch}:size.txt").strip())
    # Control: the mount is writable (the entry point deletes the file there), so bytes landed;
    # the 64 MiB volume's quota stopped them, not 200 MiB on the host's disk.
    assert 0 < size < 64 * 1024 * 1024, size


def test_the_egress_proxy_logs_no_query_string(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runtime.engine.egress as egress

    token = "tok-" + os.urandom(6).hex()
    real_remove = egress.remove_run_egress
    kept: list[str] = []
    monkeypatch.setattr(egress, "remove_run_egress",
                        lambda client, run_id: kept.append(run_id) or [])
    urls = [f"http://example.com/x?token={token}", f"http://refused.invalid/y?token={token}"]
    fetch = ("import urllib.request, sys\n"
             "for url in sys.argv[1:]:\n"
             "    try: urllib.request.urlopen(url, timeout=5)\n"
             "    except Exception as e: print(type(e).__name__)\n")
    script = f"python3 -c {shlex.quote(fetch)} {' '.join(urls)} > out.txt 2>&1; true"
    report = run_tasks(repo, [sh("q", script, network="allowlist",
                                 egress_allow=["example.com"])])
    client = get_client()
    try:
        proxies = client.containers.list(all=True, filters={
            "label": ["agentrt.role=egress", f"agentrt.run={report.run_id}"]})
        assert proxies, "the run's proxy"
        logs = "".join(c.logs().decode(errors="replace") for c in proxies)
        assert token not in logs, logs
        # Control: both requests reached the proxy and were logged (URL without its query).
        assert "refused.invalid/y?[query removed]" in logs, logs
    finally:
        for run_id in kept:
            real_remove(client, run_id)


def test_a_fifo_left_for_the_host_is_refused_at_once(tmp_path: Path) -> None:
    """What a subverted harvest could leave in its out volume: a FIFO where the bundle goes.
    The host refuses it at once (it used to block `agentrt run` forever in open())."""
    import threading

    from runtime.errors import HarvestError
    from runtime.git.harvest import OUT_DIR, _out_volume_dir, take_file

    client = get_client()
    container = client.containers.create(
        HARVEST_IMAGE, ["sh", "-c", f"mkfifo {OUT_DIR}/work.bundle"], user="0:0",
        network_mode="none", mounts=[docker.types.Mount(OUT_DIR, None, type="volume")])
    try:
        container.start()
        container.wait(timeout=60)
        local = _out_volume_dir(client.api.inspect_container(container.id))
        assert local is not None
        began = time.monotonic()
        with pytest.raises(HarvestError, match="a FIFO"):
            take_file(local / "work.bundle", 1 << 20, dest=tmp_path / "work.bundle")
        assert time.monotonic() - began < 2
        # Control: a plain open() of the same path blocks until someone writes.
        opened = threading.Event()
        thread = threading.Thread(target=lambda: (open(local / "work.bundle", "rb").close(),
                                                  opened.set()), daemon=True)
        thread.start()
        assert not opened.wait(1.5), "control: the open did not block"
        with open(local / "work.bundle", "wb"):
            pass  # let the blocked reader go
        thread.join(5)
    finally:
        container.remove(force=True, v=True)


def test_a_huge_archive_stream_is_cut_at_the_cap(tmp_path: Path) -> None:
    """A 20 GB sparse "bundle" in a container (what a remote engine streamed for 76 s before):
    the copy stops at the import limit."""
    from runtime.errors import HarvestError
    from runtime.git.harvest import fetch_file

    client = get_client()
    container = client.containers.create(HARVEST_IMAGE, ["truncate", "-s", "20G", "/big"],
                                         network_mode="none", user="0:0")
    try:
        container.start()
        container.wait(timeout=60)
        # Control: the engine offers the whole 20 GB.
        _chunks, info = client.api.get_archive(container.id, "/big")
        _chunks.close()
        assert info["size"] == 20 * 1024 ** 3
        began = time.monotonic()
        with pytest.raises(HarvestError, match="larger than the import limit"):
            fetch_file(client, container.id, "/big", tmp_path, 8 * 1024 * 1024)
        assert time.monotonic() - began < 15
    finally:
        container.remove(force=True, v=True)
