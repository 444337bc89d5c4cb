"""A session's branch and git working tree, made before the agent starts.

Design (see docs/security.md): each session gets its *own* small repository on its volume,
``<volume>/workspace/.git``, on its own branch ``agent/<task>/<6 hex>``. It borrows the objects
of the run's read-only object store (:mod:`runtime.git.object_store`: only what its base reaches)
through ``objects/info/alternates``, so creating it costs one checkout and no copy. The store is
bound into the session (and its harvest) at :data:`~runtime.engine.container.STORE_MOUNT`, never
at its host path, which the container's uid may not be able to reach (a repository under a 0700
home). The alternates file names it by a relative path, :data:`ALTERNATES`, which resolves to
that mount inside the container (``/workspace/.git/objects/../../..`` is ``/``) and, on the
host, to a link agentrt puts beside the volume's ``workspace`` (``<volume>/agentrt/objects``,
pointing at the store; the agent never sees the volume's root), so git works in the tree on
either side. The agent may do anything to that repository; once its container has started
agentrt never reads it again: work comes home only as a verified bundle
(:mod:`runtime.git.harvest`, :mod:`runtime.git.bundle`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import secrets
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from runtime.engine.container import STORE_MOUNT, WORKSPACE
from runtime.errors import ConfigError, GitError, WorkspaceError
from runtime.git.conflicts import driver_overrides
from runtime.git.safe_git import MainRepo, check_branch_name, run_git

BRANCH_PREFIX = "agent"
#: The branch a run's seed checkout is made on (runtime.git.seed_image); each copy is moved
#: onto its session's branch by :func:`adopt_seed_checkout`.
SEED_BRANCH = "agentrt-seed"
#: The session repository's alternates: STORE_MOUNT, relative to the container's
#: /workspace/.git/objects (the same relative path from the host's <volume>/workspace/.git/objects
#: reaches the link :func:`create_workspace` makes).
ALTERNATES = os.path.relpath(STORE_MOUNT, f"{WORKSPACE}/.git/objects")


class DependencyConflictError(WorkspaceError):
    """The branches of a task's dependencies do not merge cleanly."""


def new_session_id(task_id: str) -> tuple[str, str]:
    """A fresh ``(session id, branch)`` pair for ``task_id``."""
    _check_task_branches(task_id)
    suffix = secrets.token_hex(3)
    return f"{task_id}-{suffix}", f"{BRANCH_PREFIX}/{task_id}/{suffix}"


@functools.lru_cache(maxsize=4096)
def _check_task_branches(task_id: str) -> None:
    # Once per task id: six hex digits after a valid "agent/<task>/" cannot make it invalid.
    check_branch_name(f"{BRANCH_PREFIX}/{task_id}/000000")


