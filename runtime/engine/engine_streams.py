"""Streamed reads from an engine that end in bounded time: a deadline, or a close from any thread.

docker-py switches a streamed response's socket time-out off once the response has begun (a
silent agent is not a dead engine), so a read whose data never comes blocks its thread for
good: the logs of a service whose Swarm worker is paused (the manager waits for that node),
the output of a frozen engine. :class:`EngineStream` asks with a time-out until the response
begins, then reads without one, and is ended by :meth:`EngineStream.close` from any thread
(shutting its socket down wakes a blocked read). :func:`read_within` closes it at a deadline;
a follower's owner closes it when it stops following.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import docker

from runtime.engine.discovery import engine_errors

#: A multiplexed stream's frame header: stream type, three zero bytes, payload length.
_HEADER = struct.Struct(">BxxxL")


class EngineStream:
    """A multiplexed engine stream (stdout and stderr frames) that any thread may end."""

    def __init__(self, api: Any, response: Any) -> None:
        self._response = response
        self._sock = api._get_raw_response_socket(response)
        # Reading waits as long as the stream lasts; close() is what ends a silent one.
        api._disable_socket_timeout(self._sock)
        self._closed = threading.Event()
        self.error: str | None = None

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (the stream did not end by itself)."""
        return self._closed.is_set()

    def __iter__(self) -> Iterator[bytes]:
        """Each frame's payload, in order, until the stream ends or is closed (a read error
        ends it too, and is kept in :attr:`error`)."""
        raw = self._response.raw
        try:
            while not self._closed.is_set():
                header = raw.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    return
                _, length = _HEADER.unpack(header)
                data = raw.read(length) if length else b""
                if length and not data:
                    return
                yield bytes(data)
        except Exception as exc:  # noqa: BLE001 - a broken or closed stream ends the read
            if not self._closed.is_set():
                self.error = str(exc) or type(exc).__name__

    def close(self) -> None:
        """End the stream now; a read blocked in another thread returns. Idempotent."""
        self._closed.set()
        shut_down(self._sock)
        with contextlib.suppress(Exception):
            self._response.close()


def shut_down(sock: Any) -> None:
    """Shut a response's socket down (the SDK hands out the socket or an IO wrapping it): a
    read blocked on it in another thread returns, which closing it alone does not do."""
    for each in (sock, getattr(sock, "_sock", None)):
        shutdown = getattr(each, "shutdown", None)
        if shutdown is not None:
            with contextlib.suppress(OSError):
                shutdown(socket.SHUT_RDWR)


def service_logs(client: docker.DockerClient, service_id: str, *, follow: bool,
                 request_timeout: float, tail: int | str = "all") -> EngineStream:
    """A service's stdout and stderr (a service without a TTY), followed or as it is now.
    Waits at most ``request_timeout`` seconds for the response to begin; EngineError."""
    api = client.api
    params = {"details": False, "follow": follow, "stdout": True, "stderr": True,
              "since": 0, "timestamps": False, "tail": tail}
    with engine_errors("read the service's logs"):
        response = api._get(api._url("/services/{0}/logs", service_id), params=params,
                            stream=True, timeout=request_timeout)
        return EngineStream(api, response)


def read_within(stream: EngineStream, seconds: float) -> tuple[bytes, bool]:
    """Everything ``stream`` gives within ``seconds`` (closed then), and whether it ended by
    itself, without error, before that."""
    timer = threading.Timer(seconds, stream.close)
    timer.daemon = True
    timer.start()
    try:
        data = b"".join(stream)
    finally:
        timer.cancel()
    complete = not stream.closed and stream.error is None
    stream.close()
    return data, complete
