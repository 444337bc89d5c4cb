"""Issue 14: secrets out of the engine's records, deadlines without agentrt, true numbers,
logs that keep their beginning, and one clear line when the engine misbehaves."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.config import ResourceLimits, Task
from runtime.git.safe_git import MainRepo
from runtime.models import SessionStatus
from runtime.state.store import Store
from tests.conftest import git
from tests.integration.conftest import leftovers
from tests.integration.helpers import agentrt, by_task, run_tasks, sh

pytestmark = pytest.mark.docker

SECRET = "sk-hard-" + os.urandom(12).hex()
KEY = "AGENTRT_HARD_KEY"


def start_run(repo: Path, tmp_path: Path, text: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(text)
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "run", str(task_file), "--repo", str(repo),
         "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})})


def running_container(client: object, repo: Path, timeout: float = 60) -> object:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = client.containers.list(  # type: ignore[attr-defined]
            filters={"label": f"agentrt.repo={repo.resolve()}"})
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError("no session container started")


def docker_inspect(container_id: str) -> str:
    out = subprocess.run(["docker", "inspect", container_id], capture_output=True, text=True,
                         check=True)
    return out.stdout


def state_of(client: object, container_id: str) -> dict[str, object]:
    return client.api.inspect_container(container_id)["State"]  # type: ignore[attr-defined,no-any-return]


# -- 4. secrets ------------------------------------------------------------------------------

SECRET_TASKS = f"""
[run]
cleanup_on_complete = false
[[tasks]]
id = "uses-key"
secrets = ["{KEY}"]
command = ["sh", "-c", "printf %s \\"${KEY}\\" | sha256sum | cut -c1-64 > key.sha; for i in 1 2 3 4 5 6; do echo tick $i ${KEY}; sleep 1; done"]
"""


def test_a_secret_reaches_the_agent_but_not_docker_inspect_nor_a_viewer_without_it(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    assert KEY not in os.environ  # the viewers below run without the value
    proc = start_run(repo, tmp_path, SECRET_TASKS, env={KEY: SECRET})
    try:
        container = running_container(docker_client, repo)
        session_id = container.labels["agentrt.session"]  # type: ignore[attr-defined]
        # Another terminal follows the logs, without the secret in its environment.
        follow = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", "logs", "-f", session_id, "--repo", str(repo)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        live = docker_inspect(container.id)  # type: ignore[attr-defined]
        secrets_file = (MainRepo(repo).state_dir / "sessions" / session_id / "secrets" / "env")
        gone_by = time.time() + 10
        while os.path.lexists(secrets_file) and time.time() < gone_by:
            time.sleep(0.05)
        assert not os.path.lexists(secrets_file), "the entry point did not consume the file"
        out, err = proc.communicate(timeout=120)
        followed, follow_err = follow.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    kept = docker_inspect(container.id)  # type: ignore[attr-defined]
    assert SECRET not in live and SECRET not in kept
    assert f'"{KEY}=' not in live  # not even the name with some other value
    # The agent had it in its environment, byte for byte.
    session = json.loads(out)["sessions"][0]
    digest = git(repo, "show", f"{session['head_commit']}:key.sha").strip()
    assert digest == hashlib.sha256(SECRET.encode()).hexdigest()
    assert follow.returncode == 0, follow_err
    assert "tick 1 [REDACTED]" in followed and "tick 6 [REDACTED]" in followed
    assert SECRET not in followed
    saved = agentrt("logs", session["id"], "--repo", str(repo))
    assert "tick 6 [REDACTED]" in saved.stdout
    state = repo / ".git" / "agentrt"
    for path in state.rglob("*"):
        if path.is_file() and not path.name.endswith(".img"):
            assert SECRET.encode() not in path.read_bytes(), path
    gc = agentrt("gc", "--repo", str(repo))
    assert gc.returncode == 0, gc.stderr
    assert not leftovers(docker_client, repo.resolve())


# -- 7. deadlines without agentrt -----------------------------------------------------------

DEADLINE_TASKS = """
[run.resource_limits]
memory_mb = 128
disk_mb = 32
time_seconds = 3
[[tasks]]
id = "sleeper"
command = ["sh", "-c", "echo w > written.txt; git add . && git commit -qm 'before the deadline'; sleep 300"]
"""
# The CLI's grace is 10 s: the container's own SIGTERM comes at time_seconds + grace.
OWN_DEADLINE_S = 3 + 10


def wait_exited(client: object, container_id: str, timeout: float) -> dict[str, object]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = state_of(client, container_id)
        if state["Status"] == "exited":
            return state
        time.sleep(0.5)
    raise AssertionError(f"the container still runs {timeout:.0f} s later: {state}")


def test_after_sigkill_of_agentrt_the_container_stops_at_its_deadline_and_gc_says_timed_out(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    proc = start_run(repo, tmp_path, DEADLINE_TASKS)
    container = running_container(docker_client, repo)
    time.sleep(1)
    proc.kill()
    proc.wait(timeout=30)
    state = wait_exited(docker_client, container.id, OWN_DEADLINE_S + 30)  # type: ignore[attr-defined]
    assert state["ExitCode"] in (124, 137), state
    gc = agentrt("gc", "--repo", str(repo), "--json")
    assert gc.returncode == 0, gc.stderr
    with Store(MainRepo(repo).state_dir / "state.db") as store:
        (row,) = store.list_sessions()
    assert row.result.status is SessionStatus.TIMED_OUT, row.result
    assert row.result.reason == "ran past time_seconds=3 (stopped by its container)"
    assert "before the deadline" in git(repo, "log", "--format=%s", row.branch)
    assert git(repo, "show", f"{row.branch}:written.txt") == "w\n"
    assert not leftovers(docker_client, repo.resolve())


def test_a_paused_agentrt_finds_its_session_timed_out_by_the_container_itself(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    proc = start_run(repo, tmp_path, DEADLINE_TASKS)
    try:
        container = running_container(docker_client, repo)
        time.sleep(1)
        proc.send_signal(signal.SIGSTOP)
        try:
            state = wait_exited(docker_client, container.id, OWN_DEADLINE_S + 30)  # type: ignore[attr-defined]
        finally:
            proc.send_signal(signal.SIGCONT)
        assert state["ExitCode"] in (124, 137), state
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-2000:]
    (session,) = json.loads(out)["sessions"]
    assert session["status"] == "timed_out", session
    assert session["reason"] == "ran past time_seconds=3"
    assert git(repo, "show", f"{session['branch']}:written.txt") == "w\n"
    assert not leftovers(docker_client, repo.resolve())


# -- 8. true numbers -------------------------------------------------------------------------


def test_an_oom_kill_at_128_mb_reports_a_peak_of_at_least_120_mb(repo: Path) -> None:
    hog = sh("hog", "python3 -c 'x = bytearray(512 * 1024 * 1024); print(len(x))'")
    report = run_tasks(repo, [hog], resource_limits=ResourceLimits(
        memory_mb=128, cpu_percent=100, time_seconds=60, disk_mb=64, pids=64))
    result = by_task(report)["hog"]
    assert result.status is SessionStatus.OOM_KILLED, result
    assert 120 * 1024 * 1024 <= result.peak_memory_bytes <= 130 * 1024 * 1024, \
        result.peak_memory_bytes


def test_a_session_that_filled_its_disk_and_exited_0_succeeds_with_a_warning(repo: Path) -> None:
    # The agent deletes its file again before it ends: only the sampler saw the full disk.
    filler = sh("filler", "dd if=/dev/zero of=big bs=1M count=200 2>/dev/null; sleep 2; "
                          "rm -f big; echo done > done.txt")
    report = run_tasks(repo, [filler], resource_limits=ResourceLimits(
        memory_mb=128, cpu_percent=100, time_seconds=60, disk_mb=40, pids=64))
    result = by_task(report)["filler"]
    assert result.status is SessionStatus.SUCCEEDED, result
    assert any("disk_mb=40" in w for w in result.warnings), result.warnings
    quiet = run_tasks(repo, [sh("quiet", "echo ok > ok.txt")])
    assert by_task(quiet)["quiet"].warnings == []


# -- 9. logs keep their beginning ------------------------------------------------------------

LINE = b"0123456789abcdefghijklmnopqrstuvwxyz\n"
FLOOD_BYTES = len(LINE) * (100 * 1024 * 1024 // len(LINE))  # 100 MB of whole lines


def test_a_100_mb_flood_keeps_the_first_and_last_lines_and_counts_what_was_dropped(
    repo: Path,
) -> None:
    flood = Task(id="flood", command=[
        "sh", "-c", f"echo FIRST-LINE; yes {LINE.decode().strip()} | head -c {FLOOD_BYTES}; "
                    "echo LAST-LINE"])
    report = run_tasks(repo, [flood], resource_limits=ResourceLimits(
        memory_mb=256, cpu_percent=100, time_seconds=240, disk_mb=64, pids=64))
    result = by_task(report)["flood"]
    assert result.status is SessionStatus.SUCCEEDED, result
    saved = (MainRepo(repo).state_dir / "logs" / f"{result.id}.log").read_bytes()
    total = len(b"FIRST-LINE\n") + FLOOD_BYTES + len(b"LAST-LINE\n")
    assert saved.startswith(b"FIRST-LINE\n" + LINE)
    assert saved.endswith(LINE + b"LAST-LINE\n")
    found = re.search(rb"\n\[agentrt: (\d+) bytes of output dropped here\]\n", saved)
    assert found is not None
    kept = len(saved) - len(found.group(0))
    assert int(found.group(1)) + kept == total
    assert len(saved) < 16 * 1024 * 1024


# -- 10. no errors past the boundary ---------------------------------------------------------


class SilentEngine:
    """A unix socket that answers the ping (so agentrt connects) and then never answers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(64)
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        while True:
            try:
                request = conn.recv(65536)
            except OSError:
                return
            if not request:
                return
            if b"/_ping" in request.split(b"\r\n", 1)[0]:
                conn.sendall(b"HTTP/1.1 200 OK\r\nApi-Version: 1.41\r\nContent-Type: text/plain"
                             b"\r\nContent-Length: 2\r\n\r\nOK")
            elif b"/version" in request.split(b"\r\n", 1)[0]:
                body = b'{"ApiVersion": "1.41", "Version": "20.10.24"}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            else:
                self.held.append(conn)  # read, never answered
                return

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent_engine(tmp_path: Path) -> Iterator[SilentEngine]:
    engine = SilentEngine(tmp_path / "silent.sock")
    yield engine
    engine.close()


