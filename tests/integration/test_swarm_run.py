"""`agentrt run --engine swarm` on a real three-node Swarm (see swarm.py): the same task file,
the same report shape, branches and exit codes as on one engine; sessions spread over nodes,
their limits enforced on workers, their work home through the run's exchange."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import git
from tests.integration.helpers import start_run_in_background
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
command = ["sh", "-c", "echo first-line; sleep 2; hostname > s1.txt; echo last-line"]
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
    assert by_task["writer"]["status"] == "succeeded", by_task["writer"]
    files = git(repo, "ls-tree", "-r", "--name-only", "main").split()
    assert {"committed.txt", "uncommitted.txt", "s1.txt", "s2.txt"} <= set(files)
    assert by_task["filler"]["status"] == "disk_full", by_task["filler"]
    assert by_task["hog"]["status"] == "oom_killed", by_task["hog"]
    assert "fork" in git(repo, "show", f"{by_task['bomb']['branch']}:fork-errors.txt")
    nodes = {s["node"] for s in by_task.values()}
    assert len(nodes) >= 2, nodes
    # Placement puts at most two of the six on each node: limits held on workers too.
    assert {by_task[t]["node"] for t in ("hog", "filler", "bomb")} - {"node0"}, by_task
    assert not report["warnings"], report["warnings"]
    assert _leftovers(swarm_cluster) == []
    # The agent's output, saved as it arrived and completed at the end: once, in order.
    logs = agentrt(swarm_cluster, "logs", by_task["sleeper-1"]["id"], "--repo", str(repo))
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.count("first-line") == 1 and logs.stdout.count("last-line") == 1, logs
    assert logs.stdout.index("first-line") < logs.stdout.index("last-line")


def test_ctrl_c_stops_every_service_of_the_run(swarm_cluster: SwarmCluster, repo: Path,
                                               tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.toml"
    tasks.write_text('[run.resource_limits]\ndisk_mb = 32\n[[tasks]]\nid = "long-a"\ncommand = ["sh", "-c", "echo a > a.txt; '
                     'sleep 300"]\n[[tasks]]\nid = "long-b"\ncommand = ["sleep", "300"]\n')
    env = {**os.environ, "DOCKER_HOST": swarm_cluster.manager.url}
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(tasks), "--repo",
                             str(repo), "--engine", "swarm", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    _wait_running(proc, swarm_cluster, count=2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    sessions = {s["task_id"]: s for s in json.loads(out)["sessions"]}
    assert {s["status"] for s in sessions.values()} == {"cancelled"}, sessions
    assert "a.txt" in git(repo, "ls-tree", "--name-only", sessions["long-a"]["branch"])
    assert _leftovers(swarm_cluster) == []


def _wait_running(proc: subprocess.Popen[str], cluster: SwarmCluster, count: int,
                  node_id: str | None = None, timeout: float = 180) -> None:
    """Wait until ``count`` sessions' own services (helpers carry no deadline label) run (on
    ``node_id`` if given); on failure the run is killed so it leaves nothing running."""
    manager = cluster.manager.client
    deadline = time.monotonic() + timeout
    while True:
        running = sum(t["Status"]["State"] == "running" and node_id in (None, t.get("NodeID"))
                      for s in manager.services.list(filters={"label": "agentrt.time_seconds"})
                      for t in s.tasks())
        if running >= count:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate()
            raise AssertionError(f"{running} of {count} sessions ran: {err[-2000:]}")
        time.sleep(0.3)


def _leftovers(cluster: SwarmCluster) -> list[str]:
    """What of agentrt is left on any node: services, mounts, volumes, networks."""
    found = [f"service {s.name}" for s in cluster.manager.client.services.list()]
    found += [f"network {n.name}" for n in cluster.manager.client.networks.list()
              if n.name.startswith("agentrt")]
    for node in cluster.nodes:
        found += [f"{node.hostname} volume {v.name}" for v in node.client.volumes.list(
            filters={"label": "agentrt.role=volume"})]
        if "agentrt/sessions" in node.exec("cat /proc/mounts"):
            found.append(f"{node.hostname} mount")
    return found


def test_a_task_that_fits_no_node_is_refused_before_anything_starts(
        swarm_cluster: SwarmCluster, repo: Path, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.toml"
    tasks.write_text('[[tasks]]\nid = "giant"\ncommand = ["true"]\n'
                     '[tasks.resource_limits]\nmemory_mb = 100000\n')
    before = git(repo, "for-each-ref")
    proc = agentrt(swarm_cluster, "run", str(tasks), "--repo", str(repo), "--engine", "swarm")
    assert proc.returncode == 2, proc.stderr
    assert "giant" in proc.stderr and "biggest is node" in proc.stderr, proc.stderr
    assert git(repo, "for-each-ref") == before  # no branch
    assert _leftovers(swarm_cluster) == []


def test_gc_brings_home_a_killed_runs_work_and_leaves_nothing_on_any_node(
        swarm_cluster: SwarmCluster, repo: Path, tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.toml"
    tasks.write_text('[run.resource_limits]\ndisk_mb = 40\n[[tasks]]\nid = "orphan"\n'
                     'command = ["sh", "-c", "echo c > c.txt && git add . && git commit -qm c '
                     '&& echo u > u.txt && sleep 3"]\n')
    env = {**os.environ, "DOCKER_HOST": swarm_cluster.manager.url, "AGENTRT_CRASH_AT": "started"}
    run = subprocess.run([sys.executable, "-m", "runtime.cli", "run", str(tasks), "--repo",
                          str(repo), "--engine", "swarm"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode == -9, run.stderr[-2000:]
    assert _leftovers(swarm_cluster), "the killed run left nothing: the test proves nothing"
    gc = agentrt(swarm_cluster, "gc", "--repo", str(repo), "--json")
    assert gc.returncode == 0, gc.stderr[-2000:]
    (branch,) = json.loads(gc.stdout)["saved_branches"]
    assert {"c.txt", "u.txt"} <= set(git(repo, "ls-tree", "-r", "--name-only", branch).split())
    assert _leftovers(swarm_cluster) == []


PAUSED = """
[run]
merge = "auto"
[run.resource_limits]
memory_mb = 96
disk_mb = 24
time_seconds = 300
""" + "".join(f"""
[[tasks]]
id = "{name}"
command = ["sh", "-c", "echo started > {name}-started.txt; sleep 15; echo done > {name}.txt"]
""" for name in ("one", "two", "three"))


SECRET_TASKS = """
[run]
merge = "auto"
[run.resource_limits]
disk_mb = 32
[[tasks]]
id = "keyed"
secrets = ["MY_KEY"]
command = ["sh", "-c", "printf %s ${#MY_KEY} > keylen.txt && git add . && git commit -qm k && sleep 8"]
[[tasks]]
id = "control"
env = { CONTROL_KEY = "CONTROL_VALUE" }
command = ["sh", "-c", "echo c > control.txt && sleep 8"]
"""


def _secrets_left(cluster: SwarmCluster) -> list[str]:
    return [str(s.name) for s in cluster.manager.client.secrets.list(
        filters={"label": "agentrt.role=secret"})]


def test_a_task_secret_reaches_its_agent_on_a_node_and_no_spec_log_or_record(
        swarm_cluster: SwarmCluster, repo: Path, tmp_path: Path) -> None:
    value = "sk-swarm-" + os.urandom(12).hex()  # 33 characters
    control = "ctl-" + os.urandom(12).hex()
    text = SECRET_TASKS.replace("CONTROL_VALUE", control)
    proc = start_run_in_background(text, tmp_path, repo,
                                   {"DOCKER_HOST": swarm_cluster.manager.url, "MY_KEY": value},
                                   "--engine", "swarm")
    _wait_running(proc, swarm_cluster, count=2)
    manager = swarm_cluster.manager.client
    services = json.dumps([s.attrs for s in manager.services.list(
        filters={"label": "agentrt.time_seconds"})])
    secrets = manager.secrets.list(filters={"label": "agentrt.role=secret"})
    assert len(secrets) == 1, secrets  # the keyed session's, while it runs
    shown = json.dumps([manager.api.inspect_secret(s.id) for s in secrets])
    containers = json.dumps([c.attrs for node in swarm_cluster.nodes for c in
                             node.client.containers.list(filters={"label": "agentrt.run"})])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    # The control: what a task's env holds is there for anyone inspecting the service.
    assert control in services
    assert value not in services and value not in shown and value not in containers
    assert secrets[0].name in services  # referred to by name, never by value
    report = json.loads(out)
    assert {s["status"] for s in report["sessions"]} == {"succeeded"}, report
    assert git(repo, "show", "main:keylen.txt") == str(len(value))
    keyed = next(s for s in report["sessions"] if s["task_id"] == "keyed")
    logs = agentrt(swarm_cluster, "logs", keyed["id"], "--repo", str(repo))
    assert value not in out + err + logs.stdout + logs.stderr
    for path in (repo / ".git").rglob("*"):
        if path.is_file() and "objects" not in path.parts:
            assert value.encode() not in path.read_bytes(), path
    assert _secrets_left(swarm_cluster) == []
    assert _leftovers(swarm_cluster) == []


def test_gc_removes_a_dead_runs_secret(swarm_cluster: SwarmCluster, repo: Path,
                                       tmp_path: Path) -> None:
    tasks = tmp_path / "tasks.toml"
    tasks.write_text('[run.resource_limits]\ndisk_mb = 32\n[[tasks]]\nid = "orphan"\n'
                     'secrets = ["MY_KEY"]\ncommand = ["sleep", "3"]\n')
    env = {**os.environ, "DOCKER_HOST": swarm_cluster.manager.url, "AGENTRT_CRASH_AT": "started",
           "MY_KEY": "k-" + os.urandom(8).hex()}
    run = subprocess.run([sys.executable, "-m", "runtime.cli", "run", str(tasks), "--repo",
                          str(repo), "--engine", "swarm"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert run.returncode != 0
    assert len(_secrets_left(swarm_cluster)) == 1, run.stderr[-2000:]  # the attack is real
    gc = agentrt(swarm_cluster, "gc", "--repo", str(repo))
    assert gc.returncode == 0, gc.stderr
    assert _secrets_left(swarm_cluster) == []
    assert _leftovers(swarm_cluster) == []


def test_a_run_whose_image_is_on_the_manager_only_is_refused_naming_the_nodes(
        swarm_cluster: SwarmCluster, repo: Path, tmp_path: Path) -> None:
    from runtime.backends.swarm.node_checks import require_nodes_set_up
    from runtime.backends.swarm.nodes import list_nodes

    manager = swarm_cluster.manager.client
    manager.images.get("agentrt/base:latest").tag("agentrt/manager-only", "test")
    try:
        tasks = tmp_path / "tasks.toml"
        tasks.write_text('[[tasks]]\nid = "t"\nimage = "agentrt/manager-only:test"\n'
                         'command = ["true"]\n')
        before = git(repo, "for-each-ref")
        proc = agentrt(swarm_cluster, "run", str(tasks), "--repo", str(repo), "--engine",
                       "swarm")
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if "manager-only" in line]
        assert len(lines) == 2, proc.stderr  # one per worker, none for the manager
        for worker in swarm_cluster.workers:
            assert any(f"node {worker.hostname}: image agentrt/manager-only:test is missing"
                       in line and "push-nodes" in line for line in lines), proc.stderr
        assert git(repo, "for-each-ref") == before  # nothing started
        assert _leftovers(swarm_cluster) == []
        # What the check adds to a healthy run's start (3 nodes, one probe service each).
        started = time.monotonic()
        require_nodes_set_up(manager, list_nodes(manager), ["agentrt/base:latest"])
        print(f"node check of {len(swarm_cluster.nodes)} nodes: "
              f"{time.monotonic() - started:.2f} s")
    finally:
        manager.images.remove("agentrt/manager-only:test")


def _start_run(cluster: SwarmCluster, repo: Path, tmp_path: Path,
               text: str) -> subprocess.Popen[str]:
    """``agentrt run --engine swarm --json`` of the task file ``text``, in the background."""
    return start_run_in_background(text, tmp_path, repo, {"DOCKER_HOST": cluster.manager.url},
                                   "--engine", "swarm")


def _wait_ready(cluster: SwarmCluster, node_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while cluster.manager.client.nodes.get(node_id).attrs["Status"]["State"] != "ready":
        assert time.monotonic() < deadline, f"node {node_id} not ready again"
        time.sleep(0.5)


def test_a_paused_worker_ends_its_session_in_bounded_time_and_gc_brings_the_work_home(
        swarm_cluster: SwarmCluster, repo: Path, tmp_path: Path) -> None:
    """The worker's engine is frozen (``docker pause`` of its dind container): the manager
    marks the node down, and its logs never come (a read of them used to hang the run for
    good). The run ends within engine_timeout (60 s) of the pause: that session crashed /
    node lost, its work kept, the others merged, exit 1. The node unpaused, gc brings the work
    home and leaves nothing on any node."""
    proc = _start_run(swarm_cluster, repo, tmp_path, PAUSED)
    victim = swarm_cluster.node("node1")
    _wait_running(proc, swarm_cluster, count=1, node_id=victim.node_id)
    time.sleep(2)  # its agent wrote its first file
    victim.engine.container.pause()
    paused = time.monotonic()
    try:
        out, err = proc.communicate(timeout=400)
        took = time.monotonic() - paused
    finally:
        victim.engine.container.unpause()
    print(f"a paused worker: the run ended {took:.1f} s after the pause, exit {proc.returncode}")
    assert proc.returncode == 1, err[-3000:]
    assert took < 60, (took, err[-3000:])
    by_node = {s["node"]: s for s in json.loads(out)["sessions"]}
    lost = by_node.pop("node1")
    assert lost["status"] == "crashed" and "node lost" in lost["reason"], lost
    assert lost["work"] == "kept" and lost["merge"]["status"] == "not_merged", lost
    assert {s["status"] for s in by_node.values()} == {"succeeded"}, by_node
    _wait_ready(swarm_cluster, victim.node_id)
    gc = agentrt(swarm_cluster, "gc", "--repo", str(repo), "--json")
    assert gc.returncode == 0, gc.stdout + gc.stderr[-3000:]
    assert lost["branch"] in json.loads(gc.stdout)["saved_branches"], gc.stdout
    files = git(repo, "ls-tree", "-r", "--name-only", lost["branch"]).split()
    assert f"{lost['task_id']}-started.txt" in files, files
    assert _leftovers(swarm_cluster) == []


LOST = """
[run]
merge = "auto"
[run.resource_limits]
memory_mb = 96
disk_mb = 24
time_seconds = 60
[[tasks]]
id = "one"
command = ["sh", "-c", "sleep 12; echo done > one.txt"]
[[tasks]]
id = "two"
command = ["sh", "-c", "sleep 12; echo done > two.txt"]
[[tasks]]
id = "three"
command = ["sh", "-c", "sleep 12; echo done > three.txt"]
"""


def test_a_node_lost_mid_run_crashes_its_session_and_the_run_goes_on(
        swarm_cluster: SwarmCluster, repo: Path, tmp_path: Path) -> None:
    # Last in this module: the node stays down.
    proc = _start_run(swarm_cluster, repo, tmp_path, LOST)
    victim = swarm_cluster.node("node2")
    _wait_running(proc, swarm_cluster, count=1, node_id=victim.node_id)
    victim.engine.container.stop(timeout=2)
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 1, err[-3000:]
    by_node = {s["node"]: s for s in json.loads(out)["sessions"]}
    assert "node2" in by_node, out
    lost = by_node.pop("node2")
    assert lost["status"] == "crashed" and "node lost" in lost["reason"], lost
    assert lost["work"] == "kept", lost
    assert {s["status"] for s in by_node.values()} == {"succeeded"}, by_node
    files = set(git(repo, "ls-tree", "-r", "--name-only", "main").split())
    assert {f"{s['task_id']}.txt" for s in by_node.values()} <= files
    assert f"{lost['task_id']}.txt" not in files
    # Nothing is deleted until it is home: the marker keeps the way to the volume on node2.
    marker = json.loads((repo / ".git/agentrt/sessions" / lost["id"] / "session.json")
                        .read_text())
    assert marker["work_kept"] and marker["node_id"] == victim.node_id, marker
    # (node2 never comes back in this test: its disk went with it.)
    shutil.rmtree(repo / ".git/agentrt/sessions" / lost["id"])

