"""Safe git invocation for the host side, and ref-name checks.

Agents write the trees the supervisor reads, so every git command agentrt runs on the host goes
through :func:`run_git`, which

* ignores system and global config (``GIT_CONFIG_NOSYSTEM``, ``GIT_CONFIG_GLOBAL=/dev/null``),
* switches off hooks, fsmonitor, automatic gc/maintenance, submodule recursion, the pager,
  editors, external diff and textconv, and local-file transport,
* never prompts (``GIT_TERMINAL_PROMPT=0``).

It never runs git *inside* a repository an agent can write: the main repository is the user's
(trusted) and the session's own repository is only read through ``git fetch`` (upload-pack,
which ignores the repository's hooks and dangerous config) with ``transfer.fsckObjects``.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from runtime.config import branch_name_problem
from runtime.errors import ConfigError, GitError

SAFE_CONFIG: tuple[str, ...] = (
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "core.untrackedCache=false",
    "core.pager=cat",
    "core.editor=true",
    "core.sshCommand=false",
    "core.askPass=",
    "credential.helper=",
    "diff.external=",
    "diff.noprefix=false",
    "safe.bareRepository=explicit",
    "protocol.file.allow=never",
    "protocol.ext.allow=never",
    "submodule.recurse=false",
    "gc.auto=0",
    "maintenance.auto=false",
    "advice.detachedHead=false",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "init.defaultBranch=main",
    "hook.post-checkout.enabled=false",
    "hook.pre-commit.enabled=false",
    "hook.post-commit.enabled=false",
    "hook.reference-transaction.enabled=false",
)

AUTHOR_NAME = "agentrt"
AUTHOR_EMAIL = "agentrt@localhost"

_MIN_VERSION = (2, 38)


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every host-side git command runs with."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("GIT_") and key not in ("EDITOR", "VISUAL", "PAGER")
    }
    env.update(
        {
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_EDITOR": "true",
            "GIT_PAGER": "cat",
            "GIT_AUTHOR_NAME": AUTHOR_NAME,
            "GIT_AUTHOR_EMAIL": AUTHOR_EMAIL,
            "GIT_COMMITTER_NAME": AUTHOR_NAME,
            "GIT_COMMITTER_EMAIL": AUTHOR_EMAIL,
            "LC_ALL": "C",
        }
    )
    if extra:
        env.update(extra)
    return env


def git_argv(args: Sequence[str], *, git_dir: Path | None = None,
             work_tree: Path | None = None, config: Sequence[str] = ()) -> list[str]:
    """The command line of a host-side git: the safe configuration, an explicit git dir and
    work tree (never discovered), then ``args``."""
    cmd = ["git"]
    for item in (*SAFE_CONFIG, *config):
        cmd += ["-c", item]
    if git_dir is not None:
        cmd.append(f"--git-dir={git_dir}")
    if work_tree is not None:
        cmd.append(f"--work-tree={work_tree}")
    return cmd + list(args)


def run_git(
    args: Sequence[str],
    *,
    git_dir: Path | None = None,
    work_tree: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    config: Sequence[str] = (),
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float | None = 600,
) -> subprocess.CompletedProcess[str]:
    """Run git with the safe configuration; raise :class:`GitError` on failure if ``check``.

    ``git_dir``/``work_tree`` are passed explicitly so that git never discovers a repository
    (or a swapped ``.git`` pointer) from the current directory.
    """
    cmd = git_argv(args, git_dir=git_dir, work_tree=work_tree, config=config)
    data = input.decode() if isinstance(input, bytes) else input
    try:
        proc = subprocess.run(
            cmd,
            cwd=str(cwd or work_tree or git_dir or Path.cwd()),
            env=git_env(env),
            input=data,
            capture_output=True,
            # Agents name files: bytes that are not UTF-8 must pass through, never crash.
            encoding="utf-8",
            errors="surrogateescape",
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GitError(f"git {' '.join(args[:2])} could not run: {exc}") from exc
    if check and proc.returncode != 0:
        raise GitError(f"git {' '.join(str(a) for a in args[:3])} failed", proc.stderr)
    return proc


def git_version() -> tuple[int, int, int]:
    """The installed git's version as a tuple."""
    out = run_git(["--version"]).stdout
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    if not match:
        raise GitError(f"cannot parse git version from {out!r}")
    return int(match[1]), int(match[2]), int(match[3] or 0)


