"""Conflict detection between branches, without a working tree or an index.

Everything here runs ``git merge-tree --write-tree`` (git >= 2.38), which computes the merge
entirely in the object database: the user's checkout, index and ``MERGE_HEAD`` are never touched.
The only side effect is new blob and tree objects, which are unreferenced and gc'd like any other.

Agents write the trees being merged, including ``.gitattributes``, so an agent can choose which
filter or merge driver git applies to which file. The commands are the user's (repo config), but
the agent would pick the input and the moment. :func:`driver_overrides` therefore neutralises every
filter and user-defined merge driver the repository config defines for the runtime's own git
commands: filters become no-ops (blobs are used as stored) and a user-defined merge driver is
replaced by ``false``, so a path that selects one is reported as a conflict instead of running it.
System and global config are ignored already by :func:`runtime.git.safe_git.run_git`.

Line ranges (:attr:`Conflict.ours_lines` / :attr:`Conflict.theirs_lines`) are an approximation:
each side's changes are ``git diff -U0`` hunks of the path's blob against the merge base's blob
(the stage-1 entry merge-tree reports), and the hunks reported are those whose base ranges overlap
or touch a hunk of the other side, which is the rule xdiff uses to declare a conflict. Ranges are
1-based and inclusive, in that side's own version of the file; a pure deletion is reported as the
point ``(n, n)`` where ``n`` is the line after which the deleted lines used to be (0 = file start).
When no hunk overlaps (for example a conflict forced by a neutralised merge driver), every hunk of
each side is reported. Add/add conflicts have no base: the two sides are diffed against each other.
A side that deleted the file, or a binary file, has no line ranges.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations

from runtime.errors import GitError, MergeError
from runtime.git.safe_git import MainRepo
from runtime.models import Conflict

__all__ = [
    "MergeCheck",
    "SafeGit",
    "check_commits",
    "check_merge",
    "conflict_matrix",
    "driver_overrides",
]

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", re.MULTILINE)
_DRIVER_KEYS = r"^(filter|merge)\..+\.(clean|smudge|process|driver|required)$"
# merge-tree's generic conflict types: a binary add/add reports both "CONFLICT (binary)" and
# "CONFLICT (contents)", and any specific type is the more useful one to report.
_WEAK_KINDS = ("contents", "content")


@dataclass(frozen=True)
class MergeCheck:
    """The outcome of merging ``theirs`` into ``ours`` in memory.

    ``tree`` is the merged tree when ``clean``; with conflicts it is the tree merge-tree wrote
    with conflict markers, which callers must never commit, so it is ``None`` then.
    """

    clean: bool
    tree: str | None
    conflicts: list[Conflict] = field(default_factory=list)
    ours: str = ""
    theirs: str = ""


def driver_overrides(repo: MainRepo) -> tuple[str, ...]:
    """``-c`` settings that disable every filter and user merge driver the repo config defines."""
    proc = repo.git("config", "--null", "--get-regexp", _DRIVER_KEYS, check=False)
    overrides: list[str] = ["merge.renormalize=false"]
    seen: set[tuple[str, str]] = set()
    for entry in proc.stdout.split("\0"):
        key = entry.split("\n", 1)[0]
        if "." not in key:
            continue
        section, rest = key.split(".", 1)
        name = rest.rsplit(".", 1)[0]
        if (section, name) in seen:
            continue
        seen.add((section, name))
        if section == "filter":
            # An empty command means "no filter" to git; required=false keeps it from failing.
            overrides += [f"filter.{name}.{var}=" for var in ("clean", "smudge", "process")]
            overrides.append(f"filter.{name}.required=false")
        else:
            # A user-defined driver cannot be unset from the command line; `false` makes every
            # path that selects it a conflict, which is reported and left for the user.
            overrides.append(f"merge.{name}.driver=false")
    return tuple(overrides)


class SafeGit:
    """Git against a :class:`MainRepo` with filters and merge drivers neutralised.

    Git failures come out as :class:`MergeError`, chained to the :class:`GitError`.
    """

    def __init__(self, repo: MainRepo) -> None:
        self.repo = repo
        self.config = driver_overrides(repo)

    def run(
        self, *args: str, check: bool = True, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        """Run git in the repo's git dir; raise MergeError on failure if ``check``."""
        try:
            return self.repo.git(*args, config=self.config, check=check, **kwargs)
        except GitError as exc:
            name = next((a for a in args if not a.startswith("-")), "")
            raise MergeError(f"git {name} failed in {self.repo.root}: {exc}") from exc

    def commit(self, rev: str) -> str:
        """Resolve a branch name (preferred) or any commit-ish to a full commit id."""
        for candidate in (f"refs/heads/{rev}", rev):
            proc = self.run("rev-parse", "--verify", "--quiet", "--end-of-options",
                            f"{candidate}^{{commit}}", check=False)
            if proc.returncode == 0 and proc.stdout.strip():
                return proc.stdout.strip()
        raise MergeError(f"{rev!r} names no branch or commit in {self.repo.root}")

    def is_ancestor(self, commit: str, of: str) -> bool:
        """True if ``commit`` is reachable from ``of`` (already merged)."""
        proc = self.run("merge-base", "--is-ancestor", commit, of, check=False)
        if proc.returncode not in (0, 1):
            raise MergeError(f"git merge-base failed in {self.repo.root}: {proc.stderr.strip()}")
        return proc.returncode == 0


