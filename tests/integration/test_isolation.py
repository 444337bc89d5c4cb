"""What one agent can see and do: nothing of the host, the main repository or its neighbours."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path

import pytest

from runtime.config import ResourceLimits, RunConfig
from runtime.models import SessionStatus
from runtime.run.session import IsolatedAgentSession
from tests.conftest import git
from tests.integration.helpers import by_task, run_tasks, sh

pytestmark = pytest.mark.docker

POSTURE = r"""
grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -d '\t' > posture.txt
echo "uid:$(id -u)" >> posture.txt
if touch /etc/agentrt-probe 2>/dev/null; then echo rootfs:writable; else echo rootfs:readonly; fi >> posture.txt
if [ -e /var/run/docker.sock ] || [ -e /run/docker.sock ]; then echo sock:present; else echo sock:absent; fi >> posture.txt
echo "routes:$(($(wc -l < /proc/net/route) - 1))" >> posture.txt
if touch "$OBJECTS/probe" 2>/dev/null; then echo objects:writable; else echo objects:readonly; fi >> posture.txt
if [ -d "$OBJECTS/pack" ]; then echo store:present; else echo store:absent; fi >> posture.txt
if [ -e "$REPO/.git/config" ]; then echo repo:visible; else echo repo:hidden; fi >> posture.txt
mkdir -p /tmp/m
if mount -t tmpfs none /tmp/m 2>/dev/null; then echo mount:allowed; else echo mount:denied; fi >> posture.txt
if unshare -U true 2>/dev/null; then echo unshare:allowed; else echo unshare:denied; fi >> posture.txt
if head -c1 /proc/kcore >/dev/null 2>&1; then echo kcore:readable; else echo kcore:denied; fi >> posture.txt
if echo h 2>/dev/null > /proc/sysrq-trigger; then echo sysrq:writable; else echo sysrq:denied; fi >> posture.txt
"""


def test_posture_read_back_inside_the_container(repo: Path, runtime_name: str) -> None:
    # The run's object store, where the session sees it (read-only).
    task = sh("posture", POSTURE, env={"OBJECTS": "/agentrt/objects", "REPO": str(repo)})
    report = run_tasks(repo, [task], runtime=runtime_name)
    result = by_task(report)["posture"]
    assert result.status is SessionStatus.SUCCEEDED, result.reason
    facts = dict(
        line.split(":", 1) for line in git(repo, "show", f"{result.head_commit}:posture.txt")
        .splitlines()
    )
    assert facts["CapEff"] == "0000000000000000"
    if runtime_name == "runc":
        assert facts["NoNewPrivs"] == "1"
        assert facts["Seccomp"] == "2"
    # gVisor's /proc does not show NoNewPrivs or Seccomp: its kernel is the syscall filter.
    assert facts["uid"] != "0"
    assert facts["rootfs"] == "readonly"
    assert facts["sock"] == "absent"
    assert facts["routes"] == "0"
    assert (facts["store"], facts["objects"]) == ("present", "readonly")
    assert facts["repo"] == "hidden"
    # The kernel's attack surface stays closed: no mounts, user namespaces, kcore or sysrq.
    assert (facts["mount"], facts["kcore"], facts["sysrq"]) == ("denied", "denied", "denied")
    # gVisor implements user namespaces in its own (user-space) kernel, never the host's.
    assert facts["unshare"] == "denied" or runtime_name == "runsc"


def test_snoop_agent_cannot_find_a_file_another_running_agent_wrote(repo: Path) -> None:
    marker = "agentrt-secret-" + secrets.token_hex(8)
    writer = sh("writer", f"echo {marker} > secret.txt; sqlite3 $AGENT_DB "
                          f"\"create table s(v); insert into s values('{marker}')\"; sleep 15")
    snoop = sh("snoop", f"sleep 2; grep -rl --exclude-dir=proc --exclude-dir=sys "
                        f"--exclude-dir=dev {marker} / > found.txt 2>/dev/null; "
                        f"echo done >> found.txt")
    report = run_tasks(repo, [writer, snoop], max_concurrent_agents=2)
    results = by_task(report)
    assert results["snoop"].status is SessionStatus.SUCCEEDED
    found = git(repo, "show", f"{results['snoop'].head_commit}:found.txt")
    assert found == "done\n", f"snoop found: {found}"
    assert git(repo, "show", f"{results['writer'].head_commit}:secret.txt") == f"{marker}\n"


def test_five_agents_write_their_own_sqlite_without_lock_errors(repo: Path) -> None:
    script = """
