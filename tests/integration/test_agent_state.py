"""What agent CLIs keep in the repository whatever they are told never reaches a branch.

aider writes its repo map cache (``.aider.tags.cache.v4/``) into the repository's top directory
and has no option to put it elsewhere; the harvest leaves ``.aider*`` (runtime.presets
.STATE_EXCLUDES) out of every session's snapshot. A session writes the files aider would,
beside its own work: only the work comes home. Controls: a ``.aiderignore`` (the user's own
aider setting) and a tracked ``.aider.conf.yml`` the agent changes are harvested as usual, and
the same files under another directory are work, not state. The conflict radar ignores the
same state.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import git, make_repo
from tests.integration.helpers import by_task, run_tasks, sh

pytestmark = pytest.mark.docker

WRITES = (
    "mkdir -p .aider.tags.cache.v4 sub/.aider.tags.cache.v4"
    " && echo cache > .aider.tags.cache.v4/cache.db"
    " && echo history > .aider.chat.history.md && echo input > .aider.input.history"
    " && echo '*.log' > .aiderignore && echo 'model: other' > .aider.conf.yml"
    " && echo nested > sub/.aider.tags.cache.v4/cache.db && echo work > work.txt"
)


def test_aider_state_stays_off_the_branch_and_work_comes_home(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"README.md": "# demo\n",
                                         ".aider.conf.yml": "model: mine\n"})
    result = by_task(run_tasks(repo, [sh("agent", WRITES)]))["agent"]
    assert result.status.value == "succeeded", result
    changed = git(repo, "diff", "--name-only", f"main...{result.branch}").split()
    assert sorted(changed) == [".aider.conf.yml", ".aiderignore",
                               "sub/.aider.tags.cache.v4/cache.db", "work.txt"], changed
    assert git(repo, "show", f"{result.branch}:.aider.conf.yml") == "model: other\n"


def test_the_conflict_radar_ignores_aider_state_but_not_work(repo: Path) -> None:
    """Two live sessions both write aider's cache and one shared file: the radar warns about
    the file (the control) and never about the cache."""
    both = "mkdir -p .aider.tags.cache.v4 && echo {0} > .aider.tags.cache.v4/cache.db" \
           " && echo {0} > shared.txt && sleep 6"
    report = run_tasks(repo, [sh("a", both.format("a")), sh("b", both.format("b"))],
                       max_concurrent_agents=2, conflict_radar_seconds=1)
    radar = [w for w in report.warnings if w.startswith("conflict radar:")]
    assert any("shared.txt" in w for w in radar), report.warnings
    assert not any(".aider" in w for w in radar), radar