def check_merge(repo: MainRepo, target: str, branch: str) -> MergeCheck:
    """Would ``branch`` merge cleanly into ``target``? Touches no working tree and no index.

    ``target`` and ``branch`` are branch names (looked up under ``refs/heads/`` first) or any
    commit-ish. Raises :class:`MergeError` if either names no commit or git fails (including
    unrelated histories, which agentrt never produces).
    """
    git = SafeGit(repo)
    return check_commits(git, git.commit(target), git.commit(branch))


def conflict_matrix(repo: MainRepo, branches: list[str]) -> dict[tuple[str, str], list[Conflict]]:
    """Conflicts between every pair of ``branches``, each pair once, in the order given.

    Every pair is a key (an empty list means the two merge cleanly); each Conflict's
    ``with_branch`` is the pair's second branch, ``ours_lines`` refer to the first.
    """
    git = SafeGit(repo)
    heads = {name: git.commit(name) for name in branches}
    matrix: dict[tuple[str, str], list[Conflict]] = {}
    for first, second in combinations(dict.fromkeys(branches), 2):
        result = check_commits(git, heads[first], heads[second])
        matrix[(first, second)] = [
            c.model_copy(update={"with_branch": second}) for c in result.conflicts
        ]
    return matrix


def check_commits(git: SafeGit, ours: str, theirs: str) -> MergeCheck:
    """:func:`check_merge` on two resolved commit ids, reusing one :class:`SafeGit`."""
    proc = git.run("merge-tree", "--write-tree", "-z", ours, theirs, check=False)
    if proc.returncode not in (0, 1):
        raise MergeError(
            f"cannot check merge of {theirs[:12]} into {ours[:12]}: {proc.stderr.strip()}"
        )
    tree, stages, messages = _parse(proc.stdout)
    if proc.returncode == 0:
        return MergeCheck(clean=True, tree=tree, ours=ours, theirs=theirs)
    kinds = _kinds(messages)
    # A CONFLICT message none of whose paths has a conflicted entry (e.g. a directory rename
    # merge-tree could not place) still names a conflict: report its first path.
    for paths, kind in messages:
        if kind.startswith("CONFLICT") and paths and not any(p in stages for p in paths):
            stages[paths[0]] = {}
    conflicts = [
        _conflict(git, path, entries, kinds.get(path)) for path, entries in sorted(stages.items())
    ]
    return MergeCheck(clean=False, tree=None, conflicts=conflicts, ours=ours, theirs=theirs)


def _parse(out: str) -> tuple[str, dict[str, dict[int, str]], list[tuple[list[str], str]]]:
    """Split ``merge-tree -z`` output: tree, {path: {stage: blob}}, [(paths, conflict type)]."""
    head, _, tail = out.partition("\0\0")
    fields = head.split("\0")
    tree = fields[0]
    stages: dict[str, dict[int, str]] = {}
    for entry in fields[1:]:
        if not entry:
            continue
        info, _, path = entry.partition("\t")
        mode, blob, stage = info.split(" ")
        # Only files have lines: a submodule (160000) entry names a commit, not a blob.
        stages.setdefault(path, {})[int(stage)] = blob if mode != "160000" else ""
    messages: list[tuple[list[str], str]] = []
    items = tail.split("\0")
    i = 0
    # Each message: <count> NUL <path>... NUL <conflict-type> NUL <message> NUL
    while i < len(items) and items[i].isdigit():
        count = int(items[i])
        paths = items[i + 1 : i + 1 + count]
        kind = items[i + 1 + count] if i + 1 + count < len(items) else ""
        messages.append((paths, kind))
        i += count + 3
    return tree, stages, messages