import os, sqlite3
conn = sqlite3.connect(os.environ["AGENT_DB"], timeout=1)
conn.execute("create table if not exists rows(session text, n int)")
me = os.environ["AGENT_SESSION_ID"]
for n in range(1000):
    with conn:
        conn.execute("insert into rows values (?, ?)", (me, n))
mine = conn.execute("select count(*) from rows where session = ?", (me,)).fetchone()[0]
other = conn.execute("select count(*) from rows where session != ?", (me,)).fetchone()[0]
open("db.txt", "w").write(f"{mine} {other}")
"""
    from runtime.config import Task

    tasks = [Task(id=f"db{i}", command=["python3", "-c", script]) for i in range(5)]
    report = run_tasks(repo, tasks, max_concurrent_agents=5)
    for result in report.sessions:
        assert result.status is SessionStatus.SUCCEEDED, result.reason
        assert git(repo, "show", f"{result.head_commit}:db.txt") == "1000 0"


def test_killing_one_container_leaves_others_running_and_is_recorded_as_crashed(
    repo: Path, docker_client: object
) -> None:
    victim = sh("victim", "echo started > started.txt; sleep 60")
    other = sh("other", "sleep 6; echo finished > other.txt")
    box: dict[str, object] = {}
    worker = threading.Thread(target=lambda: box.update(report=run_tasks(
        repo, [victim, other], max_concurrent_agents=2)))
    worker.start()
    deadline = time.time() + 60
    killed = False
    while time.time() < deadline and not killed:
        for c in docker_client.containers.list(filters={"label": "agentrt.session"}):  # type: ignore[attr-defined]
            if c.labels["agentrt.session"].startswith("victim-"):
                time.sleep(1)
                c.kill()
                killed = True
        time.sleep(0.2)
    worker.join(timeout=120)
    assert killed
    results = by_task(box["report"])  # type: ignore[arg-type]
    assert results["victim"].status is SessionStatus.CRASHED
    assert results["other"].status is SessionStatus.SUCCEEDED
    assert git(repo, "show", f"{results['victim'].head_commit}:started.txt") == "started\n"


def test_sixteen_concurrent_session_creations_on_one_repository_all_succeed(
    repo: Path, docker_client: object
) -> None:
    from runtime.config import Task

    config = RunConfig(resource_limits=ResourceLimits(memory_mb=64, disk_mb=16))
    for round_ in range(3):
        errors: list[BaseException] = []
        sessions: list[IsolatedAgentSession] = []

        def create(i: int, round_: int = round_, errors: list[BaseException] = errors,
                   sessions: list[IsolatedAgentSession] = sessions) -> None:
            try:
                s = IsolatedAgentSession(Task(id=f"c{round_}-{i}", command=["true"]), config,
                                         repo=repo, client=docker_client)  # type: ignore[arg-type]
                s.prepare()
                sessions.append(s)
            except BaseException as exc:  # collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        try:
            assert not errors, errors
            assert len(sessions) == 16
            assert all(s.volume is not None and (s.volume.workspace / "README.md").exists()
                       for s in sessions)
        finally:
            for s in sessions:
                s.close()
    branches = git(repo, "branch", "--list", "agent/*").split()
    assert len(branches) == 48
