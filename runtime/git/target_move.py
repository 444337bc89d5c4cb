"""Moving a target branch from one commit to another with its checkout (or, in directory
mode, its folder) following, so that neither is ever left apart from the other.

The branch moves with ``git update-ref <ref> <new> <old>``, a compare-and-swap; the tree and
index follow with ``git read-tree -m -u <old> <new>``, tried dry first. SIGINT and SIGTERM wait
while both happen; against SIGKILL a note (``merge-checkout-pending.json``) lets the next merge
finish moving the checkout (:func:`finish_interrupted_checkout`) before anything else.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runtime.errors import MergeError
from runtime.git.conflicts import SafeGit
from runtime.models import Conflict


def advance_target(git: SafeGit, ref: str, old: str, new: str,
                   worktree: Path | None) -> list[Conflict]:
    """Move the target ``ref`` from ``old`` to ``new``, with its checkout (or, in directory
    mode, its folder) following. Returns the folder's paths that changed underneath (then
    nothing moved); raises MergeError if the checkout cannot follow."""
    if git.repo.folder is not None:
        from runtime.git.directory_mode import CHANGED_IN_FOLDER, advance_folder

        with _signals_deferred():
            paths = advance_folder(git.repo, ref, old, new, git.config)
        return [Conflict(path=p, kind=CHANGED_IN_FOLDER) for p in paths]
    _advance(git, ref, old, new, worktree)
    return []


def _advance(git: SafeGit, ref: str, old: str, new: str, worktree: Path | None) -> None:
    """Move ``ref`` from ``old`` to ``new`` and, if it is checked out, the tree with it."""
    if worktree is not None:
        # Dry run first: if the checkout would fail (a local edit since the start, an untracked
        # file in the way) nothing has moved yet.
        proc = _read_tree(git, worktree, old, new, dry_run=True)
        if proc.returncode != 0:
            raise MergeError(
                f"cannot update the checkout in {worktree} to the merge: {proc.stderr.strip()}"
                " (commit, stash or move those files, or merge into another target with --target)"
            )
    # Ctrl-C between moving the branch and updating its checkout would leave them apart; the
    # signals wait (git children inherit the mask, so a terminal's SIGINT spares them too).
    pending = _pending_file(git)
    with _signals_deferred():
        if worktree is not None:
            # A SIGKILL between the two steps below cannot be deferred: leave a note so the
            # next merge finishes moving the checkout before anything else.
            pending.parent.mkdir(parents=True, exist_ok=True)
            pending.write_text(json.dumps({"ref": ref, "old": old, "new": new,
                                           "worktree": str(worktree)}))
        git.run("update-ref", "-m", "agentrt: merge", ref, new, old)
        if worktree is None:
            return
        proc = _read_tree(git, worktree, old, new, dry_run=False)
        if proc.returncode == 0:
            pending.unlink()
            return
        # Put the branch back so the checkout and its branch agree again.
        undo = git.run("update-ref", "-m", "agentrt: undo merge", ref, old, new, check=False)
        if undo.returncode == 0:
            pending.unlink()
    state = "the branch was put back" if undo.returncode == 0 else (
        f"the branch could not be put back ({undo.stderr.strip()})"
    )
    raise MergeError(f"cannot update the checkout in {worktree}: {proc.stderr.strip()}; {state}")


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for this thread (and the git it starts) until the block ends."""
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _pending_file(git: SafeGit) -> Path:
    return git.repo.state_dir / "merge-checkout-pending.json"


def finish_interrupted_checkout(git: SafeGit) -> None:
    """Complete a checkout update an earlier merge was killed in the middle of."""
    pending = _pending_file(git)
    if not pending.exists():
        return
    try:
        note = json.loads(pending.read_text())
        ref, old, new, worktree = note["ref"], note["old"], note["new"], Path(note["worktree"])
    except (OSError, ValueError, KeyError, TypeError):
        pending.unlink(missing_ok=True)
        return
    current = git.run("rev-parse", "--verify", "--quiet", ref, check=False).stdout.strip()
    if current == new:
        proc = _read_tree(git, worktree, old, new, dry_run=False)
        if proc.returncode != 0:
            raise MergeError(
                f"an earlier merge was interrupted after moving {ref} to {new[:10]} but before "
                f"updating the checkout in {worktree}: {proc.stderr.strip()}; finish it with "
                f"`git -C {worktree} read-tree -m -u {old} {new}` and merge again")
    pending.unlink(missing_ok=True)


def _read_tree(
    git: SafeGit, worktree: Path, old: str, new: str, *, dry_run: bool
) -> subprocess.CompletedProcess[str]:
    args = ["read-tree", "-m", "-u", *(["-n"] if dry_run else []), old, new]
    return git.run(*args, work_tree=worktree, check=False)
