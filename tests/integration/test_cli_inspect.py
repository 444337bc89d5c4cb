"""`agentrt ps / logs / diff / report` against real runs: real containers, real git, real CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git
from tests.integration.helpers import agentrt

pytestmark = pytest.mark.docker

LIMITS = """
[run.resource_limits]
memory_mb = 256
time_seconds = 120
disk_mb = 64
"""



def start_run(task_file: Path, repo: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    """`agentrt run` in the background (its output goes to files, so it never blocks)."""
    return subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "run", str(task_file), "--repo", str(repo)],
        stdout=(tmp_path / "run.out").open("wb"), stderr=(tmp_path / "run.err").open("wb"),
    )


def task_file(tmp_path: Path, body: str, run: str = "") -> Path:
    path = tmp_path / "tasks.toml"
    path.write_text(f"[run]\n{run}\n{LIMITS}\n{body}")
    return path


def ps(repo: Path, *flags: str) -> list[dict[str, Any]]:
    proc = agentrt("ps", "--json", "--repo", str(repo), *flags)
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


def wait_until_running(repo: Path, task_id: str, run: subprocess.Popen[bytes],
                       timeout: float = 90) -> dict[str, Any]:
    """Poll `ps --json` from "another terminal" until the task's session runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in ps(repo):
            if entry["task_id"] == task_id and entry["status"] == "running":
                return entry
        assert run.poll() is None, "the run ended before its session was seen running"
        time.sleep(0.3)
    raise AssertionError(f"{task_id} never showed as running")


