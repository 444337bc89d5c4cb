"""Interruptions lose no work and leave nothing behind: SIGINT, SIGKILL + gc, stop, dockerd."""

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

SLOW_TASKS = """
[run.resource_limits]
memory_mb = 128
disk_mb = 32
time_seconds = 300
[[tasks]]
id = "committer"
command = ["sh", "-c", "echo c > committed.txt && git add . && git commit -qm 'agent commit' && echo u > uncommitted.txt && sleep 120"]
[[tasks]]
id = "writer"
command = ["sh", "-c", "echo w > written.txt; trap '' TERM; sleep 120"]
"""


def start_run(repo: Path, tmp_path: Path, text: str = SLOW_TASKS) -> subprocess.Popen[str]:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(text)
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "run", str(task_file), "--repo", str(repo),
         "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_running(client: object, repo: Path, count: int, timeout: float = 60) -> None:
    """Wait until ``count`` containers of ``repo`` run and their agents had time to write."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        running = client.containers.list(filters={"label": f"agentrt.repo={repo}"})  # type: ignore[attr-defined]
        if len(running) >= count:
            time.sleep(2)
            return
        time.sleep(0.2)
    raise AssertionError(f"{count} sessions did not start")


def branches(repo: Path) -> dict[str, str]:
    out = git(repo, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/agent")
    return {line.split()[0].split("/")[1]: line.split()[0] for line in out.splitlines()}


def test_sigint_stops_everything_keeps_work_and_exits_130(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    proc = start_run(repo, tmp_path)
    wait_running(docker_client, repo, 2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert {s["status"] for s in report["sessions"]} == {"cancelled"}
    found = branches(repo)
    assert git(repo, "show", f"{found['committer']}:committed.txt") == "c\n"
    assert git(repo, "show", f"{found['committer']}:uncommitted.txt") == "u\n"
    assert git(repo, "show", f"{found['writer']}:written.txt") == "w\n"
    assert not leftovers(docker_client, repo.resolve())


def test_second_sigint_forces_the_stop_without_waiting_out_the_grace(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    proc = start_run(repo, tmp_path)  # the writer ignores SIGTERM; the grace is 10 s
    wait_running(docker_client, repo, 2)
    proc.send_signal(signal.SIGINT)
    time.sleep(1)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert time.monotonic() - started < 8
    assert git(repo, "show", f"{branches(repo)['writer']}:written.txt") == "w\n"


def test_sigkill_of_agentrt_then_gc_recovers_work_and_leaves_nothing(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    proc = start_run(repo, tmp_path)
    wait_running(docker_client, repo, 2)
    proc.kill()
    proc.wait(timeout=30)
    assert leftovers(docker_client, repo.resolve()), "the containers outlive their supervisor"
    gc = subprocess.run([sys.executable, "-m", "runtime.cli", "gc", "--repo", str(repo),
                         "--json"], capture_output=True, text=True, timeout=180)
    assert gc.returncode == 0, gc.stderr
    result = json.loads(gc.stdout)
    assert len(result["removed_containers"]) == 2 and len(result["saved_branches"]) == 2
    assert not leftovers(docker_client, repo.resolve())
    found = branches(repo)
    assert "agent commit" in git(repo, "log", "--format=%s", found["committer"])
    assert git(repo, "show", f"{found['committer']}:uncommitted.txt") == "u\n"
    assert git(repo, "show", f"{found['writer']}:written.txt") == "w\n"
    with Store(MainRepo(repo).state_dir / "state.db") as store:
        states = {row.task_id: row.result.status.value for row in store.list_sessions()}
    assert states == {"committer": "crashed", "writer": "crashed"}
    with Store(MainRepo(repo).state_dir / "state.db") as store:
        assert store.latest_run().status == "crashed"  # type: ignore[union-attr]
    # A second gc finds nothing and never deletes a branch.
    again = subprocess.run([sys.executable, "-m", "runtime.cli", "gc", "--repo", str(repo),
                            "--json"], capture_output=True, text=True, timeout=60)
    assert json.loads(again.stdout)["removed_sessions"] == []
    assert branches(repo) == found


WARM = """
[run]
max_concurrent_agents = 1
warm_pool = 2
[run.resource_limits]
memory_mb = 128
disk_mb = 32
time_seconds = 300
""" + "".join(f"""
[[tasks]]
id = "w{i}"
command = ["sh", "-c", "echo {i} > w{i}.txt && sleep 120"]
""" for i in range(4))


def _ps(repo: Path) -> list[dict[str, object]]:
    ps = subprocess.run([sys.executable, "-m", "runtime.cli", "ps", "--repo", str(repo),
                         "--json"], capture_output=True, text=True, timeout=60)
    assert ps.returncode == 0, ps.stderr
    return list(json.loads(ps.stdout))


def test_sessions_prepared_ahead_are_recorded_and_gc_removes_them_after_sigkill(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    proc = start_run(repo, tmp_path, WARM)
    deadline = time.monotonic() + 120
    while True:  # one session runs, the warm pool prepared the next two
        shown = _ps(repo)
        prepared = [e for e in shown if e["status"] == "prepared"]
        if len(prepared) == 2 and any(e["status"] == "running" for e in shown):
            break
        assert proc.poll() is None and time.monotonic() < deadline, (shown, proc.poll())
        time.sleep(0.5)
    assert all(e["owner_alive"] and e["started_at"] is None for e in prepared), prepared
    ran = next(e for e in shown if e["status"] == "running")
    prepared_branches = {str(e["branch"]) for e in prepared}
    assert prepared_branches <= set(branches(repo).values()), "no branch yet: proves nothing"
    proc.kill()
    proc.wait(timeout=30)
    gc = subprocess.run([sys.executable, "-m", "runtime.cli", "gc", "--repo", str(repo),
                         "--json"], capture_output=True, text=True, timeout=180)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    result = json.loads(gc.stdout)
    assert sorted(result["forgotten_prepared"]) == sorted(str(e["id"]) for e in prepared)
    assert prepared_branches <= set(result["removed_branches"]), result
    assert not leftovers(docker_client, repo.resolve())
    # The session that ran kept its work; the prepared ones left no branch and no row.
    assert set(branches(repo).values()) == {ran["branch"]}
    assert git(repo, "show", f"{ran['branch']}:{ran['task_id']}.txt").strip() == \
        str(ran["task_id"])[1:]
    with Store(MainRepo(repo).state_dir / "state.db") as store:
        rows = {row.id: row.result.status.value for row in store.list_sessions()}
        assert rows == {ran["id"]: "crashed"}, rows
        assert store.latest_run().status == "crashed"  # type: ignore[union-attr]


def test_gc_never_touches_a_live_session(docker_client: object, repo: Path,
                                         tmp_path: Path) -> None:
    proc = start_run(repo, tmp_path)
    try:
        wait_running(docker_client, repo, 2)
        gc = subprocess.run([sys.executable, "-m", "runtime.cli", "gc", "--repo", str(repo),
                             "--json"], capture_output=True, text=True, timeout=60)
        result = json.loads(gc.stdout)
        assert result["removed_containers"] == [] and len(result["skipped_live"]) == 2
        assert len(docker_client.containers.list(  # type: ignore[attr-defined]
            filters={"label": f"agentrt.repo={repo.resolve()}"})) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)


def test_stop_from_another_terminal_cancels_the_run_and_keeps_work(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    proc = start_run(repo, tmp_path)
    wait_running(docker_client, repo, 2)
    with Store(MainRepo(repo).state_dir / "state.db") as store:
        run_id = store.latest_run().id  # type: ignore[union-attr]
    stop = subprocess.run([sys.executable, "-m", "runtime.cli", "stop", run_id[:12], "--repo",
                           str(repo), "--grace", "1"], capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert {s["status"] for s in json.loads(out)["sessions"]} == {"cancelled"}
    assert git(repo, "show", f"{branches(repo)['writer']}:written.txt") == "w\n"


def _dockerd() -> tuple[int, list[str]] | None:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and os.path.basename(cmd[0].decode()) == "dockerd":
                return int(pid), [c.decode() for c in cmd if c]
    return None


@pytest.mark.disruptive
def test_dockerd_restart_mid_run_ends_every_session_in_a_correct_state(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    found = _dockerd()
    if found is None or os.geteuid() != 0:
        pytest.skip("needs a dockerd process this test may restart (root, not a remote engine)")
    pid, cmdline = found
    proc = start_run(repo, tmp_path)
    wait_running(docker_client, repo, 2)
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 60
    while Path(f"/proc/{pid}").exists() and time.time() < deadline:
        time.sleep(0.2)
    log = open("/var/log/agentrt-dockerd-test.log", "ab")  # noqa: SIM115 - lives with dockerd
    subprocess.Popen(cmdline, stdout=log, stderr=log, start_new_session=True)
    deadline = time.time() + 60
    while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        assert time.time() < deadline, "dockerd did not come back"
        time.sleep(0.5)
    out, err = proc.communicate(timeout=240)
    report = json.loads(out)
    states = {s["task_id"]: s["status"] for s in report["sessions"]}
    assert states == {"committer": "crashed", "writer": "crashed"}, (states, err[-2000:])
    # Stopping dockerd kills its containers (a "kill" agentrt did not ask for), or the engine is
    # unreachable when the exit is examined: either way the session crashed, and says why.
    reasons = [s["reason"] or "" for s in report["sessions"]]
    assert all(any(word in r for word in ("engine", "vanished", "killed from outside"))
               for r in reasons), reasons
    subprocess.run([sys.executable, "-m", "runtime.cli", "gc", "--repo", str(repo)],
                   capture_output=True, timeout=120)
    assert not leftovers(docker_client, repo.resolve())
    assert git(repo, "show", f"{branches(repo)['writer']}:written.txt") == "w\n"


def test_shell_runs_a_command_inside_a_live_session(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    proc = start_run(repo, tmp_path)
    try:
        wait_running(docker_client, repo, 2)
        with Store(MainRepo(repo).state_dir / "state.db") as store:
            writer = next(r for r in store.list_sessions() if r.task_id == "writer")
        out = subprocess.run(
            [sys.executable, "-m", "runtime.cli", "shell", writer.id[:10], "--repo", str(repo),
             "--", "sh", "-c", "id -u; cat written.txt; pwd"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["1000", "w", "/workspace"]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    # Ctrl-C stops the run and releases its sessions (the fixture then finds nothing left);
    # if it did not, its own words say why.
    assert proc.returncode == 130, err[-3000:]
