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

from tests.integration.dind import DindEngine, remove_dind_container, start_dind
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
               env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``agentrt run`` on ``engine`` in the background, returned once its agent runs."""
    repo = make_repo(tmp_path)
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(TASK.format(timeout=timeout))
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "run", str(tasks), "--repo", str(repo), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "DOCKER_HOST": engine.url, **(env or {})})
    deadline = time.monotonic() + 120
    while not engine.client.containers.list(filters={"label": "agentrt.time_seconds"}):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the session did not start"
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
