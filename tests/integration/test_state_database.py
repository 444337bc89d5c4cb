"""Through the CLI: a lost or damaged state database stops every verb before anything starts,
names the repair, and `agentrt gc --repair-state` brings the sessions back."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from runtime.state.rebuild import REBUILT_REASON
from tests.conftest import git
from tests.integration.helpers import agentrt

pytestmark = pytest.mark.docker

TASKS = """[run]
merge = "none"
[run.resource_limits]
disk_mb = 32
memory_mb = 128
[[tasks]]
id = "one"
command = ["sh", "-c", "echo one > one.txt"]
[[tasks]]
id = "two"
command = ["true"]
"""


def first_run(repo: Path, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """One real run of two sessions; returns the task file and its JSON report."""
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(TASKS)
    proc = agentrt("run", str(task_file), "--repo", str(repo), "--json")
    assert proc.returncode == 0, proc.stderr
    return task_file, json.loads(proc.stdout)


def branches(repo: Path) -> list[str]:
    return git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/").split()


def assert_refused_before_anything_starts(repo: Path, task_file: Path) -> None:
    """``ps`` and ``run`` exit 2 naming the repair; ``run`` made no branch, log or session."""
    state = repo / ".git" / "agentrt"
    before = (branches(repo), sorted(p.name for p in (state / "logs").iterdir()))
    for args in (("ps", "--all"), ("run", str(task_file), "--json")):
        proc = agentrt(*args, "--repo", str(repo))
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "agentrt gc --repair-state" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stdout.strip() == "" or args[0] == "ps"
    assert (branches(repo), sorted(p.name for p in (state / "logs").iterdir())) == before
    assert not (state / "sessions").exists() or not any((state / "sessions").iterdir())


def repair_and_list(repo: Path) -> dict[str, dict[str, Any]]:
    """`gc --repair-state`, then the sessions `ps --all --json` lists, by id."""
    proc = agentrt("gc", "--repair-state", "--json", "--repo", str(repo))
    assert proc.returncode == 0, proc.stderr
    repair = json.loads(proc.stdout)["repair"]
    assert repair["damage"] and Path(repair["moved_aside"][0]).exists()
    listed = agentrt("ps", "--all", "--json", "--repo", str(repo))
    assert listed.returncode == 0, listed.stderr
    return {s["id"]: s for s in json.loads(listed.stdout)}


def test_a_database_truncated_to_nothing_stops_every_verb_and_repair_brings_sessions_back(
    repo: Path, tmp_path: Path, docker_client: object
) -> None:
    task_file, report = first_run(repo, tmp_path)
    db = repo / ".git" / "agentrt" / "state.db"
    db.write_bytes(b"")

    assert_refused_before_anything_starts(repo, task_file)

    sessions = repair_and_list(repo)
    assert set(sessions) == {s["id"] for s in report["sessions"]}
    for original in report["sessions"]:
        rebuilt = sessions[original["id"]]
        assert rebuilt["status"] == "crashed" and rebuilt["reason"] == REBUILT_REASON
        assert rebuilt["branch"] == original["branch"]
    # Healthy again: the next run starts and records its sessions beside the rebuilt ones.
    again = agentrt("run", str(task_file), "--repo", str(repo), "--json")
    assert again.returncode == 0, again.stderr
    listed = agentrt("ps", "--all", "--json", "--repo", str(repo))
    assert len(json.loads(listed.stdout)) == 4


def test_a_database_of_garbage_bytes_stops_every_verb_and_repair_rebuilds(
    repo: Path, tmp_path: Path, docker_client: object
) -> None:
    task_file, report = first_run(repo, tmp_path)
    (repo / ".git" / "agentrt" / "state.db").write_bytes(b"\x00garbage\xff" * 5000)

    assert_refused_before_anything_starts(repo, task_file)

    sessions = repair_and_list(repo)
    assert set(sessions) == {s["id"] for s in report["sessions"]}
    assert {s["status"] for s in sessions.values()} == {"crashed"}


def test_corrupt_pages_behind_a_valid_header_are_found_before_a_run_starts(
    repo: Path, tmp_path: Path, docker_client: object
) -> None:
    task_file, report = first_run(repo, tmp_path)
    db = repo / ".git" / "agentrt" / "state.db"
    raw = sqlite3.connect(db)
    try:
        page_size = raw.execute("PRAGMA page_size").fetchone()[0]
        pages = raw.execute("PRAGMA page_count").fetchone()[0]
        events_root = raw.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    finally:
        raw.close()
    assert pages >= 8 and 1 < events_root < pages
    with open(db, "r+b") as handle:  # the events table's pages, mid-file; the header is intact
        handle.seek((events_root - 1) * page_size)
        handle.write(b"\xa5" * page_size)

    assert_refused_before_anything_starts(repo, task_file)

    sessions = repair_and_list(repo)
    # The runs and sessions tables were still readable: their rows are kept as they were.
    assert {i: s["status"] for i, s in sessions.items()} == {
        s["id"]: "succeeded" for s in report["sessions"]}


SLOW = """[run]
merge = "none"
[run.resource_limits]
disk_mb = 32
memory_mb = 128
[[tasks]]
id = "slow"
command = ["sh", "-c", "echo s > s.txt; sleep 4"]
"""


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_a_database_damaged_mid_run_is_a_run_warning_and_exit_1(
        docker_client: object, repo: Path, tmp_path: Path, damage: str) -> None:
    import subprocess
    import sys
    import time

    _, first = first_run(repo, tmp_path)
    from runtime.state.store import Store

    with Store(repo / ".git" / "agentrt" / "state.db") as store:
        # An earlier history: pages on disk only, not in the next run's WAL (whose pages
        # would mask damage to theirs, and write them back whole at the next checkpoint).
        for i in range(2000):
            store.add_event(first["run_id"], "note", f"event {i} " + "x" * 200)
    task_file = tmp_path / "slow.toml"
    task_file.write_text(SLOW)
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(task_file),
                             "--repo", str(repo), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not docker_client.containers.list(  # type: ignore[attr-defined]
            filters={"label": f"agentrt.repo={repo.resolve()}"}):
        assert time.time() < deadline
        time.sleep(0.1)
    db = repo / ".git" / "agentrt" / "state.db"
    with db.open("r+b") as handle:
        if damage == "truncate":
            handle.truncate(0)
        else:  # every page but the first (the pages a WAL holds would mask damage)
            size = handle.seek(0, 2)
            handle.seek(4096)
            handle.write(b"\xa5" * max(0, size - 4096))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-3000:]
    report = json.loads(out)
    assert report["state_error"], report
    assert any(w.startswith("state database") for w in report["warnings"]), report["warnings"]
    (session,) = report["sessions"]
    assert session["status"] == "succeeded" and session["work"] == "home", session
    assert "Traceback" not in err
    assert git(repo, "show", f"{session['branch']}:s.txt") == "s\n"
    # The record outlives the terminal: where the database could not take it, a side file did.
    side = repo / ".git" / "agentrt" / "reports" / f"{report['run_id']}.json"
    assert side.exists() or "writes failed" in report["state_error"] or \
        "write(s) failed" in report["state_error"], report
    agentrt("gc", "--repair-state", "--repo", str(repo))
