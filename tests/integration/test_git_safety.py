"""Agent-written trees are data: nothing an agent plants in git runs on the host."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path

import pytest

from runtime.models import SessionStatus
from tests.conftest import git
from tests.integration.helpers import by_task, run_tasks, sh

pytestmark = pytest.mark.docker


def planting_script(canary: Path, host_dir: Path, swap_git: bool) -> str:
    """Plant every known way of making git run a command, each touching ``canary``."""
    evil = f"touch {canary} 2>/dev/null; true"
    script = f"""
set -e
cat > /tmp/evil.sh <<'SH'
#!/bin/sh
{evil}
cat
SH
chmod +x /tmp/evil.sh
cp /tmp/evil.sh evil.sh
mkdir -p .git/hooks myhooks
for h in pre-commit post-commit post-checkout post-merge reference-transaction pre-auto-gc; do
  printf '#!/bin/sh\\n{evil}\\n' > .git/hooks/$h; chmod +x .git/hooks/$h
  cp .git/hooks/$h myhooks/$h
done
git config core.fsmonitor "{evil}; echo"
git config core.hooksPath "$PWD/myhooks"
git config diff.external "$PWD/evil.sh"
git config filter.evil.clean "$PWD/evil.sh"
git config filter.evil.smudge "$PWD/evil.sh"
git config filter.evil.required true
git config merge.evil.driver "{evil}"
git config hook.pre-commit.command "{evil}"
git config core.pager "{evil}; cat"
printf '[core]\\n\\tfsmonitor = "{evil}; echo"\\n' > /tmp/inc.cfg
cp /tmp/inc.cfg included.cfg
git config include.path "$PWD/included.cfg"
printf '* filter=evil diff=evil merge=evil\\n' > .gitattributes
echo data > data.txt
git add -A && git commit -qm planted || true
echo uncommitted > later.txt
ln -s {host_dir} host-link
ln -s /etc etc-link
mkdir -p buried && git init -q --bare buried/repo.git && git -C buried/repo.git config core.fsmonitor "{evil}; echo"
"""
    if swap_git:
        script += f"""
mkdir -p /tmp/fake && git init -q /tmp/fake && git -C /tmp/fake config core.fsmonitor "{evil}; echo"
mv .git old-git
cp -r /tmp/fake/.git .git
printf 'gitdir: {host_dir}\\n' > sub-gitfile
"""
    return script


@pytest.mark.parametrize("swap_git", [False, True], ids=["planted-config", "swapped-dot-git"])
def test_git_canaries_never_fire_on_the_host_and_symlink_targets_stay_intact(
    repo: Path, tmp_path: Path, swap_git: bool
) -> None:
    canary = tmp_path / f"canary-{secrets.token_hex(4)}"
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    (host_dir / "keep.txt").write_text("precious\n")
    report = run_tasks(repo, [sh("planter", planting_script(canary, host_dir, swap_git))],
                       merge="auto")
    result = by_task(report)["planter"]
    assert result.status is SessionStatus.SUCCEEDED, result.reason
    assert not canary.exists(), "a planted command ran on the host"
    assert (host_dir / "keep.txt").read_text() == "precious\n"
    assert sorted(p.name for p in host_dir.iterdir()) == ["keep.txt"]
    # The work itself came home as data: files, the attributes, and symlinks as links.
    tree = git(repo, "ls-tree", "-r", "--name-only", result.head_commit).split()
    assert {"later.txt", ".gitattributes", "host-link", "etc-link"} <= set(tree)
    assert git(repo, "cat-file", "-p", f"{result.head_commit}:host-link") == str(host_dir)
    if not swap_git:
        assert "planted" in git(repo, "log", "--format=%s", result.head_commit)
    else:
        assert any("could not be imported" in w for w in result.warnings)
    # Running the user's own git afterwards with the planted attributes is still safe.
    git(repo, "status", "--porcelain")
    assert not canary.exists()


FSCK_BAIT = r"""
set -e
echo ok > ok.txt
blob=$(echo bad | git hash-object -w --stdin)
sub=$(printf '100644 blob %s\tconfig\n' "$blob" | git mktree)
tree=$(printf '040000 tree %s\t.GIT\n' "$sub" | git mktree)
commit=$(git commit-tree "$tree" -p HEAD -m "a .GIT directory")
git update-ref "refs/heads/$AGENT_BRANCH" "$commit"
"""


def test_import_refuses_a_tree_with_a_dot_git_entry_and_keeps_the_files(repo: Path) -> None:
    report = run_tasks(repo, [sh("bait", FSCK_BAIT)])
    result = by_task(report)["bait"]
    assert result.status is SessionStatus.SUCCEEDED, result.reason
    tree = git(repo, "ls-tree", "-r", "--name-only", result.head_commit).split()
    assert ".GIT/config" not in tree
    assert "ok.txt" in tree
    assert any("could not be imported" in w for w in result.warnings)


def test_a_dependency_merge_never_runs_a_merge_driver_the_stages_select(
    repo: Path, tmp_path: Path
) -> None:
    """A pipeline's dependency merge goes through the same neutralised merge as any other:
    a merge driver the repository's attributes select never runs on agents' content."""
    canary = tmp_path / f"canary-{secrets.token_hex(4)}"
    git(repo, "config", "merge.evil.driver", f"touch {canary}; false")
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "attributes").write_text("* merge=evil\n")
    tasks = [sh("left", "echo left >> README.md"),
             sh("right", "(echo right; cat README.md) > r && mv r README.md"),
             sh("joined", "true", deps=["left", "right"])]
    report = run_tasks(repo, tasks, max_concurrent_agents=2)
    results = by_task(report)
    assert results["left"].status is SessionStatus.SUCCEEDED
    assert not canary.exists(), "the planted merge driver ran during the dependency merge"
    # The neutralised driver makes the shared file a conflict: the dependent is skipped.
    assert results["joined"].status is SessionStatus.SKIPPED
    assert "README.md" in (results["joined"].reason or "")
    # Control: the same merge with plain git runs the driver (which reports a conflict).
    subprocess.run(["git", "-C", str(repo), "merge-tree", "--write-tree",
                    results["left"].branch, results["right"].branch],
                   capture_output=True, check=False)
    assert canary.exists()
