"""A session's git working tree: create it, snapshot the agent's work, bring it home.

Design (see docs/security.md): each session gets its *own* small repository on its volume,
``<volume>/workspace/.git``, on its own branch ``agent/<task>/<6 hex>``. It borrows the main
repository's objects through ``objects/info/alternates`` (mounted read-only into the container
at the same path), so creating it costs one checkout and no copy. The agent may do anything to
that repository; the host never runs git *in* it. Work comes home in two safe steps:

1. ``git fetch`` from the session's git dir into the main repository with
   ``transfer.fsckObjects`` (upload-pack ignores the repository's hooks and dangerous config);
   the alternates file is rewritten by the host first, and the git dir must be a real directory.
2. Uncommitted files are snapshotted with the *main* repository's git dir and a temporary index
   over the session's working tree (``--work-tree``), so no config, hook, filter or ``.git``
   pointer the agent wrote is ever read; git itself never follows a symlink while adding.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shlex
import stat
from collections.abc import Iterator
from pathlib import Path

from runtime.conflicts import driver_overrides
from runtime.errors import ConfigError, GitError, WorkspaceError
from runtime.gitops import MainRepo, check_branch_name, run_git

BRANCH_PREFIX = "agent"
IMPORT_REF_PREFIX = "refs/agentrt/import"


class DependencyConflictError(WorkspaceError):
    """The branches of a task's dependencies do not merge cleanly."""


def new_session_id(task_id: str) -> tuple[str, str]:
    """A fresh ``(session id, branch)`` pair for ``task_id``."""
    suffix = secrets.token_hex(3)
    return f"{task_id}-{suffix}", check_branch_name(f"{BRANCH_PREFIX}/{task_id}/{suffix}")


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
        proc = repo.git("merge-tree", "--write-tree", "--name-only", "--no-messages",
                        current, head, check=False)
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
    repo: MainRepo, workspace: Path, branch: str, commit: str, uid: int, gid: int
) -> None:
    """Make ``workspace`` a repository on ``branch`` at ``commit``, checked out, owned by uid."""
    git_dir = workspace / ".git"
    try:
        run_git(["init", "-q", "--template=", f"--initial-branch={branch}", str(workspace)],
                cwd=workspace)
        (git_dir / "objects" / "info").mkdir(parents=True, exist_ok=True)
        (git_dir / "objects" / "info" / "alternates").write_text(f"{repo.objects_dir}\n")
        # One write instead of a `git config` process per key: the repository is brand new
        # and nobody else can see it yet.
        with open(git_dir / "config", "a", encoding="utf-8") as config:
            config.write("[user]\n\tname = agentrt agent\n\temail = agent@agentrt.invalid\n"
                         "[gc]\n\tauto = 0\n[maintenance]\n\tauto = false\n")
        run_git(["update-ref", f"refs/heads/{branch}", commit], git_dir=git_dir)
        run_git(["reset", "--hard", "-q", commit], git_dir=git_dir, work_tree=workspace)
        _chown_tree(workspace, uid, gid)
    except (GitError, OSError) as exc:
        raise WorkspaceError(f"cannot create the working tree in {workspace}: {exc}") from exc


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    if os.geteuid() != 0:
        return
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, name), uid, gid)
    os.lchown(root, uid, gid)


def _trusted_git_dir(workspace: Path) -> Path | None:
    """The session's git dir, if it is still a plain directory we are willing to fetch from."""
    git_dir = workspace / ".git"
    try:
        for path in (git_dir, git_dir / "objects", git_dir / "refs"):
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return None
        if stat.S_ISLNK(os.lstat(git_dir / "HEAD").st_mode):
            return None
    except OSError:
        return None
    return git_dir


def import_agent_commits(repo: MainRepo, workspace: Path, session_id: str) -> str | None:
    """Fetch the agent's HEAD into ``refs/agentrt/import/<session>``; None if it cannot be read.

    Call only when the container has stopped (the host rewrites the alternates file first, so
    the agent cannot point upload-pack at other host repositories).
    """
    git_dir = _trusted_git_dir(workspace)
    if git_dir is None:
        return None
    info = git_dir / "objects" / "info"
    with contextlib.suppress(OSError):
        if info.is_symlink():
            info.unlink()
        info.mkdir(exist_ok=True)
        for name in ("alternates", "http-alternates"):
            target = info / name
            if target.is_symlink() or target.exists():
                target.unlink()
        (info / "alternates").write_text(f"{repo.objects_dir}\n")
    ref = f"{IMPORT_REF_PREFIX}/{session_id}"
    # git clears -c options for a local upload-pack, so its safe settings are given here; the
    # directory is the agent's (another uid), hence the explicit safe.directory for it alone.
    upload_pack = " ".join(shlex.quote(part) for part in (
        "git", "-c", f"safe.directory={git_dir}", "-c", "core.hooksPath=/dev/null",
        "-c", "core.fsmonitor=false", "upload-pack",
    ))
    proc = repo.git(
        "fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-recurse-submodules",
        f"--upload-pack={upload_pack}", "--end-of-options", str(git_dir), f"+HEAD:{ref}",
        config=(
            "protocol.file.allow=always",
            "transfer.fsckObjects=true",
            "fetch.fsckObjects=true",
        ),
        check=False,
        timeout=300,
    )
    if proc.returncode != 0:
        return None
    head = repo.git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}", check=False)
    return head.stdout.strip() or None


