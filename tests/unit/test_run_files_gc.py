"""gc removes every per-run file of a run that is over (its object stores, seeds and the
dependency notes a killed owner left), and nothing of a run whose owner lives."""

from __future__ import annotations

import os
from pathlib import Path

from runtime import paths
from runtime.backends.recovery import collect_garbage
from runtime.git.safe_git import MainRepo
from runtime.state.store import Store
from tests.conftest import make_repo


def test_gc_removes_a_dead_runs_files_and_keeps_a_live_ones(tmp_path: Path) -> None:
    repo = MainRepo(make_repo(tmp_path / "repo"))
    repo.state_dir.mkdir(parents=True, exist_ok=True)
    with Store(paths.state_db(repo.state_dir)) as store:
        # A run whose owner is gone (pid 1's start time never matches 0.0), one that lives.
        store.create_run("r-dead", str(repo.root), "c" * 40, "main", "none", "{}", 1, 0.0, "h")
        store.create_run("r-live", str(repo.root), "c" * 40, "main", "none", "{}", os.getpid(),
                         None, "h")
    for run in ("r-dead", "r-live"):
        notes = paths.runs_dir(repo.state_dir) / run / "deps" / "design"
        notes.mkdir(parents=True)
        (notes / "diff.patch").write_text("diff\n")
    collect_garbage(repo, None)
    assert not (paths.runs_dir(repo.state_dir) / "r-dead").exists()
    assert (paths.runs_dir(repo.state_dir) / "r-live" / "deps" / "design" / "diff.patch").exists()
