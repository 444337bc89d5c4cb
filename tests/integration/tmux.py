"""A private tmux server for tests that drive a real terminal: one window per command, keys
sent with ``send-keys``, the screen read with ``capture-pane``."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import WaitTimeoutError
from runtime.waiting import wait_until


class Tmux:
    """A private tmux server (its own socket) with one window per command."""

    def __init__(self, socket: Path) -> None:
        self.base = ["tmux", "-S", str(socket)]
        self.started = False

    def __call__(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], capture_output=True, text=True,
                              check=True).stdout

    def window(self, name: str, command: str) -> None:
        """A window running ``command`` (kept open after it ends, for its last words)."""
        shell = f"{command}; echo EXIT=$?; sleep 600"
        if self.started:
            self("new-window", "-t", "t", "-n", name, shell)
        else:
            self("new-session", "-d", "-s", "t", "-x", "120", "-y", "30", "-n", name, shell)
            self.started = True

    def screen(self, name: str) -> str:
        return self("capture-pane", "-p", "-t", f"t:{name}")

    def wait_for(self, name: str, text: str, timeout: float = 60) -> str:
        """The window's screen once it shows ``text``; AssertionError with the screen if not."""
        try:
            return wait_until(lambda: self.screen(name) if text in self.screen(name) else "",
                              timeout=timeout, what=f"{text!r} in tmux window {name}")
        except WaitTimeoutError as exc:
            raise AssertionError(f"{exc}; the window shows:\n{self.screen(name)}") from exc


@pytest.fixture
def tmux(tmp_path: Path, repo: Path, docker_client: Any) -> Iterator[Tmux]:
    t = Tmux(tmp_path / "tmux.sock")
    yield t
    # A closed terminal stops a run still going (SIGHUP): its release is awaited, so a failed
    # test leaves nothing behind either.
    subprocess.run([*t.base, "kill-server"], capture_output=True)
    label = f"agentrt.repo={repo.resolve()}"
    with contextlib.suppress(WaitTimeoutError):
        wait_until(lambda: not docker_client.containers.list(all=True,
                                                            filters={"label": label}),
                   timeout=60, what="the run's containers removed")


