"""The read-only object store a run's sessions borrow: exactly what their base can reach.

A session no longer sees the user's whole ``.git/objects``. For each commit sessions start from
(the run's base, and for a dependent task the base with its dependencies merged) agentrt packs
the objects reachable from that commit, once, into
``<state>/runs/<run id>/objects/<commit>/pack/``. The directory is bind-mounted read-only into
the session and its harvest container at ``/agentrt/objects`` (never at its host path, which the
container's uid may not reach), and nowhere else; the session repository's alternates file
reaches it there, and on the host through a link (:mod:`runtime.git.workspace`). Other branches
of the user's repository, and the work of sessions the task does not depend on, are simply not
in it.

``git pack-objects --revs`` reuses the deltas already stored in the user's packs, so building a
store costs about one ``git gc`` of the base's history (0.9 s and a 150 MB pack for python/mypy's
13,752 commits; see docs/benchmarks.md). The run removes its stores when it ends; ``agentrt gc``
removes those of dead runs. What a commit reaches never changes, so the last store built is
also kept, hard-linked, in ``<state>/store-cache/<commit>/``: the next run from the same commit
links its packs instead of building them again (one commit is kept; the next one built
replaces it; no extra space while a run holds the same packs).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

from runtime import paths
from runtime.errors import GitError, WorkspaceError
from runtime.git.safe_git import MainRepo

_COMMIT = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
READY = "agentrt-store-ready"
CACHE_DIR = "store-cache"


def store_path(repo: MainRepo, run_id: str, commit: str) -> Path:
    """The object directory holding everything ``commit`` reaches, for ``run_id``."""
    if not _COMMIT.match(commit):
        raise WorkspaceError(f"not a full commit id: {commit!r}")
    return paths.runs_dir(repo.state_dir) / run_id / "objects" / commit


def ensure_store(repo: MainRepo, run_id: str, commit: str) -> Path:
    """Build (once) and return the read-only object store of ``commit`` for ``run_id``.

    Idempotent and safe to call from several threads of one run: the store is built in a
    temporary directory and renamed into place; a finished store carries a ready marker.
    """
    from runtime.git.workspace import repo_lock

    path = store_path(repo, run_id, commit)
    if (path / READY).exists():
        return path
    with repo_lock(repo, "stores"):
        if (path / READY).exists():
            return path
        tmp = path.with_name(f".{commit}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            (tmp / "pack").mkdir(parents=True)
            (tmp / "info").mkdir()
            cached = _link_cached(repo, commit, tmp / "pack")
            if not cached:
                # git writes its temporary pack in the object directory it is given, so that
                # the final rename stays on one filesystem (the state directory may be on
                # another disk than the repository's objects, read through alternates).
                repo.git("pack-objects", "--revs", "--quiet", "--delta-base-offset",
                         str(tmp / "pack" / "pack"), input=f"{commit}\n",
                         env={"GIT_OBJECT_DIRECTORY": str(tmp),
                              "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(repo.objects_dir)})
            (tmp / READY).write_text(commit + "\n")
            for sub in (tmp, tmp / "pack", tmp / "info"):
                sub.chmod(0o755)
            for pack in (tmp / "pack").iterdir():
                pack.chmod(0o444)
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
        except (GitError, OSError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise WorkspaceError(f"cannot build the object store of {commit[:10]}: {exc}") from exc
        if not cached:
            _keep_in_cache(repo, commit, path / "pack")
    return path


def _link_cached(repo: MainRepo, commit: str, pack_dir: Path) -> bool:
    """Hard-link the cached packs of ``commit`` into ``pack_dir``; False (``pack_dir`` left
    empty) when there is no complete entry or a link fails (another filesystem)."""
    cached = repo.state_dir / CACHE_DIR / commit
    if not (cached / READY).is_file():
        return False
    try:
        for pack in (cached / "pack").iterdir():
            os.link(pack, pack_dir / pack.name)
    except OSError:
        for linked in pack_dir.iterdir():
            linked.unlink()
        return False
    return True


def _keep_in_cache(repo: MainRepo, commit: str, pack_dir: Path) -> None:
    """Make the cache hold ``commit``'s packs (hard links of ``pack_dir``) and nothing else;
    best effort: a cache that cannot be written only means the next run builds again."""
    root = repo.state_dir / CACHE_DIR
    staging = root / f".{commit}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        (staging / "pack").mkdir(parents=True, mode=0o700)
        for pack in pack_dir.iterdir():
            os.link(pack, staging / "pack" / pack.name)
        (staging / READY).write_text(commit + "\n")
        for old in root.iterdir():
            if old != staging:
                shutil.rmtree(old, ignore_errors=True)
        staging.rename(root / commit)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)


def remove_run_stores(repo: MainRepo, run_id: str) -> None:
    """Delete every object store and seed of ``run_id`` (at the end of the run, or by gc)."""
    from runtime.git.seed_image import remove_seeds

    remove_seeds(repo, run_id)
    shutil.rmtree(paths.runs_dir(repo.state_dir) / run_id / "objects", ignore_errors=True)
    with contextlib.suppress(OSError):
        (paths.runs_dir(repo.state_dir) / run_id).rmdir()
