"""``agentrt attach SESSION``: this terminal joined to an interactive session's agent.

The session (``interactive = true``, or ``agentrt run -i``) runs its agent with a TTY in its
usual container; this connects the terminal to it (raw mode, the terminal's size passed on and
kept up to date) until the detach keys (``ctrl-p ctrl-q``, as ``docker attach``) or the
agent's end. Detached, the session keeps running: attach again later. When the person quits
the agent, the session ends as a batch one does and its work comes home onto its branch.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import sys
import termios
import tty
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click

from runtime.cli.lookup import open_store, repo_option, resolve_session
from runtime.errors import ConfigError, NotFoundError, WaitTimeoutError
from runtime.git.safe_git import MainRepo
from runtime.state.schema import Sample
from runtime.state.store import SessionRow
from runtime.waiting import wait_until

CHUNK = 65536
START_WAIT_S = 300
#: CPU seconds between two samples (about a second apart) below which the agent counts as idle.
IDLE_CPU_S = 0.005


def is_interactive(row: SessionRow) -> bool:
    """Whether the session's task runs with a terminal (from its recorded task)."""
    return bool(row.manifest is not None and row.manifest.task.get("interactive"))


def idle_seconds(samples: Sequence[Sample], now: float) -> float | None:
    """How long an agent has used (almost) no CPU, from its samples (pure); None without
    samples. An interactive agent idle for a while is most likely waiting for its person
    (or for a slow model: the two look alike from outside)."""
    if not samples:
        return None
    since = samples[0].ts
    for before, after in zip(samples, samples[1:], strict=False):
        if after.cpu_seconds - before.cpu_seconds > IDLE_CPU_S:
            since = after.ts
    return max(now - since, 0.0)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """``fd``'s terminal in raw mode for the block (keys go through as typed: ctrl-c to the
    agent, not to agentrt), restored afterwards; nothing when ``fd`` is not a terminal."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def pump(sock: socket.socket, stdin_fd: int, stdout_fd: int) -> None:
    """Copy ``stdin_fd`` to ``sock`` and ``sock`` to ``stdout_fd`` until the engine ends the
    attach (detach keys, or the container's end). Blocks in select: no polling."""
    inputs: list[Any] = [sock, stdin_fd]
    while True:
        ready, _, _ = select.select(inputs, [], [])
        if sock in ready:
            data = sock.recv(CHUNK)
            if not data:
                return
            os.write(stdout_fd, data)
        if stdin_fd in ready:
            data = os.read(stdin_fd, CHUNK)
            if not data:  # our stdin ended (a pipe): keep showing the output
                inputs.remove(stdin_fd)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)
                continue
            sock.sendall(data)


def _follow_size(resize: Callable[[int, int], None]) -> Callable[[], None]:
    """Pass the terminal's size now and on every SIGWINCH; returns the undo."""
    def send(*_: object) -> None:
        size = shutil.get_terminal_size()
        resize(size.lines, size.columns)

    send()
    previous = signal.signal(signal.SIGWINCH, send)

    def undo() -> None:
        signal.signal(signal.SIGWINCH, previous)

    return undo


@click.command()
@click.argument("session")
@click.option("--detach-keys", default="ctrl-p,ctrl-q", show_default=True,
              help="The key sequence that detaches (the session keeps running).")
@repo_option
def attach(session: str, detach_keys: str, repo: str) -> None:
    """Connect this terminal to an interactive SESSION's agent (detach: ctrl-p ctrl-q)."""
    from runtime.engine.discovery import get_client
    from runtime.engine.labels import find_container
    from runtime.engine.terminal import attach_terminal, is_running, resize_terminal

    with open_store(MainRepo(repo)) as store:
        row = resolve_session(store, session)
    if row.status.is_final:
        raise ConfigError(f"session {row.id} has ended ({row.status.value}): `agentrt log "
                          f"{row.id}` shows its work, `agentrt continue {row.id} -p ...` "
                          "gives it more")
    if not is_interactive(row):
        raise ConfigError(f"session {row.id} is not interactive (no terminal): `agentrt logs "
                          f"-f {row.id}` follows it; `interactive = true` on a task (or "
                          "`agentrt run -i`) gives one")
    client = get_client()
    container = find_container(client, row.id)
    if container is None or not is_running(client, container.id):
        # Still being set up (volume, checkout, image): wait for its agent to start.
        click.echo(f"waiting for {row.id} to start...", err=True)
        def started() -> Any:
            found = find_container(client, row.id)
            return found if found is not None and is_running(client, found.id) else None

        try:
            container = wait_until(started, timeout=START_WAIT_S,
                                   what=f"the agent of {row.id} to start")
        except WaitTimeoutError as exc:
            raise NotFoundError(f"{exc}: `agentrt ps` shows where it is") from exc
    keys = " ".join(detach_keys.split(","))
    click.echo(f"attached to {row.id} (detach: {keys}; the session keeps running)", err=True)
    sock = attach_terminal(client, container.id, detach_keys)
    undo = _follow_size(lambda rows, cols: resize_terminal(client, container.id, rows, cols))
    try:
        with raw_terminal(sys.stdin.fileno()):
            pump(sock, sys.stdin.fileno(), sys.stdout.fileno())
    finally:
        undo()
        sock.close()
    if is_running(client, container.id):
        click.echo(f"\r\ndetached from {row.id}: it keeps running; `agentrt attach {row.id}` "
                   "again", err=True)
    else:
        click.echo(f"\r\n{row.id}: the agent has ended; its work comes home onto "
                   f"{row.branch}", err=True)


COMMANDS: list[click.Command] = [attach]
