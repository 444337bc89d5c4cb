"""gc classifies a session whose agentrt process died from the engine's record of its container,
through the same classifier as a live session: exit 0 is success, an OOM kill is oom_killed,
any other exit is failed; it is not "crashed" because its owner died."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.git.safe_git import MainRepo
from runtime.state.store import Store
from tests.conftest import git
from tests.integration.conftest import leftovers

pytestmark = pytest.mark.docker

TASK = """
[run]
merge = "none"
[run.resource_limits]
memory_mb = 64
disk_mb = 32
time_seconds = 120
[[tasks]]
id = "orphan"
command = ["sh", "-c", "echo w > written.txt && sleep 1 && {end}"]
"""

ENDS = {
    "exit 0": ("true", "succeeded", None),
    "exit 3": ("exit 3", "failed", "exit code 3"),
    "oom": ("python3 -c 'b = bytearray(512 * 1024 * 1024); print(len(b))'", "oom_killed",
            "out of memory at memory_mb=64"),
}


@pytest.mark.parametrize("end", list(ENDS))
def test_gc_records_an_orphan_as_its_container_ended(docker_client: object, repo: Path,
                                                      tmp_path: Path, end: str) -> None:
    command, status, reason = ENDS[end]
    path = tmp_path / "tasks.toml"
    path.write_text(TASK.format(end=command))
    run = subprocess.run([sys.executable, "-m", "runtime.cli", "run", str(path), "--repo",
                          str(repo), "--json"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "AGENTRT_CRASH_AT": "started"})
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    deadline = time.time() + 60
    while docker_client.containers.list(  # type: ignore[attr-defined]
            filters={"label": f"agentrt.repo={repo.resolve()}"}):
        assert time.time() < deadline, "the orphan's container did not end"
        time.sleep(0.2)
    gc = subprocess.run([sys.executable, "-m", "runtime.cli", "gc", "--repo", str(repo),
                         "--json"], capture_output=True, text=True, timeout=300)
    assert gc.returncode == 0, gc.stderr
    assert json.loads(gc.stdout)["saved_branches"]
    with Store(MainRepo(repo).state_dir / "state.db") as store:
        (row,) = store.list_sessions()
    assert (row.result.status.value, row.result.reason) == (status, reason), row.result
    assert any("recorded by gc" in w for w in row.result.warnings), row.result.warnings
    assert row.result.work.value == "home"
    assert git(repo, "show", f"{row.branch}:written.txt") == "w\n"
    assert not leftovers(docker_client, repo.resolve())
