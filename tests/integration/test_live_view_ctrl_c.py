"""Ctrl-C at `agentrt run` on a real terminal (a pty of 100 columns): the live table names the
run, shows `stopping (Ctrl-C again to force)` and rows `stopping` while the grace runs, and
`stopping (forced)` after the second Ctrl-C."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from fcntl import ioctl
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07)")

TASKS = """
[run]
merge = "none"

[run.resource_limits]
memory_mb = 256
time_seconds = 120
disk_mb = 64

[[tasks]]
id = "stubborn"
command = ["sh", "-c", "echo working; sleep 60"]
"""


class Screen:
    """What `agentrt run` wrote to its terminal so far, escape sequences removed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.raw = b""

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.text, re.M):
                return self.text
            self.read(0.3)
        raise AssertionError(f"never saw {pattern!r}:\n{self.text[-3000:]}")

    def read(self, wait: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], wait)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # the child closed the terminal
            return False
        self.raw += chunk
        return bool(chunk)


def test_ctrl_c_shows_stopping_rows_then_forced_on_a_terminal(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(TASKS)
    main, child = pty.openpty()
    ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("COLUMNS", None)
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(tasks),
                             "--repo", str(repo)], stdin=child, stdout=child, stderr=child,
                            env=env, close_fds=True)
    os.close(child)
    screen = Screen(main)
    try:
        screen.wait_for(r"^stubborn\s.*\srunning\s", 90)
        assert re.search(r"agentrt run r\d{8}-\d{6}-[0-9a-f]{4}", screen.text)
        proc.send_signal(signal.SIGINT)
        # sh as PID 1 ignores SIGTERM, so the session stays `stopping` for the 10 s grace.
        screen.wait_for(r"stopping \(Ctrl-C again to force\)", 20)
        screen.wait_for(r"^stubborn\s.*\sstopping\s", 20)
        proc.send_signal(signal.SIGINT)
        screen.wait_for(r"stopping \(forced\)", 20)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            screen.read(0.3)
        while select.select([main], [], [], 0.2)[0] and screen.read(0):  # what is left
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        os.close(main)
    assert proc.returncode == 130, screen.text[-3000:]
    assert re.search(r"stubborn\s.*cancelled", screen.text), screen.text[-3000:]
    lines = screen.text.replace("\r", "\n").splitlines()
    assert all(len(line) <= 100 for line in lines)
