"""What the report shows of each session's work, read on the host from the repository.

The files a session's branch changed against its base (``git diff --numstat``), its commits
(``git log base..branch``), the last lines of its saved output, and the order the run's merges
landed on the target. The texts are the agent's: whoever shows them escapes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runtime.cli.session_output import saved_log_tail
from runtime.errors import GitError
from runtime.git.safe_git import MainRepo, run_git
from runtime.git.session_work import work_head

if TYPE_CHECKING:
    from runtime.models import RunReport, SessionResult

MAX_FILES, MAX_COMMITS, MAX_HISTORY = 200, 50, 10_000  # what the report lists at most


@dataclass(frozen=True)
class FileChange:
    """One file a session changed: lines added and deleted (None for a binary file)."""

    path: str
    added: int | None
    deleted: int | None
    old_path: str | None = None  # a rename's former name


@dataclass(frozen=True)
class Commit:
    """One commit on a session's branch, ``base..branch``."""

    commit: str
    subject: str
    author: str = ""


@dataclass
class SessionWork:
    """What a session did, read on the host: its branch against its base, and its output.

    ``more_files`` / ``more_commits`` count what was left out of the lists."""

    files: list[FileChange] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    output: list[str] = field(default_factory=list)
    more_files: int = 0
    more_commits: int = 0
    head: str | None = None


@dataclass
class TargetStory:
    """Where the merges took the target: session ids in the order they landed, and the
    target's commit now (None if unknown)."""

    merged_in_order: list[str] = field(default_factory=list)
    head_now: str | None = None


def session_work(repo: MainRepo, result: SessionResult, lines: int = 20) -> SessionWork:
    """What a session did, read on the host from its branch in the repository
    (``git diff --numstat base..branch``, ``git log base..branch``) and its saved output's
    last ``lines`` lines. The texts are the agent's: the page escapes them."""
    work = SessionWork(output=saved_log_tail(repo, result.id, lines))
    head = work_head(repo, result)
    if not result.base_commit or not head:
        return work
    work.head = head
    try:
        numstat = run_git(["diff", "--no-ext-diff", "--no-textconv", "--no-color", "--numstat",
                           "-z", "-M", "--end-of-options", result.base_commit, head, "--"],
                          git_dir=repo.git_dir, cwd=repo.git_dir).stdout
        log = run_git(["log", "--no-color", f"--max-count={MAX_COMMITS + 1}",
                       "--format=%H%x1f%an%x1f%s%x00", "--end-of-options",
                       f"{result.base_commit}..{head}", "--"],
                      git_dir=repo.git_dir, cwd=repo.git_dir).stdout
    except GitError:  # a base or branch gone from the repository: say nothing rather than fail
        return work
    files = parse_numstat(numstat)
    work.files, work.more_files = files[:MAX_FILES], max(0, len(files) - MAX_FILES)
    commits = []
    for record in log.split("\x00"):
        fields = record.lstrip("\n").split("\x1f", 2)
        if len(fields) == 3:
            commits.append(Commit(commit=fields[0], author=fields[1], subject=fields[2]))
    work.commits = commits[:MAX_COMMITS]
    work.more_commits = max(0, len(commits) - MAX_COMMITS)
    if len(commits) > MAX_COMMITS:
        count = run_git(["rev-list", "--count", "--end-of-options",
                         f"{result.base_commit}..{head}", "--"],
                        git_dir=repo.git_dir, cwd=repo.git_dir, check=False).stdout.strip()
        work.more_commits = int(count) - MAX_COMMITS if count.isdigit() else 1
    return work


def parse_numstat(output: str) -> list[FileChange]:
    """``git diff --numstat -z`` records: ``A<TAB>D<TAB>path<NUL>``, or for a rename
    ``A<TAB>D<TAB><NUL>old<NUL>new<NUL>``; ``-`` counts mean a binary file."""
    tokens = output.split("\x00")
    changes: list[FileChange] = []
    i = 0
    while i < len(tokens):
        fields = tokens[i].lstrip("\n").split("\t", 2)
        i += 1
        if len(fields) != 3:
            continue
        added, deleted, path = fields
        old = None
        if not path and i + 1 < len(tokens):
            old, path = tokens[i], tokens[i + 1]
            i += 2
        changes.append(FileChange(path, int(added) if added.isdigit() else None,
                                  int(deleted) if deleted.isdigit() else None, old))
    return changes


def target_story(repo: MainRepo, report: RunReport) -> TargetStory:
    """The run's merged sessions in the order their merge commits landed on the target
    (first-parent history), and where the target is now. Merges no longer on the target
    (rewritten, or merged elsewhere) follow, in merge order."""
    from runtime.run.merging import merge_order

    merged = [s for s in merge_order(report.sessions) if s.merge.status == "merged"]
    head = repo.branch_head(report.target) if report.target else None
    position: dict[str, int] = {}
    if head and merged:
        history = run_git(["rev-list", "--first-parent", f"--max-count={MAX_HISTORY}",
                           "--end-of-options", head, "--"],
                          git_dir=repo.git_dir, cwd=repo.git_dir, check=False).stdout.split()
        position = {commit: -n for n, commit in enumerate(history)}
    ranked = sorted(enumerate(merged), key=lambda item: (
        item[1].merge.merge_commit not in position,
        position.get(item[1].merge.merge_commit or "", 0), item[0]))
    return TargetStory([s.id for _, s in ranked], head)
