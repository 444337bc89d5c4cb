"""A run's seed checkout: built once, copied block for block into each session's volume,
each copy on its own branch, independent, fully reserved, with an index git trusts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from runtime import AgentCoordinator, RunConfig, Task
from runtime.engine.seeded_volumes import create_volume_from_seed, make_seed_fs
from runtime.engine.volumes import Volume, loop_supported, mounted_at
from runtime.git.object_store import ensure_store, remove_run_stores
from runtime.git.safe_git import MainRepo
from runtime.git.seed_image import ensure_seed, seeds_dir
from runtime.git.workspace import (
    SEED_BRANCH,
    adopt_seed_checkout,
    create_workspace,
    restamp_index,
)
from runtime.run.session import IsolatedAgentSession
from tests.conftest import git

MIB = 1024 * 1024
UID = GID = 1000

pytestmark = pytest.mark.skipif(not loop_supported(),
                                reason="seed images are loop volumes: root, mkfs.ext4, losetup")


def ws_git(workspace: Path, *args: str) -> str:
    """git in a session workspace, the repository named explicitly (as agentrt does). Its
    alternates name the store by the relative path that reaches /agentrt/objects in the
    container and the link beside the workspace here."""
    assert (workspace / ".git" / "objects" / "info" / "alternates").read_text() == \
        "../../../agentrt/objects\n"
    return subprocess.run(
        ["git", "-c", f"safe.directory={workspace}", f"--git-dir={workspace / '.git'}",
         f"--work-tree={workspace}", *args],
        capture_output=True, text=True, check=True).stdout


def status_rewrites_index(workspace: Path) -> bool:
    """Whether ``git status`` had to refresh (rewrite) the index: it distrusted the stat data
    of some entries and re-read those files."""
    index = workspace / ".git" / "index"
    before = index.stat().st_mtime_ns
    ws_git(workspace, "status", "--porcelain")
    return index.stat().st_mtime_ns != before


def test_sessions_copy_the_seed_onto_their_own_branches(repo: Path, tmp_path: Path) -> None:
    (repo / "big.txt").write_text("line\n" * 20000)
    git(repo, "add", "big.txt")
    git(repo, "commit", "-qm", "big file")
    main = MainRepo(repo)
    commit = main.rev_parse("HEAD")
    store = ensure_store(main, "run-seed", commit)
    seed = ensure_seed(main, "run-seed", commit, 64, UID, GID, store)
    volumes: list[Volume] = []
    try:
        assert seed.stat().st_size == 64 * MIB
        assert seed.stat().st_blocks * 512 < 32 * MIB  # sparse: only what was written
        assert ensure_seed(main, "run-seed", commit, 64, UID, GID, store) == seed  # once
        for n in (1, 2):
            volume = create_volume_from_seed(tmp_path / f"s{n}", 64, UID, GID, seed)
            volumes.append(volume)
            adopt_seed_checkout(volume.workspace, f"agent/t/{n:06x}", commit, UID, GID)
        for n, volume in enumerate(volumes, 1):
            ws = volume.workspace
            assert mounted_at(volume.root)
            # The same reservation as an ordinary volume: every block of disk_mb held.
            assert volume.image.stat().st_blocks * 512 >= 64 * MIB
            assert ws_git(ws, "symbolic-ref", "HEAD").strip() == f"refs/heads/agent/t/{n:06x}"
            assert ws_git(ws, "rev-parse", "HEAD").strip() == commit
            assert ws_git(ws, "status", "--porcelain") == ""
            assert not (ws / ".git" / "refs" / "heads" / SEED_BRANCH).exists()
            assert (ws / "big.txt").read_text() == "line\n" * 20000
            assert not status_rewrites_index(ws)
            for path in (ws / "big.txt", ws / ".git" / "index",
                         ws / ".git" / "refs" / "heads" / "agent" / "t" / f"{n:06x}"):
                assert (path.stat().st_uid, path.stat().st_gid) == (UID, GID), path
        # Independent copies: a write in one is not in the other.
        (volumes[0].workspace / "only-here").write_text("one")
        assert not (volumes[1].workspace / "only-here").exists()
        # The volume's limit holds like any loop volume's: writing past disk_mb fails.
        filler = subprocess.run(["dd", "if=/dev/zero", f"of={volumes[1].workspace / 'fill'}",
                                 "bs=1M", "count=100"], capture_output=True, text=True)
        assert filler.returncode != 0 and "No space left" in filler.stderr
    finally:
        for volume in volumes:
            volume.remove()
        remove_run_stores(main, "run-seed")
    assert not seeds_dir(main, "run-seed").exists()
    assert not any(volume.session_dir.exists() for volume in volumes)


def test_the_index_of_a_checkout_and_of_the_seed_is_trusted_where_a_plain_one_is_not(
        repo: Path, tmp_path: Path) -> None:
    for i in range(200):
        (repo / f"f{i}.txt").write_text(f"file {i}\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "files")
    main = MainRepo(repo)
    commit = main.rev_parse("HEAD")
    # The control: a plain checkout, its index written in the files' own second, is distrusted.
    plain = tmp_path / "plain"
    git(tmp_path, "clone", "-q", "--no-checkout", str(repo), str(plain))
    git(plain, "reset", "-q", "--hard", commit)
    before = (plain / ".git" / "index").stat().st_mtime_ns
    git(plain, "status", "--porcelain")
    assert (plain / ".git" / "index").stat().st_mtime_ns != before
    store = ensure_store(main, "run-racy", commit)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    create_workspace(main, fresh, "agent/t/000001", commit, UID, GID, objects=store)
    assert not status_rewrites_index(fresh)
    assert ws_git(fresh, "status", "--porcelain") == ""
    # Trusted, not blind: a change of the same size, made right away, is still seen.
    (fresh / "f7.txt").write_text("FILE 7\n")
    assert ws_git(fresh, "status", "--porcelain") == " M f7.txt\n"
    seed = ensure_seed(main, "run-racy", commit, 64, UID, GID, store)
    volume = create_volume_from_seed(tmp_path / "s", 64, UID, GID, seed)
    try:
        assert not status_rewrites_index(volume.workspace)
    finally:
        volume.remove()
        remove_run_stores(main, "run-racy")


def test_the_index_is_restamped_only_while_every_file_is_as_checked_out(
        repo: Path, tmp_path: Path) -> None:
    for i in range(20):
        (repo / "dir" / f"f{i}.txt").parent.mkdir(exist_ok=True)
        (repo / "dir" / f"f{i}.txt").write_text(f"file {i}\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "files")
    tree = tmp_path / "tree"
    git(tmp_path, "clone", "-q", str(repo), str(tree))
    index = tree / ".git" / "index"
    for path in tree.rglob("*.txt"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    assert restamp_index(index, tree)
    git(tree, "fsck", "--no-dangling")  # still a valid index, checksum included
    before = index.read_bytes()
    git(tree, "status", "--porcelain")
    assert index.read_bytes() == before  # trusted as it is: nothing re-read or rewritten
    # A file whose size is not its entry's: its content may differ, so nothing is written.
    (tree / "dir" / "f3.txt").write_text("longer than it was\n")
    assert not restamp_index(index, tree)
    assert index.read_bytes() == before
    # A file that is not there (not checked out): the same.
    (tree / "dir" / "f3.txt").write_text("file 3\n")
    (tree / "dir" / "f5.txt").unlink()
    assert not restamp_index(index, tree)
    assert index.read_bytes() == before


def test_gc_of_a_run_unmounts_a_seed_build_left_half_done(repo: Path) -> None:
    main = MainRepo(repo)
    build = seeds_dir(main, "run-crashed") / ".build-1-2"
    build.mkdir(parents=True)
    make_seed_fs(build / "seed.img", build / "volume", 64, UID, GID)  # as a crash leaves it
    assert mounted_at(build / "volume")
    remove_run_stores(main, "run-crashed")
    assert not mounted_at(build / "volume")
    assert not seeds_dir(main, "run-crashed").exists()


@pytest.mark.docker
def test_a_run_of_several_tasks_starts_every_session_from_the_seed(
        repo: Path, docker_client: object) -> None:
    seeded: dict[str, bool] = {}

    def spy(session: IsolatedAgentSession) -> None:
        seeded[session.task.id] = bool(getattr(session.tree, "seeded", False))

    coordinator = AgentCoordinator(2, config=RunConfig(merge="none"), repo=repo,
                                   stop_grace_seconds=1)
    tasks = [Task(id=f"t{n}", command=[
        "sh", "-c", f"echo {n} > mine{n} && git add mine{n} && git commit -qm 'task {n}'"])
        for n in range(3)]
    original = IsolatedAgentSession.run

    def run(self: IsolatedAgentSession, *args: object, **kwargs: object) -> object:
        spy(self)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    IsolatedAgentSession.run = run  # type: ignore[assignment,method-assign]
    try:
        report = coordinator.run_agents(tasks)
    finally:
        IsolatedAgentSession.run = original  # type: ignore[method-assign]
    assert seeded == {"t0": True, "t1": True, "t2": True}
    for n, session in enumerate(report.sessions):
        assert session.status.value == "succeeded", session.reason
        files = git(repo, "ls-tree", "--name-only", session.branch).split()
        assert f"mine{n}" in files and "README.md" in files
        assert not [f for f in files if f.startswith("mine") and f != f"mine{n}"]
        assert git(repo, "log", "-1", "--format=%s", session.branch) .strip() == f"task {n}"
    assert not os.listdir(repo / ".git" / "agentrt" / "runs")
