"""`agentrt logs -f PREFIX` across runs: the running session wins, else the latest run's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import agentrt
from tests.integration.test_cli_inspect import ps, start_run, task_file, wait_until_running

pytestmark = pytest.mark.docker


def test_logs_follow_of_a_task_prefix_prefers_the_live_session_then_the_latest_run(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    first = task_file(tmp_path, '[[tasks]]\nid = "ticker"\n'
                                'command = ["sh", "-c", "echo from the first run"]\n')
    done = agentrt("run", str(first), "--repo", str(repo))
    assert done.returncode == 0, done.stderr
    script = "for i in 1 2 3 4; do echo tick $i; sleep 1; done"
    second = tmp_path / "second"
    second.mkdir()
    tasks = task_file(second, f'[[tasks]]\nid = "ticker"\ncommand = ["sh", "-c", "{script}"]\n')
    run = start_run(tasks, repo, second)
    try:
        live = wait_until_running(repo, "ticker", run)["id"]
        # "ticker" matches a session of each run; the running one is meant.
        follower = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", "logs", "-f", "ticker", "--repo", str(repo)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = follower.communicate(timeout=90)
        assert follower.returncode == 0, err
        assert out == "".join(f"tick {i}\n" for i in range(1, 5))
    finally:
        assert run.wait(timeout=120) == 0, (second / "run.err").read_text()
    sessions = [e for e in ps(repo, "--all") if e["task_id"] == "ticker"]
    assert len(sessions) == 2 and all(e["status"] == "succeeded" for e in sessions)
    # Nothing runs now: the latest run's session.
    latest = agentrt("logs", "tick", "--repo", str(repo))
    assert latest.returncode == 0, latest.stderr
    assert latest.stdout.count("tick") == 4 and "first run" not in latest.stdout
    # A longer prefix still names the older one exactly.
    older = next(e["id"] for e in sessions if e["id"] != live)
    assert "from the first run" in agentrt("logs", older, "--repo", str(repo)).stdout
