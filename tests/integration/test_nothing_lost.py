"""Nothing is deleted until it is safely home: full disks, crashes at every step, paused clocks."""

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
memory_mb = 128
disk_mb = 48
time_seconds = 120
[[tasks]]
id = "worker"
command = ["sh", "-c", "echo c > committed.txt && git add . && git commit -qm 'agent commit' && head -c 6000000 /dev/urandom > uncommitted.bin && sleep {sleep}"]
"""


def write_task(tmp_path: Path, sleep: float) -> Path:
    path = tmp_path / "tasks.toml"
    path.write_text(TASK.format(sleep=sleep))
    return path


def cli(*args: str, env: dict[str, str] | None = None,
        timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def start_run_and_wait(docker_client: object, repo: Path,
                       task_file: Path) -> subprocess.Popen[str]:
    """`agentrt run --json` in the background, returned once its container exists."""
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(task_file),
                             "--repo", str(repo), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not docker_client.containers.list(  # type: ignore[attr-defined]
            filters={"label": f"agentrt.repo={repo.resolve()}"}):
        time.sleep(0.1)
    return proc


def agent_branches(repo: Path) -> dict[str, str]:
    out = git(repo, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/agent/")
    return dict(line.split() for line in out.splitlines())


def statuses(repo: Path) -> dict[str, tuple[str, str]]:
    with Store(MainRepo(repo).state_dir / "state.db") as store:
        return {r.task_id: (r.result.status.value, r.result.work.value)
                for r in store.list_sessions()}


@pytest.mark.parametrize("step", ["branch", "marker", "volume", "checkout", "container",
                                  "started", "harvest", "home"])
def test_a_crash_at_any_step_then_gc_loses_nothing_and_leaves_nothing(
    docker_client: object, repo: Path, tmp_path: Path, step: str
) -> None:
    base = git(repo, "rev-parse", "HEAD").strip()
    run = cli("run", str(write_task(tmp_path, 0.5)), "--repo", str(repo), "--json",
              env={"AGENTRT_CRASH_AT": step})
    assert run.returncode == -signal.SIGKILL, (run.returncode, run.stderr[-2000:])
    gc = cli("gc", "--repo", str(repo), "--json")
    assert gc.returncode == 0, gc.stderr
    assert not leftovers(docker_client, repo.resolve())
    assert not list((repo / ".git/agentrt/runs").glob("*/objects/*"))
    found = agent_branches(repo)
    rows = statuses(repo)
    assert all(status not in ("pending", "running") for status, _ in rows.values()), rows
    for branch, head in found.items():
        # No branch ever gains a snapshot that deletes the repository's files.
        files = git(repo, "ls-tree", "-r", "--name-only", head).split()
        assert {"README.md", "src/app.py"} <= set(files), (branch, files)
    if step in ("started", "harvest", "home"):
        # The agent ran: all of its work is on its branch.
        (head,) = found.values()
        files = git(repo, "ls-tree", "-r", "--name-only", head).split()
        assert {"committed.txt", "uncommitted.bin"} <= set(files)
        # Classified from the engine's record: exit 0 is success, even with its owner dead;
        # at "started" gc may still find the agent running (then it stops it: crashed).
        expected = {"crashed", "succeeded"} if step == "started" else {"succeeded"}
        assert rows["worker"][1] == "home" and rows["worker"][0] in expected, rows
    else:
        # The agent never started: its branch, still at the base, is gone with the rest.
        assert found == {}, (found, base)
        if rows:
            assert "before its container started" in json.dumps(
                _reasons(repo)), _reasons(repo)


def _reasons(repo: Path) -> list[str | None]:
    with Store(MainRepo(repo).state_dir / "state.db") as store:
        return [r.result.reason for r in store.list_sessions()]


@pytest.fixture
def small_state_fs(repo: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """The repository's state directory on its own 160 MiB filesystem, to fill on purpose."""
    image = tmp_path / "state.img"
    subprocess.run(["fallocate", "-l", "160M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "nodiscard", str(image)],
                   check=True)
    state = repo / ".git" / "agentrt"
    state.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(state)], check=True)
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def fill(path: Path) -> Path:
    """Fill the filesystem of ``path`` to the last block."""
    filler = path / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "status=none"], check=False)
    return filler


