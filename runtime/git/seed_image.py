"""A run's seed: its base checked out once into an ext4 image that every session copies.

A run of several sessions on one base commit would otherwise check the same tree out once per
session (``git reset --hard`` writing and hashing every file: ~350 ms and most of a session's
host CPU on a 2,000-file repository). Instead the first session to need it builds the seed
under ``<state>/runs/<run id>/seeds/``: a sparse ext4 image of the sessions' ``disk_mb``
holding the volume's ``workspace`` (the session repository, on :data:`SEED_BRANCH`, borrowing
the run's object store, with the link to it beside the workspace) and ``db`` directories, owned
by the agent's uid. Each session's volume is then a copy of the seed's data blocks
(:mod:`runtime.engine.seeded_volumes`) moved onto its own branch
(:func:`runtime.git.workspace.adopt_seed_checkout`).

The seed's index is *settled* as every checkout's is (:func:`runtime.git.workspace.
settle_index`): its files dated back and the index given their stat data, so git trusts it. The
copy keeps inode numbers and times, so the agent's first ``git status`` and the harvest's
snapshot only stat.

Only agentrt writes a seed, and before any agent exists; it is removed with the run's object
stores (:func:`remove_seeds`, also by ``agentrt gc`` for a dead run).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

from runtime import paths
from runtime.engine.seeded_volumes import make_seed_fs
from runtime.engine.volumes import mounted_at, run_tool
from runtime.errors import GitError, VolumeError, WorkspaceError
from runtime.git.safe_git import MainRepo
from runtime.git.workspace import SEED_BRANCH, create_workspace, repo_lock


def seeds_dir(repo: MainRepo, run_id: str) -> Path:
    """Where ``run_id`` keeps its seed images."""
    return paths.runs_dir(repo.state_dir) / run_id / "seeds"


def seed_path(repo: MainRepo, run_id: str, commit: str, disk_mb: int, uid: int,
              gid: int) -> Path:
    """The seed image of ``commit`` for volumes of ``disk_mb`` MiB owned by ``uid:gid``."""
    return seeds_dir(repo, run_id) / f"{commit}-{disk_mb}m-{uid}-{gid}.img"


def ensure_seed(repo: MainRepo, run_id: str, commit: str, disk_mb: int, uid: int, gid: int,
                store: Path) -> Path:
    """Build (once per run and key) and return the seed image; safe from several threads and
    processes (built aside under a lock, renamed into place when complete)."""
    path = seed_path(repo, run_id, commit, disk_mb, uid, gid)
    if path.exists():
        return path
    with repo_lock(repo, "seeds"):
        if path.exists():
            return path
        build = path.parent / f".build-{os.getpid()}-{threading.get_ident()}"
        shutil.rmtree(build, ignore_errors=True)
        build.mkdir(parents=True)
        image, root = build / "seed.img", build / "volume"
        try:
            make_seed_fs(image, root, disk_mb, uid, gid)
            try:
                workspace = root / "workspace"
                create_workspace(repo, workspace, SEED_BRANCH, commit, uid, gid, objects=store)
                shutil.rmtree(workspace / ".git" / "logs", ignore_errors=True)
            finally:
                run_tool(["umount", str(root)], f"unmount {root}")
            image.rename(path)
        except (GitError, OSError, VolumeError) as exc:
            raise WorkspaceError(f"cannot build the run's seed checkout: {exc}") from exc
        finally:
            _remove_build(build)
    return path


def remove_seeds(repo: MainRepo, run_id: str) -> None:
    """Delete ``run_id``'s seeds, unmounting one a crashed build left mounted."""
    directory = seeds_dir(repo, run_id)
    for build in directory.glob(".build-*"):
        _remove_build(build)
    if not any(directory.glob(".build-*")):
        shutil.rmtree(directory, ignore_errors=True)


def _remove_build(directory: Path) -> None:
    mount = directory / "volume"
    if mounted_at(mount):
        with contextlib.suppress(VolumeError):
            run_tool(["umount", "-l", str(mount)], f"unmount {mount}")
    if not mounted_at(mount):  # never delete into a file system still mounted
        shutil.rmtree(directory, ignore_errors=True)
