"""The conflict radar's comparison is pure; its reading of live trees uses real git."""

from __future__ import annotations

import subprocess
from pathlib import Path

from runtime.gitops import MainRepo
from runtime.radar import ConflictRadar, LiveTree, Overlap, overlaps
from tests.conftest import git, make_repo


def test_overlaps_are_reported_per_pair_and_path() -> None:
    found = overlaps({"a": {"x.py", "y.py"}, "b": {"y.py"}, "c": {"x.py", "z.py"}})
    assert found == [Overlap("y.py", "a", "b"), Overlap("x.py", "a", "c")]
    assert overlaps({"a": {"x"}, "b": {"y"}}) == []


def test_radar_reads_live_trees_and_warns_once_per_overlap(tmp_path: Path) -> None:
    repo_path = make_repo(tmp_path / "repo")
    repo = MainRepo(repo_path)
    base = git(repo_path, "rev-parse", "HEAD").strip()
    trees = []
    for name in ("a", "b"):
        ws = tmp_path / name
        git(repo_path, "worktree", "add", "-q", "--detach", str(ws), base)
        trees.append(LiveTree(name, name, ws, base, tmp_path / f"scratch-{name}"))
    (trees[0].workspace / "README.md").write_text("a\n")
    (trees[1].workspace / "README.md").write_text("b\n")
    (trees[1].workspace / "new.txt").write_text("only b\n")
    seen: list[Overlap] = []
    radar = ConflictRadar(repo, lambda: trees, seen.append)
    assert radar.scan() == [Overlap("README.md", "a", "b")]
    assert radar.scan() == []
    assert seen == [Overlap("README.md", "a", "b")]
    # Live reads never write into the shared object store.
    blob = git(repo_path, "hash-object", str(trees[0].workspace / "README.md")).strip()
    proc = subprocess.run(["git", "-C", str(repo_path), "cat-file", "-e", blob],
                          capture_output=True, check=False)
    assert proc.returncode != 0