def snapshot_tree(
    repo: MainRepo, workspace: Path, parent: str, index_file: Path, object_dir: Path | None = None
) -> str:
    """The tree of ``workspace`` as it is now, starting from ``parent``'s tree.

    Runs with the main repository's git dir and a private index: nothing the agent wrote in
    its own ``.git`` is consulted, ``.git`` entries are skipped by git, symlinks are stored
    as links and never followed.
    """
    env = {"GIT_INDEX_FILE": str(index_file)}
    keep_index = object_dir is not None and index_file.exists()
    if object_dir is not None:
        env.update(_private_objects(repo, object_dir))
    if not keep_index:
        with contextlib.suppress(FileNotFoundError):
            index_file.unlink()
    try:
        if not keep_index:
            # A live scan keeps its index between passes so only changed files are re-read.
            repo.git("read-tree", parent, env=env)
        run_git(["add", "-A", "--ignore-errors", "--", "."], git_dir=repo.git_dir,
                work_tree=workspace, env=env, check=False,
                config=("core.autocrlf=false", *driver_overrides(repo)))
        return repo.git("write-tree", env=env).stdout.strip()
    finally:
        if object_dir is None:
            with contextlib.suppress(FileNotFoundError):
                index_file.unlink()


def _private_objects(repo: MainRepo, object_dir: Path) -> dict[str, str]:
    """Git environment writing new objects to ``object_dir``, reading the main store too.

    Live reads use it: the shared store is readable by every running container, and a live
    session's work must stay private to it.
    """
    object_dir.mkdir(parents=True, exist_ok=True)
    return {"GIT_OBJECT_DIRECTORY": str(object_dir),
            "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(repo.objects_dir)}


def snapshot(
    repo: MainRepo,
    workspace: Path,
    session_id: str,
    branch: str,
    index_file: Path,
    *,
    import_commits: bool = True,
    warnings: list[str] | None = None,
) -> str:
    """Bring the session's work onto ``branch`` in the main repository; return its new head.

    The agent's own commits (when ``import_commits``) come first, then one snapshot commit of
    whatever it left uncommitted. The branch only moves forward from what it is now.
    """
    branch_ref = f"refs/heads/{branch}"
    current = repo.branch_head(branch)
    if current is None:
        raise WorkspaceError(f"session branch {branch} is missing")
    parent = current
    if import_commits:
        imported = import_agent_commits(repo, workspace, session_id)
        if imported:
            parent = imported
        elif warnings is not None and (workspace / ".git").exists():
            warnings.append("the agent's own commits could not be imported (its .git was "
                            "replaced, or fsck refused its objects); its files were saved as a "
                            "snapshot instead")
    if workspace.is_dir() and not workspace.is_symlink():
        tree = snapshot_tree(repo, workspace, parent, index_file)
        if tree != repo.tree_of(parent):
            parent = repo.git(
                "commit-tree", tree, "-p", parent,
                "-m", f"agentrt: snapshot of uncommitted work in session {session_id}",
            ).stdout.strip()
    if parent != current:
        with repo_lock(repo):
            repo.update_ref(branch_ref, parent, current, f"agentrt: snapshot {session_id}")
    with contextlib.suppress(GitError):
        repo.git("update-ref", "-d", f"{IMPORT_REF_PREFIX}/{session_id}")
    return parent


def changed_paths(
    repo: MainRepo, workspace: Path, base: str, index_file: Path, object_dir: Path
) -> set[str]:
    """Paths a live session changed against ``base`` (for the conflict radar).

    Objects go to the session's private ``object_dir``, never to the shared store.
    """
    try:
        tree = snapshot_tree(repo, workspace, base, index_file, object_dir)
        out = repo.git("diff-tree", "-r", "--name-only", "--no-renames", "-z", base, tree,
                       env=_private_objects(repo, object_dir)).stdout
    except GitError:
        return set()
    return {p for p in out.split("\0") if p}


def resolve_base(repo: MainRepo, base: str) -> str:
    """Resolve the run's base commit-ish, naming the field on failure."""
    try:
        return repo.rev_parse(base)
    except ConfigError as exc:
        raise ConfigError(f"[run] field base: {exc}") from None
