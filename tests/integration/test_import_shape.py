"""The import checks a bundle's shape and ancestry, whoever made it.

The harvest builds its bundles itself, but the host does not trust that: a bundle is taken only
if it carries exactly the ref agentrt asked for and a tip that descends from the session's
base. The attack: a hand-made bundle (what a subverted harvest could leave) whose tip is
another branch's commit. Real git, a real repository; no engine needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import BundleRefusedError
from runtime.git.bundle import ImportPolicy, import_bundle
from runtime.git.harvest import Harvest, HarvestPlan
from runtime.git.safe_git import MainRepo
from runtime.git.work_home import bring_work_home
from runtime.models import WorkState
from tests.conftest import git


def forked(repo: Path) -> tuple[str, str, str]:
    """(fork point, base of the session on main, another branch's tip off the fork point)."""
    fork = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "checkout", "-q", "-b", "other")
    (repo / "other.txt").write_text("unreviewed work of another branch\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "other branch")
    other = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "checkout", "-q", "main")
    (repo / "main.txt").write_text("main moved on\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "main")
    return fork, git(repo, "rev-parse", "HEAD").strip(), other


def forged_bundle(repo: Path, tmp_path: Path, tip: str, not_: str, ref: str) -> Path:
    """A bundle made elsewhere with ``tip`` as its one ref, thin against ``not_``."""
    elsewhere = tmp_path / "elsewhere"
    git(tmp_path, "clone", "-q", str(repo), str(elsewhere))
    git(elsewhere, "update-ref", ref, tip)
    bundle = tmp_path / f"{ref.rsplit('/', 1)[-1]}.bundle"
    git(elsewhere, "bundle", "create", "-q", str(bundle), ref, "--not", not_)
    return bundle


def test_a_tip_off_the_sessions_base_is_refused_and_main_never_moves(
    repo: Path, tmp_path: Path
) -> None:
    fork, base, other = forked(repo)
    git(repo, "branch", "agent/s/1", base)
    main_before = git(repo, "rev-parse", "main").strip()
    bundle = forged_bundle(repo, tmp_path, other, fork, "refs/heads/work")
    plan = HarvestPlan(session_id="s-1", base_commit=base, mounts=(), store=None, uid=1000,
                       gid=1000, memory_mb=64)

    def subverted(_plan: HarvestPlan, dest: Path, _limit: int) -> Harvest:
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / "work.bundle"
        target.write_bytes(bundle.read_bytes())
        return Harvest(bundles={"work.bundle": target}, unchanged=False, head_unreadable=False,
                       unreadable_files=False, log="")

    main_repo = MainRepo(repo)
    outcome = bring_work_home(None, main_repo, plan, branch="agent/s/1",  # type: ignore[arg-type]
                              policy=ImportPolicy(), harvester=subverted)
    assert outcome.state is WorkState.REFUSED, outcome.warnings
    assert any("does not descend from the session's base" in w for w in outcome.warnings)
    assert git(repo, "rev-parse", "agent/s/1").strip() == base
    assert git(repo, "rev-parse", "main").strip() == main_before
    kept = list(main_repo.state_dir.glob("harvest/s-1/rejected-work.bundle"))
    assert kept, "the refused bundle is kept for inspection"
    # Control: the same bundle is a good one for a session whose base is the fork point.
    git(repo, "branch", "agent/s/2", fork)
    assert import_bundle(main_repo, bundle, branch="agent/s/2", base_commit=fork,
                         policy=ImportPolicy(), refs={"refs/heads/work"}) == other


def test_a_bundle_carrying_a_ref_agentrt_did_not_ask_for_is_refused(
    repo: Path, tmp_path: Path
) -> None:
    base = git(repo, "rev-parse", "HEAD").strip()
    (repo / "x.txt").write_text("x\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "x")
    tip = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "reset", "-q", "--hard", base)
    bundle = forged_bundle(repo, tmp_path, tip, base, "refs/heads/main")
    with pytest.raises(BundleRefusedError, match="did not ask for"):
        import_bundle(MainRepo(repo), bundle, branch="main", base_commit=base,
                      policy=ImportPolicy(), refs={"refs/heads/work"})
    # Control: the same bundle, when that ref is the one asked for, is taken.
    assert import_bundle(MainRepo(repo), bundle, branch="main", base_commit=base,
                         policy=ImportPolicy(), refs={"refs/heads/main"}) == tip


def test_host_git_on_imported_objects_stops_at_its_cpu_budget(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle of ~1 MiB whose one blob inflates to 1 GiB (what a delta bomb makes
    index-pack do, in small): with a 1 s CPU budget the import is refused, not left running."""
    import subprocess

    import runtime.git.bundle as bundle_mod

    base = git(repo, "rev-parse", "HEAD").strip()
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", str(repo), str(work))
    with open(work / "zeros.bin", "wb") as out:
        out.truncate(1024 ** 3)
    git(work, "add", "zeros.bin")
    git(work, "commit", "-qm", "zeros")
    bundle = tmp_path / "work.bundle"
    git(work, "update-ref", "refs/heads/work", "HEAD")
    git(work, "bundle", "create", "-q", str(bundle), "refs/heads/work", "--not", base)
    assert bundle.stat().st_size < 4 * 1024 * 1024
    git(repo, "branch", "agent/z/1", base)
    policy = ImportPolicy(max_import_bytes=2 * 1024 ** 3, max_file_bytes=2 * 1024 ** 3)
    monkeypatch.setattr(bundle_mod, "IMPORT_CPU_SECONDS", 1)
    with pytest.raises(BundleRefusedError, match="CPU budget"):
        import_bundle(MainRepo(repo), bundle, branch="agent/z/1", base_commit=base,
                      policy=policy, refs={"refs/heads/work"})
    probe = subprocess.run(["git", "-C", str(repo), "cat-file", "-e",
                            git(work, "rev-parse", "HEAD").strip()], capture_output=True)
    assert probe.returncode != 0, "nothing of the refused bundle entered the repository"
    # Control: with the default budget the same bundle imports (it is only expensive).
    monkeypatch.setattr(bundle_mod, "IMPORT_CPU_SECONDS", 300)
    assert import_bundle(MainRepo(repo), bundle, branch="agent/z/1", base_commit=base,
                         policy=policy, refs={"refs/heads/work"})