def test_ps_shows_a_session_running_while_the_run_goes_on_then_its_end(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    tasks = task_file(tmp_path, '[[tasks]]\nid = "slow"\ncommand = ["sh", "-c", "sleep 6"]\n')
    run = start_run(tasks, repo, tmp_path)
    try:
        entry = wait_until_running(repo, "slow", run)
        assert entry["branch"].startswith("agent/slow/")
        assert entry["started_at"] and entry["exit_code"] is None
        assert entry["owner_alive"] is True and entry["duration_s"] >= 0
        table = agentrt("ps", "--repo", str(repo))
        assert table.returncode == 0 and entry["id"] in table.stdout and "running" in table.stdout
    finally:
        assert run.wait(timeout=120) == 0, (tmp_path / "run.err").read_text()
    [done] = [e for e in ps(repo) if e["id"] == entry["id"]]
    assert done["status"] == "succeeded" and done["exit_code"] == 0
    assert done["duration_s"] >= 5
    assert [e["id"] for e in ps(repo, "--all")] == [entry["id"]]


def test_logs_follow_prints_lines_as_the_agent_writes_them(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    script = "for i in 1 2 3 4 5 6; do echo tick $i; sleep 1; done"
    tasks = task_file(tmp_path, f'[[tasks]]\nid = "ticker"\ncommand = ["sh", "-c", "{script}"]\n')
    run = start_run(tasks, repo, tmp_path)
    try:
        session = wait_until_running(repo, "ticker", run)["id"]
        follower = subprocess.Popen(
            [sys.executable, "-m", "runtime.cli", "logs", "-f", session[:9], "--repo", str(repo)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert follower.stdout is not None
        first = follower.stdout.readline()
        # The first line arrived while the agent was still working.
        assert first == "tick 1\n"
        assert run.poll() is None
        assert [e["status"] for e in ps(repo) if e["id"] == session] == ["running"]
        rest = follower.stdout.read()
        assert follower.wait(timeout=60) == 0, follower.stderr.read() if follower.stderr else ""
        assert first + rest == "".join(f"tick {i}\n" for i in range(1, 7))
    finally:
        assert run.wait(timeout=120) == 0, (tmp_path / "run.err").read_text()
    # Finished: the saved log, with or without -f, and -f returns at once.
    for flags in ((), ("-f",)):
        proc = agentrt("logs", session, *flags, "--repo", str(repo), timeout=30)
        assert proc.returncode == 0 and proc.stdout.count("tick") == 6


def test_diff_shows_the_agents_change_against_its_base_without_running_diff_drivers(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    script = (r"printf 'print(2)\n' > src/app.py && git commit -qam 'print 2' && "
              r"printf 'new\n' > NEW.txt && printf 'caf\351\n' > latin1.txt")
    # A TOML literal string ('''...''') passes the script to sh untouched.
    tasks = task_file(tmp_path, "[[tasks]]\nid = 'edit'\ncommand = ['sh', '-c', '''"
                      + script + "''']\n")
    proc = agentrt("run", str(tasks), "--repo", str(repo), "--json")
    assert proc.returncode == 0, proc.stderr
    [session] = json.loads(proc.stdout)["sessions"]
    # A diff driver and a textconv filter that would leave a marker if git ran them.
    marker = tmp_path / "driver-ran"
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "attributes").write_text("* diff=evil\n")
    git(repo, "config", "diff.evil.textconv", f"sh -c 'touch {marker}; cat \"$0\"'")
    git(repo, "config", "diff.evil.command", f"sh -c 'touch {marker}'")

    diff = subprocess.run([sys.executable, "-m", "runtime.cli", "diff", session["id"][:7],
                           "--repo", str(repo)], capture_output=True, timeout=60)
    assert diff.returncode == 0, diff.stderr
    assert b"-print('hi')\n+print(2)\n" in diff.stdout
    assert b"+++ b/NEW.txt" in diff.stdout
    assert b"+caf\xe9\n" in diff.stdout  # agent bytes come through as they are, not decoded
    assert not marker.exists()
    git(repo, "diff", session["base_commit"], session["branch"])  # the trap is live: plain git
    assert marker.exists()  # runs the driver
    stat = agentrt("diff", session["id"], "--stat", "--repo", str(repo))
    assert stat.returncode == 0 and "src/app.py" in stat.stdout and "3 files changed" in stat.stdout


def test_report_json_is_the_runs_own_report_and_html_is_one_self_contained_page(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    tasks = task_file(tmp_path, "".join(
        f'[[tasks]]\nid = "{name}"\nprompt = "<script>alert(1)</script> {name}"\n'
        f'command = ["sh", "-c", "sleep 1; echo {name} > {name}.txt"]\n'
        for name in ("alpha", "apple", "beta")), run="max_concurrent_agents = 2")
    proc = agentrt("run", str(tasks), "--repo", str(repo), "--json")
    assert proc.returncode == 0, proc.stderr
    own = json.loads(proc.stdout)

    for name in ("latest", own["run_id"][:12]):
        again = agentrt("report", name, "--json", "--repo", str(repo))
        assert again.returncode == 0, again.stderr
        stored = json.loads(again.stdout)
        # Same sessions, field for field. (Order may differ: the store keeps the order in which
        # sessions were created, which concurrent starts can swap; the run uses task order.)
        assert sorted(stored["sessions"], key=lambda s: s["id"]) == \
            sorted(own["sessions"], key=lambda s: s["id"])
        for key in ("run_id", "repo", "base_commit", "target", "merge", "interrupted"):
            assert stored[key] == own[key]

    table = agentrt("report", "latest", "--repo", str(repo))
    assert table.returncode == 0 and all(t in table.stdout for t in ("alpha", "apple", "beta"))

    page_path = tmp_path / "report.html"
    html = agentrt("report", own["run_id"], "--html", str(page_path), "--repo", str(repo))
    assert html.returncode == 0, html.stderr
    page = page_path.read_text()
    assert '<svg class="timeline"' in page
    bars = re.findall(r'<rect class="bar" data-session="([^"]+)"', page)
    assert sorted(bars) == sorted(s["id"] for s in own["sessions"])
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*(https?:)?//", page, re.I)
    assert "http://" not in page and "https://" not in page
    for fetcher in ("<script", "<link", "<iframe", "@import", "url("):
        assert fetcher not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt; alpha" in page


def test_ambiguous_or_unknown_names_exit_2_with_one_clear_line(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    empty = agentrt("report", "latest", "--repo", str(repo))
    assert empty.returncode == 2 and "no agentrt runs" in empty.stderr
    assert agentrt("ps", "--json", "--repo", str(repo)).stdout.strip() == "[]"

    tasks = task_file(tmp_path, "".join(f'[[tasks]]\nid = "{n}"\ncommand = ["true"]\n'
                                        for n in ("alpha", "apple")))
    assert agentrt("run", str(tasks), "--repo", str(repo)).returncode == 0
    cases = [
        (("logs", "a"), "'a' is ambiguous: matches alpha-"),
        (("diff", "a"), "'a' is ambiguous"),
        (("logs", "zzz"), "no session matches 'zzz'"),
        (("diff", "zzz"), "no session matches 'zzz'"),
        (("report", "nope"), "no run matches 'nope'"),
    ]
    for args, message in cases:
        proc = agentrt(*args, "--repo", str(repo))
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_diff_of_a_running_session_is_read_inside_its_container(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    script = ("printf 'print(3)\\n' > src/app.py && printf 'fresh\\n' > fresh.txt && "
              "ln -s /etc/shadow shadow-link && sleep 25")
    tasks = task_file(tmp_path, "[[tasks]]\nid = 'live'\ncommand = ['sh', '-c', '''"
                      + script + "''']\n")
    run = start_run(tasks, repo, tmp_path)
    try:
        entry = wait_until_running(repo, "live", run)
        deadline = time.monotonic() + 30
        out = b""
        while time.monotonic() < deadline and b"fresh.txt" not in out:
            proc = subprocess.run([sys.executable, "-m", "runtime.cli", "diff", entry["id"],
                                   "--repo", str(repo)], capture_output=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            out = proc.stdout
            time.sleep(0.5)
        assert b"+++ b/fresh.txt" in out and b"+fresh" in out
        assert b"+print(3)" in out
        # The link is shown as a link: its target was never read (not on the host either).
        assert b"+/etc/shadow" in out and b"root:" not in out
        assert not list((repo / ".git/agentrt/sessions").glob("*/radar*"))
    finally:
        agentrt("stop", "latest", "--repo", str(repo))
        run.wait(timeout=120)