def one_line_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_stop_gc_and_ps_against_a_hung_or_missing_engine_end_with_one_line(
    docker_client: object, repo: Path, tmp_path: Path, silent_engine: SilentEngine
) -> None:
    proc = start_run(repo, tmp_path, DEADLINE_TASKS.replace("time_seconds = 3",
                                                            "time_seconds = 120"))
    try:
        container = running_container(docker_client, repo)
        session_id = container.labels["agentrt.session"]  # type: ignore[attr-defined]
        hung = {"DOCKER_HOST": f"unix://{silent_engine.path}", "AGENTRT_ENGINE_TIMEOUT": "2"}
        missing = {"DOCKER_HOST": f"unix://{tmp_path}/nothing-here.sock"}
        for env in (hung, missing):
            started = time.monotonic()
            stop = agentrt("stop", session_id, "--repo", str(repo), env=env, timeout=60)
            assert stop.returncode == 2, stop.stderr
            line = one_line_failure(stop)
            assert line.startswith("agentrt: ") and ("engine" in line or "Docker" in line), line
            assert time.monotonic() - started < 30
            gc = agentrt("gc", "--repo", str(repo), env=env, timeout=60)
            assert gc.returncode in (0, 1), gc.stderr
            assert "Traceback" not in gc.stderr, gc.stderr
            assert len([ln for ln in gc.stderr.splitlines() if ln.strip()]) <= 1, gc.stderr
            ps = agentrt("ps", "--repo", str(repo), env=env, timeout=60)
            assert ps.returncode == 0 and "Traceback" not in ps.stderr, ps.stderr
            assert session_id[:12] in ps.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    assert not leftovers(docker_client, repo.resolve())


