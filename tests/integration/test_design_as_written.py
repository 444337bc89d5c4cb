"""The design's own code runs as written on a real engine, and nothing a session or run starts
outlives it or escapes `agentrt gc`; what cannot work is refused before any agent starts."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from runtime import IsolatedAgentSession, ResourceLimits
from runtime.errors import ConfigError
from tests.conftest import git
from tests.integration.helpers import agentrt

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
LIMITS = ResourceLimits(max_memory="256MB", max_disk_usage="64MB", max_execution_time="2m")


def test_the_design_sketch_example_runs_and_its_edit_lands_on_the_sessions_branch(
        repo: Path, docker_client: object) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "design_sketch.py"),
                           str(repo)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    session_id, branch, status, work, head = proc.stdout.split()
    assert (session_id, status, work) == ("fix-parser", "succeeded", "home")
    assert re.fullmatch(r"agent/fix-parser/[0-9a-f]{6}", branch), branch
    assert git(repo, "rev-parse", branch).strip() == head
    assert git(repo, "show", f"{branch}:NOTES.md") == \
        "# Notes\n- Fix the parser's handling of empty input\n"
    assert git(repo, "status", "--porcelain") == ""  # the user's checkout is untouched


def test_host_writes_to_the_workspace_come_home_without_run_and_the_id_is_the_callers(
        repo: Path, docker_client: object) -> None:
    with IsolatedAgentSession("host-edit", repo, limits=LIMITS) as session:
        assert session.session_id == "host-edit"
        (session.workspace / "README.md").write_text("# demo\nedited on the host\n")
        (session.workspace / "pkg").mkdir()
        (session.workspace / "pkg" / "new.py").write_text("x = 1\n")
        # A second session under the same id is refused before it makes anything.
        other = IsolatedAgentSession("host-edit", repo, limits=LIMITS)
        with pytest.raises(ConfigError, match="session id 'host-edit' is in use"):
            other.__enter__()
        assert session.workspace.is_dir()  # the refusal did not touch this one
    result = session.result
    assert (result.status.value, result.work.value, result.reason) == \
        ("succeeded", "home", None)
    assert result.id == "host-edit" and session.branch.startswith("agent/host-edit/")
    assert git(repo, "show", f"{session.branch}:README.md") == "# demo\nedited on the host\n"
    assert git(repo, "show", f"{session.branch}:pkg/new.py") == "x = 1\n"
    assert not session.workspace.exists()


def test_host_code_that_raises_fails_the_session_and_its_work_still_comes_home(
        repo: Path, docker_client: object) -> None:
    session = IsolatedAgentSession("half-done", repo, limits=LIMITS)
    with pytest.raises(RuntimeError, match="harness broke"), session:
        (session.workspace / "partial.txt").write_text("half\n")
        raise RuntimeError("harness broke")
    assert session.result.status.value == "failed"
    assert "RuntimeError: harness broke" in (session.result.reason or "")
    assert git(repo, "show", f"{session.branch}:partial.txt") == "half\n"


def test_on_an_engine_that_does_not_share_this_disk_workspace_says_why_and_what_instead(
        repo: Path, docker_client: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from runtime.errors import SessionError

    monkeypatch.setenv("AGENTRT_ENGINE_DISK", "remote")  # as with Colima or a remote engine
    with IsolatedAgentSession("remote", repo, limits=LIMITS) as session:
        with pytest.raises(SessionError, match=r"on the engine's host, not this one, because "
                           r"the Docker engine does not share this machine's disk.*"
                           r"session\.run\("):
            _ = session.workspace
        result = session.run(["sh", "-c", "echo inside > inside.txt"])  # what to do instead
    assert result.status.value == "succeeded", result.reason
    assert git(repo, "show", f"{session.branch}:inside.txt") == "inside\n"


@pytest.fixture
def postgres_image(docker_client: Any) -> str:
    """agentrt/postgres:latest, built through the recipe machinery."""
    from runtime.databases.postgres import IMAGE
    from runtime.engine.image_build import build_image

    build_image(docker_client, "postgres")
    return IMAGE


def _run_leftovers(client: Any, run_id: str) -> list[str]:
    label = f"agentrt.run={run_id}"
    return ([f"container {c.name}" for c in client.containers.list(
                all=True, filters={"label": label})]
            + [f"network {n.name}" for n in client.networks.list(filters={"label": label})])


def test_a_standalone_shared_database_session_leaves_no_server_or_network(
        repo: Path, docker_client: Any, postgres_image: str) -> None:
    config = {"database_strategy": "shared", "image": postgres_image}
    with IsolatedAgentSession({"id": "pg"}, config, repo=repo, limits=LIMITS) as session:
        result = session.run(["sh", "-c", 'psql "$AGENT_DATABASE_URL" -Xqc "select 1"'])
        run_id = session.run_id
        server = docker_client.containers.get(f"agentrt-db-{run_id}")
        assert server.labels["agentrt.repo"] == str(repo.resolve())
    assert result.status.value == "succeeded", result.reason
    assert _run_leftovers(docker_client, run_id) == []


def test_gc_finds_and_removes_the_server_of_a_dead_standalone_session(
        repo: Path, docker_client: Any, postgres_image: str) -> None:
    # A session on its own, killed (SIGKILL) while its server runs: no state database knows
    # its run; the labels name the repository and the dead owner.
    script = (
        "import os, sys\n"
        "from runtime import IsolatedAgentSession\n"
        "s = IsolatedAgentSession({'id': 'pg', 'command': ['true']}, "
        "{'database_strategy': 'shared', 'image': sys.argv[2]}, repo=sys.argv[1], "
        "limits={'max_memory': '256MB', 'max_disk_usage': 64})\n"
        "s.__enter__()\n"
        "print(s.run_id, flush=True)\n"
        "os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(repo), postgres_image],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run_id = proc.stdout.strip()
    assert any("agentrt-db-" in left for left in _run_leftovers(docker_client, run_id))
    gc = agentrt("gc", "--repo", str(repo))
    assert gc.returncode == 0, gc.stderr
    assert _run_leftovers(docker_client, run_id) == [], gc.stdout


TASKS = """
[run]
merge = "none"
conflict_radar_seconds = 0
[run.resource_limits]
memory_mb = 128
disk_mb = 32
time_seconds = 120
[[tasks]]
id = "long"
command = ["sh", "-c", "echo partial > partial.txt; echo working; sleep 60"]
"""


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM])
def test_a_closed_terminal_or_sigterm_stops_the_run_keeps_the_work_and_releases(
        repo: Path, docker_client: Any, tmp_path: Path, signum: signal.Signals) -> None:
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(TASKS)
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(tasks), "--repo",
                             str(repo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    label = f"agentrt.repo={repo.resolve()}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = docker_client.containers.list(filters={"label": label,
                                                             "status": "running"})
            if running:
                break
            time.sleep(0.3)
        assert running, "the session never started"
        time.sleep(1)  # the agent wrote partial.txt
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert docker_client.containers.list(all=True, filters={"label": label}) == []
    branch = git(repo, "branch", "--list", "agent/long/*").strip()
    assert branch and git(repo, "show", f"{branch}:partial.txt") == "partial\n"


def test_a_hung_up_terminal_stops_the_run_keeps_the_work_and_releases(
        repo: Path, docker_client: Any, tmp_path: Path) -> None:
    # The terminal really goes away (its master side closed: writes to it fail with EIO),
    # then SIGHUP arrives, as when a terminal window or an ssh connection is closed.
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(TASKS)
    main, child = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(tasks), "--repo",
                             str(repo)], stdin=child, stdout=child, stderr=child, cwd=ROOT,
                            env={**os.environ, "TERM": "xterm-256color"}, close_fds=True)
    os.close(child)
    label = f"agentrt.repo={repo.resolve()}"
    try:
        deadline = time.monotonic() + 120
        while not docker_client.containers.list(filters={"label": label, "status": "running"}):
            assert time.monotonic() < deadline, "the session never started"
            if select.select([main], [], [], 0.3)[0]:
                os.read(main, 65536)  # the live view draws on
        time.sleep(1)  # the agent wrote partial.txt
        os.close(main)
        main = -1
        proc.send_signal(signal.SIGHUP)
        proc.wait(timeout=120)
    finally:
        if main >= 0:
            os.close(main)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert docker_client.containers.list(all=True, filters={"label": label}) == []
    branch = git(repo, "branch", "--list", "agent/long/*").strip()
    assert branch and git(repo, "show", f"{branch}:partial.txt") == "partial\n"


def test_a_failed_environment_build_shows_its_output_without_escape_sequences(
        repo: Path, docker_client: Any) -> None:
    (repo / "Dockerfile").write_text(f"# {os.urandom(4).hex()}\nFROM agentrt/base:latest\n"
                                     "RUN echo about-to-fail >&2 && exit 3\n")
    git(repo, "add", "Dockerfile")
    git(repo, "commit", "-qm", "env")
    (repo / "tasks.toml").write_text('[run.environment]\ndockerfile = "Dockerfile"\n'
                                     '[[tasks]]\nid = "never"\ncommand = ["true"]\n')
    proc = agentrt("run", str(repo / "tasks.toml"), "--repo", str(repo))
    assert proc.returncode == 2, proc.stderr
    detail = proc.stderr.split("the build failed", 1)[1]
    assert "about-to-fail" in detail, proc.stderr
    # The classic builder colours a step's stderr (ESC [91m): dropped, neither raw nor
    # shown as "\x1b[91m".
    assert "\x1b" not in proc.stderr and "\\x1b" not in proc.stderr, proc.stderr