def require_git_version() -> None:
    """Raise ConfigError if git is older than 2.38 (needed for ``merge-tree --write-tree``).

    Called when a repository is opened (:class:`MainRepo`), so an old git is refused before
    anything starts rather than when the first merge runs; git is asked once per process."""
    version = _installed_git_version()
    if version[:2] < _MIN_VERSION:
        raise ConfigError(
            f"git {'.'.join(map(str, version))} is too old: agentrt needs git >= 2.38")


@functools.cache
def _installed_git_version() -> tuple[int, int, int]:
    return git_version()


def check_branch_name(name: str) -> str:
    """Validate a branch name the way ``git check-ref-format --branch`` does; return it.

    The pure rules first (:func:`runtime.config.branch_name_problem`), then git's own word.
    """
    if branch_name_problem(name):
        raise ConfigError(f"invalid branch name {name!r}")
    proc = run_git(["check-ref-format", "--branch", name], cwd=Path("/"), check=False)
    if proc.returncode != 0:
        raise ConfigError(f"invalid branch name {name!r}")
    return name


class MainRepo:
    """The user's repository (trusted): where branches are created and work is imported.

    ``folder`` is None for a git repository; for a folder in directory mode
    (:mod:`runtime.git.directory_mode`) it is the folder, ``root`` too, and ``git_dir`` the private
    bare repository agentrt keeps of it.
    """

    def __init__(self, path: str | Path) -> None:
        require_git_version()
        root = Path(path).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(f"--repo {path}: not a directory")
        proc = run_git(
            ["rev-parse", "--show-toplevel", "--git-common-dir"], cwd=root, check=False
        )
        self.folder: Path | None = None
        if proc.returncode != 0:
            # A folder agentrt already keeps in directory mode: its private repository.
            from runtime.git.directory_mode import existing_private_repo

            private = existing_private_repo(root)
            if private is None:
                raise ConfigError(
                    f"--repo {path}: not a git repository (run `git init` there, pass --repo, "
                    "or set isolation_strategy = \"directory\")")
            self.root, self.git_dir, self.folder = root, private, root
            return
        top, common = proc.stdout.splitlines()[:2]
        self.root = Path(top)
        common_path = Path(common)
        self.git_dir = (common_path if common_path.is_absolute() else root / common_path).resolve()
        if self.root != root and not str(root).startswith(str(self.root)):
            raise ConfigError(f"--repo {path}: could not find the repository top level")

    @classmethod
    def for_folder(cls, folder: Path, git_dir: Path) -> MainRepo:
        """A folder that is no git repository, kept in agentrt's private repository ``git_dir``
        (bare; ``folder`` is its work tree only when agentrt snapshots or writes back)."""
        repo = cls.__new__(cls)
        repo.root, repo.git_dir, repo.folder = folder, git_dir, folder
        return repo

    @property
    def objects_dir(self) -> Path:
        """The object directory sessions borrow read-only."""
        return self.git_dir / "objects"

    @property
    def state_dir(self) -> Path:
        """Where agentrt keeps this repository's state (``.git/agentrt``)."""
        return self.git_dir / "agentrt"

    def git(self, *args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run git against this repository's git dir (no working tree unless given)."""
        return run_git(list(args), git_dir=self.git_dir, cwd=self.git_dir, **kwargs)  # type: ignore[arg-type]

    def rev_parse(self, rev: str) -> str:
        """Resolve ``rev`` to a full commit id; ConfigError if it names no commit."""
        proc = self.git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}",
                        check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            raise ConfigError(f"base {rev!r}: not a commit in {self.root}")
        return proc.stdout.strip()

    def current_branch(self) -> str | None:
        """The branch checked out in the main working tree, or None when detached."""
        proc = self.git("symbolic-ref", "--quiet", "--short", "HEAD", check=False)
        return proc.stdout.strip() or None

    def branch_head(self, branch: str) -> str | None:
        """The commit a branch points to, or None if it does not exist."""
        proc = self.git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
        return proc.stdout.strip() or None

    def tree_of(self, commit: str) -> str:
        """The tree id of ``commit``."""
        return self.git("rev-parse", f"{commit}^{{tree}}").stdout.strip()

    def update_ref(
        self, ref: str, new: str, old: str | None = None, message: str = "agentrt"
    ) -> None:
        """Atomically move ``ref`` to ``new`` (only from ``old`` when given)."""
        args = ["update-ref", "-m", message, ref, new]
        if old is not None:
            args.append(old)
        self.git(*args)
