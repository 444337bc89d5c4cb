"""A person's terminal joined to an interactive session's container (``agentrt attach``).

The container of a session with ``interactive = true`` has a TTY and an open stdin
(:func:`runtime.engine.container.container_spec`). :func:`attach_terminal` opens one attach
stream to it (stdin, and the TTY's one output stream), with the engine's own detach keys: when
the engine reads that sequence on stdin it ends this attach only, and the container goes on.
Several attaches may be open at once (the run's log keeper holds one from before the start);
each sees the output from the moment it attached.
"""

from __future__ import annotations

import socket
from typing import Any

import docker
import docker.errors

from runtime.engine.discovery import engine_errors
from runtime.errors import EngineError

DETACH_KEYS = "ctrl-p,ctrl-q"


def attach_terminal(client: docker.DockerClient, container_id: str,
                    detach_keys: str = DETACH_KEYS) -> socket.socket:
    """A socket carrying the container's TTY both ways: what is sent is its stdin, what is
    received its output (raw: a TTY has no stdout/stderr frames). EngineError if it fails."""
    with engine_errors("attach to the session's terminal"):
        sock: Any = client.api.attach_socket(container_id, params={
            "stdin": 1, "stdout": 1, "stderr": 1, "stream": 1, "logs": 0,
            "detachKeys": detach_keys})
        client.api._disable_socket_timeout(sock)
    raw = getattr(sock, "_sock", sock)
    if not isinstance(raw, socket.socket):
        raise EngineError("this engine connection cannot carry a terminal (attach over a "
                          "plain socket: a local or tcp:// DOCKER_HOST)")
    return raw


def resize_terminal(client: docker.DockerClient, container_id: str, rows: int,
                    columns: int) -> None:
    """Tell the container's TTY its new size (a TUI redraws); quiet if it has ended."""
    try:
        with engine_errors("resize the session's terminal"):
            client.api.resize(container_id, height=rows, width=columns)
    except EngineError:
        pass


def is_running(client: docker.DockerClient, container_id: str) -> bool:
    """Whether the container still runs (after an attach ended: detached, or it ended)."""
    with engine_errors("inspect the session's container"):
        try:
            state = client.api.inspect_container(container_id).get("State") or {}
        except docker.errors.NotFound:
            return False
    return bool(state.get("Running"))