def test_after_sigstop_every_deadline_kill_says_the_container_stopped_it(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    four = DEADLINE_TASKS.replace("[run.resource_limits]", "[run]\nmax_concurrent_agents = 4\n"
                                  "warm_pool = 0\n[run.resource_limits]")
    for n in range(2, 5):
        four += (f'[[tasks]]\nid = "sleeper{n}"\ncommand = ["sh", "-c", "echo w > written.txt; '
                 "git add . && git commit -qm 'before the deadline'; sleep 300\"]\n")
    proc = start_run(repo, tmp_path, four)
    try:
        deadline = time.time() + 120
        while len(docker_client.containers.list(  # type: ignore[attr-defined]
                filters={"label": f"agentrt.repo={repo.resolve()}"})) < 4:
            assert time.time() < deadline, "the four sessions did not start"
            time.sleep(0.2)
        ids = [c.id for c in docker_client.containers.list(  # type: ignore[attr-defined]
            filters={"label": f"agentrt.repo={repo.resolve()}"})]
        time.sleep(1)
        proc.send_signal(signal.SIGSTOP)
        try:
            for cid in ids:
                wait_exited(docker_client, cid, OWN_DEADLINE_S + 30)
        finally:
            proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err[-2000:]
    sessions = json.loads(out)["sessions"]
    assert len(sessions) == 4
    for session in sessions:
        assert session["status"] == "timed_out", session
        assert any("container's own deadline" in w for w in session["warnings"]), (
            session["warnings"], session["reason"], session["exit_code"], session["started_at"],
            session["finished_at"])
    assert not leftovers(docker_client, repo.resolve())
