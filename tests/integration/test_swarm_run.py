"""`agentrt run --engine swarm` on a real three-node Swarm (see swarm.py): the same task file,
the same report shape, branches and exit codes as on one engine; sessions spread over nodes,
their limits enforced on workers, their work home through the run's exchange."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import git
from tests.integration.swarm import SwarmCluster

pytestmark = pytest.mark.docker

TASKS = """
[run]
merge = "auto"
max_concurrent_agents = 6
[run.resource_limits]
memory_mb = 96
disk_mb = 40
time_seconds = 120
pids = 64
[[tasks]]
id = "writer"
command = ["sh", "-c", "echo c > committed.txt && git add . && git commit -qm 'agent commit' && echo u > uncommitted.txt"]
[[tasks]]
id = "filler"
command = ["sh", "-c", "dd if=/dev/zero of=big bs=1M count=100"]
[[tasks]]
id = "bomb"
command = ["sh", "-c", "for i in $(seq 1 200); do sleep 5 & done 2> fork-errors.txt; wait"]
[[tasks]]
id = "hog"
command = ["python3", "-c", "b = []\\nwhile True: b.append(bytearray(16 * 1024 * 1024))"]
[[tasks]]
id = "sleeper-1"
command = ["sh", "-c", "sleep 2; hostname > s1.txt"]
[[tasks]]
id = "sleeper-2"
command = ["sh", "-c", "sleep 2; hostname > s2.txt"]
"""


def agentrt(cluster: SwarmCluster, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DOCKER_HOST": cluster.manager.url}
    env.pop("AGENTRT_ENGINE_DISK", None)
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_a_task_file_runs_across_the_swarm(swarm_cluster: SwarmCluster, repo: Path,
                                          tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(TASKS)
    proc = agentrt(swarm_cluster, "run", str(tasks), "--repo", str(repo), "--engine", "swarm",
                   "--json")
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    by_task = {s["task_id"]: s for s in report["sessions"]}
    print(json.dumps(by_task, indent=1)[:6000])
    assert by_task["writer"]["status"] == "succeeded", by_task["writer"]
    files = git(repo, "ls-tree", "-r", "--name-only", "main").split()
    assert {"committed.txt", "uncommitted.txt", "s1.txt", "s2.txt"} <= set(files)
    assert by_task["filler"]["status"] == "disk_full", by_task["filler"]
    assert by_task["hog"]["status"] == "oom_killed", by_task["hog"]
    assert "fork" in git(repo, "show", f"{by_task['bomb']['branch']}:fork-errors.txt")
    nodes = {s["node"] for s in by_task.values()}
    assert len(nodes) >= 2, nodes
