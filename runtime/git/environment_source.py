"""An environment's inputs from the repository's committed tree at the run's base commit.

Never the working tree (a user's uncommitted edits) and never an agent's tree: files are read
with ``git show``/``git rev-parse <commit>:<path>`` and exported with ``git archive`` of the
base commit into a directory agentrt made. Object ids double as content hashes: the same
directory at two commits has the same tree id, so an image is rebuilt only when what it is
built from changed.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

from runtime.errors import ConfigError, GitError
from runtime.git.safe_git import MainRepo, git_argv, git_env

ARCHIVE_TIMEOUT_S = 600


def object_id(repo: MainRepo, commit: str, path: str, where: str) -> str:
    """The git object id (blob or tree) of ``path`` at ``commit``; ConfigError naming
    ``where`` when the commit has no such path."""
    spec = f"{commit}:{path}" if path not in ("", ".") else f"{commit}^{{tree}}"
    proc = repo.git("rev-parse", "--verify", "--quiet", spec, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise ConfigError(f"{where}: {path!r} is not in the repository at the base commit "
                          f"{commit[:10]} (commit it first: agentrt builds from committed "
                          "files only)")
    return proc.stdout.strip()


def read_file(repo: MainRepo, commit: str, path: str, where: str) -> str:
    """The text of file ``path`` at ``commit`` (ConfigError naming ``where`` if absent)."""
    oid = object_id(repo, commit, path, where)
    kind = repo.git("cat-file", "-t", oid).stdout.strip()
    if kind != "blob":
        raise ConfigError(f"{where}: {path!r} is a {kind}, not a file")
    return repo.git("cat-file", "blob", oid).stdout


def _archive(repo: MainRepo, args: Sequence[str]) -> bytes:
    cmd = git_argv(["archive", "--format=tar", *args], git_dir=repo.git_dir)
    try:
        proc = subprocess.run(cmd, cwd=str(repo.git_dir), env=git_env(), capture_output=True,
                              timeout=ARCHIVE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GitError(f"git archive could not run: {exc}") from exc
    if proc.returncode != 0:
        raise GitError("git archive failed", proc.stderr.decode(errors="replace"))
    return proc.stdout


def _extract(data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        # The "data" filter refuses absolute paths, '..', devices and links leaving dest.
        tar.extractall(dest, filter="data")


def export_tree(repo: MainRepo, commit: str, path: str, dest: Path, where: str) -> str:
    """Export directory ``path`` (``"."`` for the root) at ``commit`` into ``dest`` (its
    contents at the top); return its tree id."""
    oid = object_id(repo, commit, path, where)
    if repo.git("cat-file", "-t", oid).stdout.strip() != "tree":
        raise ConfigError(f"{where}: {path!r} is not a directory")
    _extract(_archive(repo, [oid]), dest)
    return oid


def export_paths(repo: MainRepo, commit: str, paths: Sequence[str], dest: Path,
                 where: str) -> dict[str, str]:
    """Export ``paths`` (files or directories) at ``commit`` into ``dest`` under their
    repository paths; return each path's object id."""
    ids = {path: object_id(repo, commit, path, where) for path in paths}
    if paths:
        _extract(_archive(repo, [commit, "--", *paths]), dest)
    else:
        dest.mkdir(parents=True, exist_ok=True)
    return ids
