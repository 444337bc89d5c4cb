"""Interactive sessions in a real terminal: ``agentrt run`` of a task with ``interactive = true``
in one tmux window, ``agentrt attach`` in another; keys sent with ``tmux send-keys``, the
screen read with ``capture-pane``. The agent is a shell script that reads lines from its
terminal and commits each one; detaching (ctrl-p ctrl-q) leaves it running, a second attach
reaches the same agent, and when the person quits it the work comes home as usual."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime.waiting import wait_until
from tests.conftest import git
from tests.integration.helpers import agentrt
from tests.integration.tmux import Tmux

pytestmark = [pytest.mark.docker,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]

CHAT = r"""printf 'ready> '
while IFS= read -r line; do
  [ "$line" = quit ] && break
  echo "$line" >> notes.txt && git add notes.txt && git commit -qm "note: $line"
  printf 'saved %s\nready> ' "$line"
done
echo bye"""

TASKS = f"""
[run]
merge = "none"
[run.resource_limits]
memory_mb = 128
disk_mb = 32
time_seconds = 300
[[tasks]]
id = "chat"
interactive = true
command = ["sh", "-c", {json.dumps(CHAT)}]
[[tasks]]
id = "batch"
command = ["sh", "-c", "echo batch > batch.txt"]
"""


def _cli(*args: str) -> str:
    return " ".join(shlex.quote(a) for a in [sys.executable, "-m", "runtime.cli", *args])


def _session(repo: Path, task: str) -> dict[str, Any]:
    entries = json.loads(agentrt("ps", "--json", "--repo", str(repo)).stdout)
    return next((e for e in entries if e["task_id"] == task), {})


def test_attach_detach_and_reattach_to_an_interactive_session_in_tmux(
    docker_client: Any, repo: Path, tmp_path: Path, tmux: Tmux
) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(TASKS)
    tmux.window("run", _cli("run", str(task_file), "--repo", str(repo)))
    tmux.wait_for("run", "`agentrt attach chat`")
    # Attach as soon as the session exists: attach waits for its agent to start.
    wait_until(lambda: _session(repo, "chat"), timeout=60, what="the chat session recorded")
    tmux.window("a1", _cli("attach", "chat", "--repo", str(repo)))
    live = wait_until(lambda: _session(repo, "chat").get("status") == "running"
                      and _session(repo, "chat"), timeout=60, what="the chat session running")
    sid = live["id"]
    assert live["interactive"] is True
    assert f": agentrt attach {sid})" in agentrt("ps", "--repo", str(repo)).stdout
    tmux.wait_for("a1", f"attached to {sid}")
    tmux("send-keys", "-t", "t:a1", "hello", "Enter")
    tmux.wait_for("a1", "saved hello")
    # Detach: the attach ends, the agent does not.
    tmux("send-keys", "-t", "t:a1", "C-p", "C-q")
    screen = tmux.wait_for("a1", "EXIT=0")
    assert f"detached from {sid}: it keeps running" in screen
    assert _session(repo, "chat")["status"] == "running"
    # Waiting for its person, it uses no CPU: ps says how long it has been idle.
    idle = wait_until(lambda: (_session(repo, "chat").get("idle_s") or 0) >= 2, timeout=30,
                      what="the waiting agent idle for 2 s")
    assert idle and ", idle " in agentrt("ps", "--repo", str(repo)).stdout

    # A second attach reaches the same agent, which still has its terminal.
    tmux.window("a2", _cli("attach", sid, "--repo", str(repo)))
    tmux.wait_for("a2", f"attached to {sid}")
    tmux("send-keys", "-t", "t:a2", "world", "Enter")
    tmux.wait_for("a2", "saved world")
    tmux("send-keys", "-t", "t:a2", "quit", "Enter")
    screen = tmux.wait_for("a2", "EXIT=0")
    assert "bye" in screen and f"{sid}: the agent has ended" in screen

    # The run ends as a batch run does, and the work is home on the session's branch.
    tmux.wait_for("run", "EXIT=0", timeout=120)
    ended = _session(repo, "chat")
    assert ended["status"] == "succeeded" and ended["work"] == "home"
    branch = ended["branch"]
    assert git(repo, "show", f"{branch}:notes.txt") == "hello\nworld\n"
    assert git(repo, "log", "--format=%s", f"main..{branch}").split("\n")[:2] == [
        "note: world", "note: hello"]
    # The batch task of the same run ran without a terminal, as always.
    assert _session(repo, "batch")["status"] == "succeeded"
    # What the agent printed on its terminal is in its saved log.
    assert "saved hello" in agentrt("logs", sid, "--repo", str(repo)).stdout


def test_attach_refuses_a_batch_session(docker_client: Any, repo: Path,
                                        tmp_path: Path) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(TASKS.replace("interactive = true\n", "")
                         .replace(json.dumps(CHAT), json.dumps("sleep 30")))
    run = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(task_file),
                            "--repo", str(repo)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        live = wait_until(lambda: _session(repo, "chat").get("status") == "running"
                          and _session(repo, "chat"), timeout=180, what="chat running")
        refused = agentrt("attach", live["id"], "--repo", str(repo))
        assert refused.returncode == 2
        assert f"session {live['id']} is not interactive" in refused.stderr
    finally:
        run.send_signal(2)  # Ctrl-C: the run stops its sessions, keeps their work
        run.wait(timeout=180)
