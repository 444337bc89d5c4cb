"""The report tells where each session's work is: work that never reached its branch (harvest
stopped from outside, volume unmounted mid-run, bundle refused) is ``not_merged`` with the
reason, never ``merged``, even though its branch, left at the base, is contained in the target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

TASK = """
[run]
merge = "auto"
[run.resource_limits]
memory_mb = 128
disk_mb = 64
time_seconds = 120
[[tasks]]
id = "worker"
command = ["sh", "-c", "echo {marker} > marker.txt && git add . && git commit -qm marker && sleep {sleep}"]
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True,
                          text=True, timeout=300)


def start_run(repo: Path, path: Path, text: str) -> subprocess.Popen[str]:
    """``agentrt run --json`` of the task file ``text`` (written to ``path``), in the background."""
    path.write_text(text)
    return subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(path), "--repo",
                             str(repo), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def on_main(repo: Path, marker: str) -> bool:
    return subprocess.run(["git", "-C", str(repo), "grep", "-q", marker, "main", "--"],
                          check=False).returncode == 0


def assert_honest(repo: Path, tmp_path: Path, proc: subprocess.Popen[str], marker: str,
                  work: str) -> dict[str, object]:
    """The run exits 1; its JSON, table, stored report and HTML say not_merged, with why."""
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err[-3000:]
    (session,) = json.loads(out)["sessions"]
    assert session["work"] == work, session
    assert session["merge"]["status"] == "not_merged", session
    assert session["merge"]["reason"] and work in session["merge"]["reason"], session
    assert session["merge"]["merge_commit"] is None
    assert not on_main(repo, marker)
    report = cli("report", "latest", "--repo", str(repo))
    assert "not_merged" in report.stdout and "merged " not in report.stdout, report.stdout
    html = tmp_path / "report.html"
    cli("report", "latest", "--repo", str(repo), "--html", str(html))
    assert "not merged" in html.read_text()
    return session


def test_a_harvest_stopped_from_outside_is_not_merged_until_recovered(
        docker_client: object, repo: Path, tmp_path: Path) -> None:
    marker = "marker-" + os.urandom(6).hex()
    proc = start_run(repo, tmp_path / "tasks.toml", TASK.format(marker=marker, sleep=1))
    stopped: list[str] = []

    def stop_the_harvest() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not stopped and proc.poll() is None:
            for c in docker_client.containers.list(  # type: ignore[attr-defined]
                    filters={"name": "agentrt-harvest-", "label": f"agentrt.repo={repo}"}):
                c.kill()
                stopped.append(c.name)
            time.sleep(0.02)

    watcher = threading.Thread(target=stop_the_harvest)
    watcher.start()
    session = assert_honest(repo, tmp_path, proc, marker, "kept")
    watcher.join()
    assert stopped
    # The reason names what brings it home; once it is home, the merge is attempted again.
    recover = cli("recover", str(session["id"]), "--repo", str(repo))
    assert recover.returncode == 0, recover.stderr
    report = json.loads(cli("report", "latest", "--repo", str(repo), "--json").stdout)
    assert report["sessions"][0]["merge"]["status"] == "not_attempted", report
    merge = cli("merge", "latest", "--repo", str(repo), "--strategy", "auto", "--json")
    assert merge.returncode == 0, merge.stderr
    assert on_main(repo, marker)


def test_a_volume_unmounted_mid_run_is_not_merged(docker_client: object, repo: Path,
                                                  tmp_path: Path) -> None:
    marker = "marker-" + os.urandom(6).hex()
    proc = start_run(repo, tmp_path / "tasks.toml", TASK.format(marker=marker, sleep=10))
    state = str(repo / ".git" / "agentrt")
    deadline = time.time() + 120
    mounts: list[str] = []
    while time.time() < deadline and not mounts:
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(state + "/sessions/")]
        time.sleep(0.05)
    assert mounts
    # The agent has written and committed its marker (on a loaded machine its container
    # starts late): its commit's log line is in the tree's reflog.
    logs = [Path(m) / "workspace" / ".git" / "logs" / "HEAD" for m in mounts]
    while time.time() < deadline and not any(
            p.exists() and "marker" in p.read_text(errors="replace") for p in logs):
        time.sleep(0.1)
    for mount in mounts:
        subprocess.run(["umount", "-l", mount], check=True)
    assert_honest(repo, tmp_path, proc, marker, "kept")
    cli("gc", "--repo", str(repo))  # what the unmount left (the no_leftovers fixture checks)
    assert not on_main(repo, marker)


def test_a_refused_bundle_is_not_merged(repo: Path, tmp_path: Path) -> None:
    marker = "marker-" + os.urandom(6).hex()
    script = ("echo {m} > marker.txt && head -c 3145728 /dev/urandom > big.bin && git add . "
              "&& git commit -qm marker")
    run = start_run(repo, tmp_path / "refused.toml", f"""
[run]
merge = "auto"
max_file_mb = 1
[[tasks]]
id = "worker"
command = ["sh", "-c", "{script.format(m=marker)}"]
""")
    assert_honest(repo, tmp_path, run, marker, "refused")