def test_a_full_host_disk_at_the_end_keeps_the_work_and_gc_brings_it_home_later(
    docker_client: object, repo: Path, tmp_path: Path, small_state_fs: Path
) -> None:
    base = git(repo, "rev-parse", "HEAD").strip()
    proc = start_run_and_wait(docker_client, repo, write_task(tmp_path, 6))
    time.sleep(1)
    filler = fill(small_state_fs)
    out, err = proc.communicate(timeout=240)
    try:
        assert proc.returncode == 1, err[-3000:]
        report = json.loads(out)
        (session,) = report["sessions"]
        assert session["work"] == "kept", (session, err[-6000:])
        # Its branch, still at the base, is "contained" in main; its work is not: not_merged.
        assert session["merge"]["status"] == "not_merged", session["merge"]
        assert "agentrt recover" in session["merge"]["reason"], session["merge"]
        assert any("gc" in w for w in session["warnings"]), session["warnings"]
        assert (small_state_fs / "sessions" / session["id"] / "volume.img").exists()
        assert git(repo, "rev-parse", session["branch"]).strip() == base
        # Another terminal sees what is kept, the space it holds and how to retry.
        ps = cli("ps", "--json", "--repo", str(repo))
        (entry,) = json.loads(ps.stdout)
        assert entry["work"] == "kept" and entry["kept_bytes"] >= 40 * 1024 * 1024, entry
        table = cli("ps", "--repo", str(repo))
        assert f"agentrt recover {session['id']}" in " ".join(table.stdout.split())
        doctor = cli("doctor", "--repo", str(repo))
        assert "kept volumes" in doctor.stdout and session["id"] in doctor.stdout, doctor.stdout
        # While the disk is still full, a retry keeps everything and says so.
        again = cli("recover", session["id"][:9], "--repo", str(repo))
        assert again.returncode == 1 and "kept" in again.stderr, again.stderr
        assert (small_state_fs / "sessions" / session["id"] / "volume.img").exists()
    finally:
        filler.unlink()
    gc = cli("recover", session["id"][:9], "--repo", str(repo))
    assert gc.returncode == 0, gc.stderr
    assert "work home" in gc.stdout
    files = git(repo, "ls-tree", "-r", "--name-only", session["branch"]).split()
    assert {"committed.txt", "uncommitted.bin"} <= set(files)
    assert not (small_state_fs / "sessions" / session["id"]).exists()
    assert statuses(repo)["worker"][1] == "home"
    assert not [x for x in leftovers(docker_client, repo.resolve())
                if not x.startswith("mount")]


def test_durations_come_from_the_engine_even_when_agentrt_was_paused(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    proc = start_run_and_wait(docker_client, repo, write_task(tmp_path, 2))
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(8)
    os.kill(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    (session,) = json.loads(out)["sessions"]
    assert session["duration_s"] < 6, session
    assert session["duration_s"] >= 2


def test_a_harvest_container_left_by_an_interrupted_harvest_does_not_block_the_next(
        repo: Path, docker_client: object) -> None:
    from runtime import IsolatedAgentSession, RunConfig, Task

    task = Task(id="leftover", command=["sh", "-c", "echo work > done.txt"])
    with IsolatedAgentSession(task, RunConfig(merge="none"), repo=repo) as session:
        # What a harvest killed mid-way leaves: a container holding the session's name.
        stale = docker_client.containers.create(  # type: ignore[attr-defined]
            "agentrt/base:latest", ["true"], name=f"agentrt-harvest-{session.session_id}",
            labels={"agentrt.repo": str(repo.resolve())})
        result = session.run()
    assert result.work.value == "home", result.warnings
    assert git(repo, "show", f"{session.branch}:done.txt") == "work\n"
    with pytest.raises(Exception, match="No such container|404"):
        stale.reload()


SEEDED = """
[run]
merge = "auto"
max_concurrent_agents = 1
[run.resource_limits]
memory_mb = 128
disk_mb = 48
time_seconds = 120
[[tasks]]
id = "first"
command = ["sh", "-c", "echo 1 > first.txt"]
[[tasks]]
id = "second"
command = ["sh", "-c", "echo 2 > second.txt"]
[[tasks]]
id = "third"
command = ["sh", "-c", "echo 3 > third.txt"]
"""


def test_a_kill_during_the_seed_copy_leaves_nothing_gc_cannot_remove(
        docker_client: object, repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "seeded.toml"
    path.write_text(SEEDED)
    run = cli("run", str(path), "--repo", str(repo), "--json",
              env={"AGENTRT_CRASH_AT": "seed copy"})
    assert run.returncode == -signal.SIGKILL, (run.returncode, run.stderr[-2000:])
    left = leftovers(docker_client, repo.resolve())
    assert any(item.startswith("loop") for item in left), left  # the half-written copy
    gc = cli("gc", "--repo", str(repo), "--json")
    assert gc.returncode == 0, gc.stderr
    assert not leftovers(docker_client, repo.resolve())
    again = cli("gc", "--repo", str(repo), "--json")
    assert again.returncode == 0, again.stderr
    rows = statuses(repo)
    assert all(status not in ("pending", "running") for status, _ in rows.values()), rows


def test_a_kill_during_the_merge_records_which_sessions_merged(
        docker_client: object, repo: Path, tmp_path: Path) -> None:
    path = tmp_path / "seeded.toml"
    path.write_text(SEEDED)
    run = cli("run", str(path), "--repo", str(repo), "--json", env={"AGENTRT_CRASH_AT": "merge"})
    assert run.returncode == -signal.SIGKILL, (run.returncode, run.stderr[-2000:])
    gc = cli("gc", "--repo", str(repo), "--json")
    assert gc.returncode == 0, gc.stderr
    with Store(MainRepo(repo).state_dir / "state.db") as store:
        run_row = store.latest_run()
        assert run_row is not None
        report = store.run_report(run_row.id)
    merged = [s for s in report.sessions if s.merge.status == "merged"]
    assert len(merged) == 1, [(s.task_id, s.merge) for s in report.sessions]
    assert merged[0].merge.merge_commit == git(repo, "rev-parse", "main").strip()
    assert any("merged before the process died: " + merged[0].id in w
               for w in report.warnings), report.warnings
    assert {s.merge.status for s in report.sessions if s not in merged} == {"not_attempted"}
    rest = cli("merge", run_row.id, "--repo", str(repo), "--strategy", "auto", "--json")
    assert rest.returncode == 0, rest.stderr
    files = git(repo, "ls-tree", "--name-only", "main").split()
    assert {"first.txt", "second.txt", "third.txt"} <= set(files)
