"""Directory mode: agents on a project folder that is no git repository.

With ``isolation_strategy = "directory"`` agentrt keeps a *private* bare repository of the
folder in its own state directory (``$AGENTRT_STATE_HOME``, else ``$XDG_STATE_HOME/agentrt``,
else ``~/.local/state/agentrt``)::

    dirs/<first 16 hex of sha256(folder path)>/
    ├── folder          the folder's absolute path (for people and `ls`)
    ├── snapshot.lock   flock around snapshots
    └── repo.git/       bare; branch main = the folder as agentrt last saw or wrote it

The folder itself never gets a ``.git``. When a run opens the folder, :func:`snapshot` commits
its current files onto ``main`` (``.gitignore`` files in the folder are honoured), so sessions,
branches, conflict detection, reports and ``agentrt revert`` work exactly as on a repository:
the run uses the private repository, named by a :class:`~runtime.git.safe_git.MainRepo` whose
``folder`` is set.

A merge into ``main`` (or a revert) is written back into the folder by :func:`advance_folder`:
for every path the new commit changes, the folder's file must still be what ``main`` holds (or
already be the new content); otherwise the folder changed underneath in that file since the
snapshot, and the merge is refused for that session (``conflicts``, kind ``changed in folder``;
exit 3) with nothing moved or written. Files the agents did not touch are never read or
written, so edits elsewhere in the folder are kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import ConfigError, MergeError
from runtime.git.safe_git import MainRepo, run_git

STATE_HOME_ENV = "AGENTRT_STATE_HOME"
CHANGED_IN_FOLDER = "changed in folder"
_SNAPSHOT_MESSAGE = "agentrt: snapshot of the folder {folder}"


def state_home() -> Path:
    """agentrt's own state directory (not a repository's): where private repositories live."""
    if os.environ.get(STATE_HOME_ENV):
        return Path(os.environ[STATE_HOME_ENV]).expanduser().resolve()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return (base / "agentrt").resolve()


def private_dir(folder: Path) -> Path:
    """The directory agentrt keeps for ``folder`` (an absolute, resolved path)."""
    digest = hashlib.sha256(os.fsencode(folder)).hexdigest()[:16]
    return state_home() / "dirs" / digest


def existing_private_repo(folder: Path) -> Path | None:
    """The private repository of ``folder`` if directory mode has been used on it."""
    git_dir = private_dir(folder) / "repo.git"
    return git_dir if (git_dir / "HEAD").is_file() else None


def in_git_repository(folder: Path) -> bool:
    """True if ``folder`` is inside a git working tree (git would find a repository there)."""
    proc = run_git(["rev-parse", "--is-inside-work-tree"], cwd=folder, check=False)
    return proc.returncode == 0 and proc.stdout.strip() == "true"


def open_repo(path: str | os.PathLike[str], strategy: str) -> MainRepo:
    """The repository a run on ``path`` uses: the repository itself (``git_worktree``), or the
    folder's private repository after a fresh snapshot (``directory``). ConfigError when the
    path does not fit the strategy."""
    if strategy == "directory":
        return open_folder(path)
    folder = Path(path).expanduser().resolve()
    if folder.is_dir() and not in_git_repository(folder):
        raise ConfigError(
            f"--repo {path}: not a git repository (run `git init` there, or set "
            "isolation_strategy = \"directory\" to keep a private repository of the folder)")
    return MainRepo(Path(path))


def open_folder(path: str | os.PathLike[str]) -> MainRepo:
    """Snapshot the folder into its private repository (made on first use); return it."""
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"--repo {path}: not a directory")
    if in_git_repository(folder):
        raise ConfigError(
            f"--repo {path}: isolation_strategy = \"directory\" is for folders that are no git "
            "repository, and this one is inside one: use isolation_strategy = \"git_worktree\"")
    home = private_dir(folder)
    if folder == home or folder.is_relative_to(home):
        raise ConfigError(f"--repo {path}: is inside agentrt's own state directory")
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    git_dir = home / "repo.git"
    with _locked(home / "snapshot.lock"):
        if existing_private_repo(folder) is None:
            run_git(["init", "-q", "--bare", str(git_dir)], cwd=home)
            (home / "folder").write_text(f"{folder}\n", encoding="utf-8")
        repo = MainRepo.for_folder(folder, git_dir)
        snapshot(repo)
    return repo


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def snapshot(repo: MainRepo) -> str:
    """Commit the folder's files onto ``main`` if they differ from it; return main's commit."""
    folder = _folder(repo)
    excludes = []
    # A state directory inside the folder (AGENTRT_STATE_HOME=folder/...) is never snapshotted.
    if state_home().is_relative_to(folder) and state_home() != folder:
        excludes.append(f":(exclude,top){state_home().relative_to(folder)}")
    run_git(["add", "-A", "--", ".", *excludes], git_dir=repo.git_dir, work_tree=folder,
            cwd=folder)
    tree = run_git(["write-tree"], git_dir=repo.git_dir, cwd=repo.git_dir).stdout.strip()
    head = repo.branch_head("main")
    if head is not None and repo.tree_of(head) == tree:
        return head
    message = _SNAPSHOT_MESSAGE.format(folder=folder) + "\n"
    parents = ["-p", head] if head else []
    commit = repo.git("commit-tree", tree, *parents, input=message).stdout.strip()
    repo.update_ref("refs/heads/main", commit, head or "0" * 40, "agentrt: folder snapshot")
    return commit


def _folder(repo: MainRepo) -> Path:
    if repo.folder is None:
        raise ConfigError(f"{repo.root} is a git repository, not a folder in directory mode")
    return repo.folder


@dataclass(frozen=True)
class _Change:
    path: str
    old_mode: str
    old_blob: str | None  # None: the path did not exist
    new_mode: str
    new_blob: str | None  # None: the path is deleted


def advance_folder(repo: MainRepo, ref: str, old: str, new: str,
                   config: tuple[str, ...] = ()) -> list[str]:
    """Move ``ref`` from ``old`` to ``new`` and write the changed files into the folder.

    Returns the paths the folder changed underneath (its file is neither what ``old`` holds nor
    what ``new`` holds); then nothing moved and nothing was written. Otherwise the ref moves
    (compare-and-swap) and every changed path is written, each new file first to a temporary
    file beside it and renamed into place.
    """
    folder = _folder(repo)
    changes = _changes(repo, old, new, config)
    clashes = [c.path for c in changes if not _matches(folder, c)]
    if clashes:
        return clashes
    staged: list[tuple[_Change, Path | None]] = []
    try:
        for change in changes:
            staged.append((change, _stage(repo, folder, change, config)))
        repo.update_ref(ref, new, old, "agentrt: merge into folder")
    except BaseException:
        for _, temp in staged:
            if temp is not None:
                with contextlib.suppress(OSError):
                    temp.unlink()
        raise
    for change, temp in staged:
        _apply(folder, change, temp)
    return []


def _changes(repo: MainRepo, old: str, new: str, config: tuple[str, ...]) -> list[_Change]:
    out = repo.git("diff-tree", "-r", "-z", "--no-renames", "--no-ext-diff", old, new,
                   config=config).stdout
    fields = out.split("\0")
    changes = []
    for meta, path in zip(fields[0::2], fields[1::2], strict=False):
        if not meta.startswith(":"):
            continue
        old_mode, new_mode, old_blob, new_blob, _status = meta[1:].split(" ")
        changes.append(_Change(
            path=path, old_mode=old_mode, new_mode=new_mode,
            old_blob=None if set(old_blob) == {"0"} else old_blob,
            new_blob=None if set(new_blob) == {"0"} else new_blob))
    return changes


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _current(folder: Path, path: str) -> tuple[str, str] | None:
    """The folder's entry at ``path`` as (kind, blob id), None if absent; kind ``dir`` for a
    directory (or a path through a non-directory), which never matches a blob."""
    target = folder / path
    try:
        st = target.lstat()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return ("dir", "")
    if stat.S_ISLNK(st.st_mode):
        return ("link", _blob_id(os.fsencode(os.readlink(target))))
    if stat.S_ISREG(st.st_mode):
        return ("file", _blob_id(target.read_bytes()))
    return ("dir", "")


def _as_entry(mode: str, blob: str | None) -> tuple[str, str] | None:
    if blob is None:
        return None
    return ("link" if mode == "120000" else "file", blob)


def _matches(folder: Path, change: _Change) -> bool:
    if change.new_mode == "160000" or not _safe_parents(folder, change.path):
        return False
    current = _current(folder, change.path)
    return current in (_as_entry(change.old_mode, change.old_blob),
                       _as_entry(change.new_mode, change.new_blob))


def _safe_parents(folder: Path, path: str) -> bool:
    """Every existing parent of ``path`` inside the folder is a real directory (no symlink)."""
    here = folder
    for part in Path(path).parts[:-1]:
        here = here / part
        try:
            st = here.lstat()
        except FileNotFoundError:
            return True
        if not stat.S_ISDIR(st.st_mode):
            return False
    return True


def _stage(repo: MainRepo, folder: Path, change: _Change,
           config: tuple[str, ...]) -> Path | None:
    """Write the new content of ``change`` to a temporary file beside its path."""
    if change.new_blob is None:
        return None
    target = folder / change.path
    target.parent.mkdir(parents=True, exist_ok=True)
    data = repo.git("cat-file", "blob", change.new_blob, config=config).stdout
    raw = data.encode("utf-8", "surrogateescape")
    fd, name = tempfile.mkstemp(prefix=".agentrt-", dir=target.parent)
    temp = Path(name)
    if change.new_mode == "120000":
        os.close(fd)
        temp.unlink()
        os.symlink(os.fsdecode(raw), temp)
        return temp
    with os.fdopen(fd, "wb") as handle:
        handle.write(raw)
    owner = folder.stat()
    os.chmod(temp, 0o755 if change.new_mode == "100755" else 0o644)
    if os.geteuid() == 0:
        os.lchown(temp, owner.st_uid, owner.st_gid)
    return temp


def _apply(folder: Path, change: _Change, temp: Path | None) -> None:
    target = folder / change.path
    try:
        if temp is not None:
            os.replace(temp, target)
            return
        target.unlink(missing_ok=True)
        parent = target.parent
        while parent != folder and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    except OSError as exc:
        raise MergeError(f"the merge moved main, but {target} could not be written: {exc}; "
                         f"`git --git-dir={_folder_git(folder)} diff` shows what is missing") \
            from exc


def _folder_git(folder: Path) -> Path:
    return private_dir(folder) / "repo.git"