def _kinds(messages: list[tuple[list[str], str]]) -> dict[str, str]:
    """The strongest CONFLICT type per path, as the text inside merge-tree's parentheses."""
    kinds: dict[str, str] = {}
    for paths, kind in messages:
        match = re.fullmatch(r"CONFLICT \((.+)\)", kind.strip())
        if not match:
            continue
        name = match[1]
        for path in paths:
            if kinds.get(path) in (None, *_WEAK_KINDS) and name not in _WEAK_KINDS:
                kinds[path] = name
            else:
                kinds.setdefault(path, name)
    return kinds


def _conflict(git: SafeGit, path: str, entries: dict[int, str], kind: str | None) -> Conflict:
    base, ours, theirs = entries.get(1), entries.get(2), entries.get(3)
    lines = all(entries.values())  # "" marks a submodule entry: no line ranges
    if kind is None or kind in _WEAK_KINDS:
        # Content conflicts are told apart by the stages present.
        if base is None and ours and theirs:
            kind = "add/add"
        elif base and (ours is None) != (theirs is None):
            kind = "modify/delete"
        else:
            kind = "content"
    ours_lines: list[tuple[int, int]] = []
    theirs_lines: list[tuple[int, int]] = []
    if kind != "binary" and lines:
        ours_lines, theirs_lines = _line_ranges(git, base, ours, theirs)
    return Conflict(path=path, kind=kind, ours_lines=ours_lines, theirs_lines=theirs_lines)


Hunk = tuple[int, int, int, int]  # old start, old count, new start, new count (as in @@ lines)


def _hunks(git: SafeGit, old: str, new: str) -> list[Hunk]:
    # Blob-to-blob diff: no path, so no attributes; external diff and textconv off regardless.
    out = git.run("diff", "-U0", "--no-color", "--no-ext-diff", "--no-textconv",
                  old, new).stdout
    # findall yields "" for an omitted count, which git omits when it is 1.
    return [
        (int(a), int(b or 1), int(c), int(d or 1)) for a, b, c, d in _HUNK.findall(out)
    ]


def _line_ranges(
    git: SafeGit, base: str | None, ours: str | None, theirs: str | None
) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    if ours is None and theirs is None:
        return [], []
    if base is None:
        if ours is None or theirs is None:
            return [], []
        hunks = _hunks(git, ours, theirs)  # add/add: the sides differ where these hunks are
        return _dedupe(_side(a, b) for a, b, _, _ in hunks), _dedupe(
            _side(c, d) for _, _, c, d in hunks
        )
    ours_h = _hunks(git, base, ours) if ours else []
    theirs_h = _hunks(git, base, theirs) if theirs else []
    if ours_h and theirs_h:
        hit_o = [h for h in ours_h if any(_touch(h, t) for t in theirs_h)]
        hit_t = [t for t in theirs_h if any(_touch(h, t) for h in ours_h)]
        if hit_o and hit_t:
            ours_h, theirs_h = hit_o, hit_t
    return _dedupe(_side(c, d) for _, _, c, d in ours_h), _dedupe(
        _side(c, d) for _, _, c, d in theirs_h
    )


def _base_span(h: Hunk) -> tuple[int, int]:
    """Half-open 0-based span of the base lines a hunk replaces (empty span for insertions)."""
    start = h[0] - 1 if h[1] else h[0]
    return start, start + h[1]


def _touch(a: Hunk, b: Hunk) -> bool:
    # xdiff treats changes whose base spans overlap or are adjacent as one conflict.
    (s1, e1), (s2, e2) = _base_span(a), _base_span(b)
    return not (e1 < s2 or e2 < s1)


def _side(start: int, count: int) -> tuple[int, int]:
    return (start, start + count - 1) if count else (start, start)


def _dedupe(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    return sorted(set(ranges))