@contextlib.contextmanager
def repo_lock(repo: MainRepo, name: str = "workspace") -> Iterator[None]:
    """Serialise ref and worktree changes on one repository across threads and processes."""
    repo.state_dir.mkdir(parents=True, exist_ok=True)
    with open(repo.state_dir / f"{name}.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def prepare_base(repo: MainRepo, base_commit: str, dep_heads: list[tuple[str, str]]) -> str:
    """The commit a dependent task starts from: ``base`` with every dep branch merged in.

    ``dep_heads`` is ``[(branch, commit)]``. Uses ``merge-tree --write-tree`` (no working tree,
    no index); raises :class:`DependencyConflictError` naming the conflicting paths.
    """
    current = base_commit
    for branch, head in dep_heads:
        if _is_ancestor(repo, head, current):
            continue
        if _is_ancestor(repo, current, head):
            current = head
            continue
        # The same neutralised filters and merge drivers as every other merge.
        proc = repo.git("merge-tree", "--write-tree", "--name-only", "--no-messages",
                        current, head, check=False, config=driver_overrides(repo))
        lines = proc.stdout.splitlines()
        if proc.returncode == 1:
            paths = ", ".join(lines[1:]) or "unknown paths"
            raise DependencyConflictError(f"dependency branch {branch} conflicts on: {paths}")
        if proc.returncode != 0 or not lines:
            raise GitError(f"cannot merge dependency branch {branch}", proc.stderr)
        current = repo.git(
            "commit-tree", lines[0], "-p", current, "-p", head,
            "-m", f"agentrt: start from dependency {branch}",
        ).stdout.strip()
    return current


def _is_ancestor(repo: MainRepo, ancestor: str, descendant: str) -> bool:
    proc = repo.git("merge-base", "--is-ancestor", ancestor, descendant, check=False)
    return proc.returncode == 0


def create_branch(repo: MainRepo, branch: str, commit: str) -> None:
    """Create ``branch`` at ``commit``; fails (never overwrites) if it already exists."""
    with repo_lock(repo):
        try:
            repo.update_ref(f"refs/heads/{branch}", commit, "0" * 40, "agentrt: session branch")
        except GitError as exc:
            raise WorkspaceError(f"cannot create branch {branch}: {exc}") from exc


def create_workspace(
    repo: MainRepo, workspace: Path, branch: str, commit: str, uid: int, gid: int, *,
    objects: Path,
) -> None:
    """Make ``workspace`` a repository on ``branch`` at ``commit``, checked out, owned by uid.

    Its objects are borrowed from ``objects`` (the run's read-only object store) through
    :data:`ALTERNATES` and a link to ``objects`` beside ``workspace`` (see the module's
    docstring). The host writes this tree before the agent starts and never reads it again.
    Its index is settled (:func:`settle_index`): git trusts its stat data.
    """
    git_dir = workspace / ".git"
    try:
        store_link(workspace, objects)
        run_git(["init", "-q", "--template=", f"--initial-branch={branch}", str(workspace)],
                cwd=workspace)
        (git_dir / "objects" / "info").mkdir(parents=True, exist_ok=True)
        (git_dir / "objects" / "info" / "alternates").write_text(f"{ALTERNATES}\n")
        # One write instead of a `git config` process per key: the repository is brand new
        # and nobody else can see it yet.
        with open(git_dir / "config", "a", encoding="utf-8") as config:
            config.write("[user]\n\tname = agentrt agent\n\temail = agent@agentrt.invalid\n"
                         "[gc]\n\tauto = 0\n[maintenance]\n\tauto = false\n")
        run_git(["update-ref", f"refs/heads/{branch}", commit], git_dir=git_dir)
        run_git(["reset", "--hard", "-q", commit], git_dir=git_dir, work_tree=workspace)
        settle_index(workspace, uid, gid)
    except (GitError, OSError) as exc:
        raise WorkspaceError(f"cannot create the working tree in {workspace}: {exc}") from exc


def store_link(workspace: Path, objects: Path) -> Path:
    """The host's end of :data:`ALTERNATES`: a link beside ``workspace`` (in the volume's root,
    which no container mounts) to the store's host path, made or replaced."""
    link = workspace.parent / STORE_MOUNT.lstrip("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    os.symlink(objects, link)
    return link


def adopt_seed_checkout(workspace: Path, branch: str, commit: str, uid: int, gid: int) -> None:
    """Put a copy of the run's seed checkout (on :data:`SEED_BRANCH` at ``commit``) on
    ``branch``: two loose-ref files written before the agent ever sees the tree."""
    heads = workspace / ".git" / "refs" / "heads"
    seed_ref = heads / SEED_BRANCH
    try:
        if seed_ref.read_text().strip() != commit:
            raise WorkspaceError(f"the seed in {workspace} is not at {commit[:10]}")
        ref = heads / branch
        made = [d for d in reversed(ref.parents) if d.is_relative_to(heads) and not d.exists()]
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit + "\n")
        (workspace / ".git" / "HEAD").write_text(f"ref: refs/heads/{branch}\n")
        seed_ref.unlink()
        if os.geteuid() == 0:
            for path in (*made, ref):
                os.lchown(path, uid, gid)
    except OSError as exc:
        raise WorkspaceError(f"cannot put the working tree in {workspace} on {branch}: "
                             f"{exc}") from exc


#: How far back :func:`settle_index` dates a fresh checkout's files.
SETTLE_BACK_SECONDS = 2


def settle_index(workspace: Path, uid: int, gid: int) -> None:
    """Give a fresh checkout to ``uid:gid`` with an index git trusts by its stat data.

    git distrusts ("racily clean") an entry whose file is not older than the index, to the
    second here: a checkout's index is written in its files' own second, so every later
    ``git status``, and the harvest's ``add`` whenever it runs in that same second, re-read
    every file (measured: 0.5 s of a 2,000-file harvest, in most no-op sessions). So the files
    are given away and dated back, and the index is given their new stat data
    (:func:`restamp_index`): nobody but agentrt has written them, so their content is the
    index's and re-reading them (``update-index --refresh``, the fallback) would only cost.
    """
    _chown_tree(workspace, uid, gid)
    past = time.time() - SETTLE_BACK_SECONDS
    for root, dirs, files in os.walk(workspace):
        dirs[:] = [d for d in dirs if not (root == str(workspace) and d == ".git")]
        for name in files:
            os.utime(os.path.join(root, name), (past, past), follow_symlinks=False)
    index = workspace / ".git" / "index"
    if not restamp_index(index, workspace):
        run_git(["update-index", "-q", "--refresh"], git_dir=workspace / ".git",
                work_tree=workspace)
    if os.geteuid() == 0:
        os.lchown(index, uid, gid)


_ENTRY = struct.Struct(">10I20sH")
_EXTENDED = 0x4000
_NAME_MASK = 0xFFF


def restamp_index(index: Path, workspace: Path) -> bool:
    """Rewrite the stat data of every entry of ``index`` (version 2 or 3, SHA-1) from its
    file in ``workspace``, keeping everything else; False (nothing written) for any other
    index, or when a file's type or size is not its entry's (then its content might differ).
    The layout: git's Documentation/gitformat-index.txt.
    Only for a tree whose files nobody but agentrt has written since the checkout."""
    data = index.read_bytes()
    if len(data) < 32 or data[:4] != b"DIRC":
        return False
    version, count = struct.unpack(">II", data[4:12])
    if version not in (2, 3):
        return False
    out, pos = bytearray(data[:12]), 12
    for _ in range(count):
        if pos + _ENTRY.size > len(data) - 20:
            return False
        fields = list(_ENTRY.unpack_from(data, pos))
        flags = fields[11]
        head = _ENTRY.size + (2 if flags & _EXTENDED and version == 3 else 0)
        length = flags & _NAME_MASK
        if length == _NAME_MASK:  # a path longer than Linux allows: not a checkout of ours
            return False
        name = data[pos + head:pos + head + length]
        size = (head + length + 8) & ~7
        mode = fields[6]
        if mode >> 12 != 0o160000 >> 12:  # a gitlink keeps its (empty) stat data
            try:
                st = os.lstat(os.path.join(workspace, os.fsdecode(name)))
            except OSError:  # not checked out (sparse, say): leave it to git
                return False
            if st.st_mode >> 12 != mode >> 12 or st.st_size & 0xFFFFFFFF != fields[9]:
                return False
            fields[:6] = [int(st.st_ctime) & 0xFFFFFFFF, st.st_ctime_ns % 1_000_000_000,
                          int(st.st_mtime) & 0xFFFFFFFF, st.st_mtime_ns % 1_000_000_000,
                          st.st_dev & 0xFFFFFFFF, st.st_ino & 0xFFFFFFFF]
            fields[7:9] = [st.st_uid & 0xFFFFFFFF, st.st_gid & 0xFFFFFFFF]
        out += _ENTRY.pack(*fields) + data[pos + _ENTRY.size:pos + size]
        pos += size
    out += data[pos:-20]  # the extensions (the cached tree) do not depend on stat data
    if hashlib.sha1(data[:-20]).digest() != data[-20:]:  # noqa: S324 - git's checksum
        return False  # not a SHA-1 repository's index
    out += hashlib.sha1(out).digest()  # noqa: S324 - git's index checksum
    scratch = index.with_name("index.agentrt")
    scratch.write_bytes(bytes(out))
    os.replace(scratch, index)
    return True


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    if os.geteuid() != 0:
        return
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, name), uid, gid)
    os.lchown(root, uid, gid)


def resolve_base(repo: MainRepo, base: str) -> str:
    """Resolve the run's base commit-ish, naming the field on failure."""
    try:
        return repo.rev_parse(base)
    except ConfigError as exc:
        raise ConfigError(f"[run] field base: {exc}") from None
