"""`agentrt discard SESSION` removes a kept session without running its harvest again.

A session whose harvest failed is kept for a retry (`gc` and `recover` harvest it again, which
for a hostile tree replays the attack). Two sessions are kept the same way; `recover` harvests
the first (the control), `discard` removes the second with no harvest at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import runtime.backends.docker.trees as session_tree
import runtime.git.work_home as work_home
from runtime.backends.recovery import DISCARDED, collect_garbage
from runtime.engine.discovery import get_client
from runtime.errors import HarvestError
from runtime.git.safe_git import MainRepo
from runtime.models import WorkState
from runtime.state.store import Store
from tests.conftest import git
from tests.integration.helpers import agentrt, by_task, run_tasks, sh

pytestmark = pytest.mark.docker


def test_discard_removes_a_kept_session_without_harvesting_it(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = session_tree.run_harvest

    def failing(*_args: Any, **_kwargs: Any) -> Any:
        raise HarvestError("the engine went away (test)")

    monkeypatch.setattr(session_tree, "run_harvest", failing)
    report = run_tasks(repo, [sh("one", "echo one > one.txt"), sh("two", "echo 2 > two.txt")],
                       max_concurrent_agents=2)
    results = by_task(report)
    assert all(r.work is WorkState.KEPT for r in results.values()), results
    sessions = repo / ".git/agentrt/sessions"
    harvests: list[str] = []

    def counting(client: Any, plan: Any, *args: Any, **kwargs: Any) -> Any:
        harvests.append(plan.session_id)
        return real(client, plan, *args, **kwargs)

    monkeypatch.setattr(session_tree, "run_harvest", counting)
    monkeypatch.setattr(work_home, "run_harvest", counting)
    one, two = results["one"], results["two"]
    # Control: recover harvests a kept session again.
    collect_garbage(MainRepo(repo), get_client(), only_session=one.id)
    assert harvests == [one.id]
    assert "one.txt" in git(repo, "ls-tree", "--name-only", one.branch)
    # Discard: no harvest, the volume and state dir gone, the branch where it was.
    head = git(repo, "rev-parse", two.branch).strip()
    gc = collect_garbage(MainRepo(repo), get_client(), only_session=two.id, discard=True)
    assert harvests == [one.id], "discard ran the harvest"
    assert not gc.errors, gc.errors
    assert not (sessions / two.id).exists()
    assert git(repo, "rev-parse", two.branch).strip() == head
    with Store(repo / ".git/agentrt/state.db") as store:
        assert DISCARDED in store.get_session(two.id).result.warnings


def test_discard_asks_on_a_terminal_and_refuses_without_one(repo: Path) -> None:
    report = run_tasks(repo, [sh("a", "true")], cleanup_on_complete=False)
    session = report.sessions[0].id
    refused = agentrt("discard", session, "--repo", str(repo))
    assert refused.returncode == 2 and "--yes" in refused.stderr, refused
    assert (repo / ".git/agentrt/sessions" / session).exists()
    done = agentrt("discard", session, "--repo", str(repo), "--yes")
    assert done.returncode == 0, done.stderr
    assert not (repo / ".git/agentrt/sessions" / session).exists()
