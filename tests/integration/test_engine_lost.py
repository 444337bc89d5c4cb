"""Bounded time when the engine goes away: a remote engine (dind) killed mid-run and never
restarted ends the run's sessions as crashed / engine lost within its engine_timeout, their work
kept; Ctrl-C ends such a run within 10 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import git
from tests.integration.dind import DindEngine, remove_dind_container, start_dind
from tests.integration.helpers import start_run_in_background
from tests.merge_helpers import make_repo

pytestmark = pytest.mark.docker

TASK = """
[run]
merge = "auto"
engine_timeout = {timeout}
[run.resource_limits]
disk_mb = 40
time_seconds = 900
[[tasks]]
id = "stranded"
command = ["sh", "-c", "echo w > w.txt && sleep 600"]
"""


def _start_run(engine: DindEngine, tmp_path: Path, timeout: int,
               env: dict[str, str] | None = None, *, text: str | None = None,
               count: int = 1) -> subprocess.Popen[str]:
    """``agentrt run`` of ``text`` (default: TASK) on ``engine`` in the background, returned
    once ``count`` agents run."""
    proc = start_run_in_background(text or TASK.format(timeout=timeout), tmp_path,
                                   make_repo(tmp_path), {"DOCKER_HOST": engine.url, **(env or {})})
    deadline = time.monotonic() + 120
    while len(engine.client.containers.list(
            filters={"label": "agentrt.time_seconds"})) < count:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the sessions did not start"
        time.sleep(0.2)
    time.sleep(1)
    return proc


def _run_then_kill_the_engine(docker_client: object, tmp_path: Path,
                              timeout: int) -> tuple[subprocess.Popen[str], float]:
    """A run on a fresh dind engine, returned with the moment that engine was killed."""
    engine = start_dind(docker_client)  # type: ignore[arg-type]
    try:
        proc = _start_run(engine, tmp_path, timeout)
    finally:
        engine.container.kill()  # the engine is gone, and never comes back
        killed = time.monotonic()
        remove_dind_container(engine.container)
    return proc, killed


def test_a_vanished_engine_ends_its_sessions_within_engine_timeout(
        docker_client: object, tmp_path: Path) -> None:
    proc, killed = _run_then_kill_the_engine(docker_client, tmp_path, timeout=10)
    out, err = proc.communicate(timeout=300)
    took = time.monotonic() - killed
    assert proc.returncode == 1, err[-3000:]
    (session,) = json.loads(out)["sessions"]
    assert session["status"] == "crashed", session
    assert session["reason"].startswith("engine lost"), session
    assert session["work"] == "kept" and session["merge"]["status"] == "not_merged", session
    assert took < 10 + 30, (took, err[-3000:])


def test_ctrl_c_ends_a_run_whose_engine_vanished_within_10_s(docker_client: object,
                                                             tmp_path: Path) -> None:
    proc, _ = _run_then_kill_the_engine(docker_client, tmp_path, timeout=600)
    time.sleep(1)
    asked = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    took = time.monotonic() - asked
    assert proc.returncode == 130, err[-3000:]
    assert took < 10, (took, err[-3000:])
    (session,) = json.loads(out)["sessions"]
    assert session["status"] == "cancelled" and session["work"] == "kept", session


def test_a_frozen_engine_ends_its_sessions_within_engine_timeout(
        docker_client: object, tmp_path: Path) -> None:
    """The engine neither answers nor closes its connections (its dockerd is frozen)."""
    engine = start_dind(docker_client)  # type: ignore[arg-type]
    try:
        proc = _start_run(engine, tmp_path, 10, {"AGENTRT_ENGINE_TIMEOUT": "300"})
        engine.container.pause()
        frozen = time.monotonic()
        out, err = proc.communicate(timeout=400)
        took = time.monotonic() - frozen
        assert proc.returncode == 1, err[-3000:]
        (session,) = json.loads(out)["sessions"]
        assert session["reason"].startswith("engine lost") and session["work"] == "kept", session
        assert took < 10 + 30, (took, err[-3000:])
    finally:
        engine.container.unpause()
        remove_dind_container(engine.container)


FROZEN = """
[run]
merge = "auto"
[run.resource_limits]
disk_mb = 40
time_seconds = 900
[[tasks]]
id = "first"
command = ["sh", "-c", "echo one > one.txt && sleep 600"]
[[tasks]]
id = "second"
command = ["sh", "-c", "echo two > two.txt && sleep 600"]
"""
WRITES = {"first": "one.txt", "second": "two.txt"}


def test_ctrl_c_ends_a_run_whose_engine_froze_within_10_s_and_gc_cleans_up_after(
        docker_client: object, tmp_path: Path) -> None:
    """The engine neither answers nor closes its connections (its dockerd is frozen) when
    Ctrl-C comes: the run still exits 130 within 10 s, each session recorded cancelled with
    the stop unconfirmed and its work kept; once the engine is back, gc stops the containers,
    brings the work home, leaves nothing and exits 0."""
    engine = start_dind(docker_client)  # type: ignore[arg-type]
    env = {**os.environ, "DOCKER_HOST": engine.url}
    try:
        proc = _start_run(engine, tmp_path, 600, text=FROZEN, count=2)
        repo = tmp_path / "repo"
        engine.container.pause()
        time.sleep(1)
        asked = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
        took = time.monotonic() - asked
        print(f"Ctrl-C with a frozen engine: exit {proc.returncode} after {took:.1f} s")
        assert proc.returncode == 130, err[-3000:]
        assert took < 10, (took, err[-3000:])
        sessions = json.loads(out)["sessions"]
        assert len(sessions) == 2, sessions
        for session in sessions:
            assert session["status"] == "cancelled", session
            assert "stop was not confirmed" in session["reason"], session
            assert session["work"] == "kept", session
            assert session["merge"]["status"] == "not_merged", session
        ps = subprocess.run([sys.executable, "-m", "runtime.cli", "ps", "--all", "--repo",
                             str(repo), "--json"], capture_output=True, text=True, env=env,
                            timeout=60)
        assert ps.returncode == 0, ps.stderr
        shown = {s["id"]: s for s in json.loads(ps.stdout)}
        assert {shown[s["id"]]["status"] for s in sessions} == {"cancelled"}, shown
    finally:
        engine.container.unpause()
    try:
        gc = subprocess.run([sys.executable, "-m", "runtime.cli", "gc", "--repo", str(repo),
                             "--json"], capture_output=True, text=True, env=env, timeout=300)
        assert gc.returncode == 0, gc.stdout + gc.stderr[-3000:]
        for session in sessions:
            files = git(repo, "ls-tree", "-r", "--name-only", session["branch"]).split()
            assert WRITES[session["task_id"]] in files, (session, files)
        assert not engine.client.containers.list(all=True, filters={"label": "agentrt.repo"})
        assert not engine.client.volumes.list(filters={"label": "agentrt.repo"})
        assert not list((repo / ".git/agentrt/sessions").iterdir())
    finally:
        remove_dind_container(engine.container)
