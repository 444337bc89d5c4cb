"""``agentrt continue SESSION -p PROMPT`` against real runs: the follow-up session works on the
same branch from its head, finds the SQLite database the first session wrote, is recorded as
its child, and the branch merges afterwards with both sessions' commits. Refusals: a branch
that is gone, a session that is not finished. The agent-CLI side (a preset resuming its
conversation against a scripted model) is in test_real_agents.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runtime.engine.carry import carry_name
from tests.conftest import git
from tests.integration.helpers import agentrt

pytestmark = pytest.mark.docker

# One command for every session of the task: what it does depends on the prompt (AGENT_TASK).
# It appends the prompt to a table of its SQLite file (AGENT_DB), writes every row it finds to
# a file named after the prompt and commits it.
SCRIPT = r"""
set -eu
python3 - <<'PY'
import os, sqlite3
db = sqlite3.connect(os.environ["AGENT_DB"])
db.execute("CREATE TABLE IF NOT EXISTS turns (prompt TEXT)")
db.execute("INSERT INTO turns VALUES (?)", (os.environ["AGENT_TASK"],))
db.commit()
rows = [r[0] for r in db.execute("SELECT prompt FROM turns ORDER BY rowid")]
open(os.environ["AGENT_TASK"] + ".txt", "w").write("\n".join(rows) + "\n")
PY
git add -A && git commit -qm "turn: $AGENT_TASK"
"""

TASKS = f"""
[run]
merge = "none"
[run.resource_limits]
memory_mb = 256
disk_mb = 48
time_seconds = 120
[[tasks]]
id = "notes"
prompt = "first"
command = ["sh", "-c", '''{SCRIPT}''']
"""


def _run(repo: Path, tmp_path: Path) -> dict[str, Any]:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(TASKS)
    run = agentrt("run", str(task_file), "--repo", str(repo), "--json")
    assert run.returncode == 0, run.stderr
    return dict(json.loads(run.stdout)["sessions"][0])


@pytest.fixture
def carries(docker_client: Any, repo: Path) -> Any:
    """Remove the carry volumes of ``repo`` after the test (they outlive sessions by design)."""
    yield
    for volume in docker_client.volumes.list(
            filters={"label": ["agentrt.role=carry", f"agentrt.repo={repo.resolve()}"]}):
        volume.remove(force=True)


def test_continue_works_on_the_same_branch_with_the_first_sessions_database(
    docker_client: Any, repo: Path, tmp_path: Path, carries: None
) -> None:
    first = _run(repo, tmp_path)
    branch = first["branch"]
    assert git(repo, "show", f"{branch}:first.txt") == "first\n"
    head = git(repo, "rev-parse", branch).strip()

    # The branch's carried state is on the engine once the first session has ended.
    assert docker_client.volumes.get(carry_name(str(repo.resolve()), branch))

    cont = agentrt("continue", first["id"][:8], "-p", "second", "--repo", str(repo), "--json")
    assert cont.returncode == 0, cont.stderr
    assert f"continuing {first['id']} on {branch} from {head[:10]}" in cont.stderr
    report = json.loads(cont.stdout)
    (child,) = report["sessions"]
    # A new session of the same task, on the same branch, from its head, a child of the first.
    assert child["id"] != first["id"] and child["task_id"] == "notes"
    assert child["branch"] == branch and child["base_commit"] == head
    assert child["continues"] == first["id"] and child["status"] == "succeeded"
    assert child["work"] == "home"
    # The database the first session wrote is the one the second found and added to.
    assert git(repo, "show", f"{branch}:second.txt") == "first\nsecond\n"
    # The branch advanced with both sessions' commits, the first one's untouched beneath.
    subjects = git(repo, "log", "--format=%s", f"main..{branch}").split("\n")
    assert subjects[:2] == ["turn: second", "turn: first"]
    assert git(repo, "merge-base", "--is-ancestor", head, branch) == ""

    # Recorded as a child: the state row (ps --json), the stored report and the manifest.
    stored = json.loads(agentrt("report", report["run_id"], "--json", "--repo",
                                str(repo)).stdout)
    assert stored["sessions"][0]["continues"] == first["id"]
    from runtime.git.safe_git import MainRepo
    from runtime.state.store import Store

    with Store(MainRepo(repo).state_dir / "state.db") as store:
        row = store.get_session(child["id"])
    assert row.result.continues == first["id"]
    assert row.manifest is not None and row.manifest.continues == first["id"]

    # A third turn continues the continuation (the task id names its latest session): the
    # chain keeps the whole database.
    third = agentrt("continue", "notes", "-p", "third", "--repo", str(repo), "--json")
    assert third.returncode == 0, third.stderr
    assert git(repo, "show", f"{branch}:third.txt") == "first\nsecond\nthird\n"
    assert json.loads(third.stdout)["sessions"][0]["continues"] == child["id"]

    # The branch merges as one session's would.
    merged = agentrt("merge", child["id"], "--strategy", "auto", "--repo", str(repo), "--json")
    assert merged.returncode == 0, merged.stderr
    assert (repo / "first.txt").exists() and (repo / "second.txt").read_text() == \
        "first\nsecond\n"

    # rm of one session of the branch keeps the branch (and its state) for the others; rm of
    # them all removes the branch and the carried state.
    third_id = json.loads(third.stdout)["sessions"][0]["id"]
    assert agentrt("rm", child["id"], "--repo", str(repo)).returncode == 0
    assert git(repo, "rev-parse", "--verify", "-q", branch).strip()
    gone = agentrt("rm", first["id"], third_id, "--repo", str(repo))
    assert gone.returncode == 0, gone.stderr
    assert git(repo, "branch", "--list", branch).strip() == ""
    assert not docker_client.volumes.list(
        filters={"label": ["agentrt.role=carry", f"agentrt.repo={repo.resolve()}"]})


def test_continue_refuses_a_session_whose_branch_is_gone(
    docker_client: Any, repo: Path, tmp_path: Path, carries: None
) -> None:
    first = _run(repo, tmp_path)
    git(repo, "branch", "-D", first["branch"])
    refused = agentrt("continue", first["id"], "-p", "again", "--repo", str(repo))
    assert refused.returncode == 2
    assert f"the branch {first['branch']} of session {first['id']} is gone" in refused.stderr
    # Nothing started: still one run.
    runs = json.loads(agentrt("ps", "--all", "--json", "--repo", str(repo)).stdout)
    assert {s["id"] for s in runs} == {first["id"]}


def test_continue_session_from_the_python_api(docker_client: Any, repo: Path,
                                              carries: None) -> None:
    import runtime
    from tests.integration.helpers import run_tasks, sh

    (first,) = run_tasks(repo, [sh("notes", SCRIPT, prompt="first")]).sessions
    report = runtime.continue_session(first.id, "second", repo=repo)
    (child,) = report.sessions
    assert child.continues == first.id and child.branch == first.branch
    assert child.status.value == "succeeded"
    assert git(repo, "show", f"{first.branch}:second.txt") == "first\nsecond\n"
    with pytest.raises(runtime.AgentRuntimeError, match="is not home|is gone|never ran|"
                       "no session"):
        runtime.continue_session("no-such-session", "x", repo=repo)


@pytest.mark.parametrize("step", ["branch", "marker", "checkout"])
def test_a_continuation_killed_while_set_up_then_gc_keeps_the_branch_and_its_work(
    docker_client: Any, repo: Path, tmp_path: Path, carries: None, step: str
) -> None:
    """The continuation starts at the branch's head, so a branch "still at the session's base"
    is not unused: gc (which drops such branches of sessions that never started) must keep it
    for the session it continued."""
    import signal

    first = _run(repo, tmp_path)
    head = git(repo, "rev-parse", first["branch"]).strip()
    killed = agentrt("continue", first["id"], "-p", "second", "--repo", str(repo),
                     env={"AGENTRT_CRASH_AT": step})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    gc = agentrt("gc", "--repo", str(repo), "--json")
    assert gc.returncode == 0, gc.stderr
    assert first["branch"] not in json.loads(gc.stdout).get("removed_branches", [])
    assert git(repo, "rev-parse", first["branch"]).strip() == head
    assert git(repo, "show", f"{first['branch']}:first.txt") == "first\n"
    # And the branch can still be continued.
    again = agentrt("continue", first["id"], "-p", "second", "--repo", str(repo), "--json")
    assert again.returncode == 0, again.stderr
    assert git(repo, "show", f"{first['branch']}:second.txt") == "first\nsecond\n"
