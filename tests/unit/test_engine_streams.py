"""A streamed engine read ends at its deadline even when the engine never sends more (the
logs of a paused Swarm worker): a local HTTP server stands in for such an engine."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import docker
import pytest

from runtime.engine.engine_streams import read_within, service_logs


def _frame(data: bytes) -> bytes:
    payload = struct.pack(">BxxxL", 1, len(data)) + data
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


@pytest.fixture
def stalling_engine() -> Iterator[tuple[str, threading.Event]]:
    """An HTTP server that answers any request with one log frame, then sends nothing more
    (``ends``: it finishes the response instead)."""
    server = socket.create_server(("127.0.0.1", 0))
    ends = threading.Event()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.multiplexed-"
                         b"stream\r\nTransfer-Encoding: chunked\r\n\r\n" + _frame(b"line 1\n"))
            if ends.is_set():
                conn.sendall(b"0\r\n\r\n")
            stop.wait()  # the stall: the connection stays open, silent
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}", ends
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_a_read_whose_engine_stalls_ends_at_its_deadline(
        stalling_engine: tuple[str, threading.Event]) -> None:
    url, _ = stalling_engine
    client = docker.DockerClient(base_url=url, version="1.41", timeout=60)
    started = time.monotonic()
    stream = service_logs(client, "svc", follow=False, request_timeout=5)
    data, complete = read_within(stream, 1.0)
    took = time.monotonic() - started
    assert data == b"line 1\n" and not complete
    assert 1.0 <= took < 3, took  # not the client's 60 s, nor for good


def test_a_read_that_ends_by_itself_is_complete(
        stalling_engine: tuple[str, threading.Event]) -> None:
    url, ends = stalling_engine
    ends.set()
    client = docker.DockerClient(base_url=url, version="1.41", timeout=60)
    data, complete = read_within(service_logs(client, "svc", follow=False, request_timeout=5),
                                 10.0)
    assert data == b"line 1\n" and complete


def test_a_followed_stream_is_ended_by_a_close_from_another_thread(
        stalling_engine: tuple[str, threading.Event]) -> None:
    url, _ = stalling_engine
    client = docker.DockerClient(base_url=url, version="1.41", timeout=60)
    stream = service_logs(client, "svc", follow=True, request_timeout=5)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(stream), daemon=True)
    reader.start()
    time.sleep(0.5)
    assert reader.is_alive()  # blocked on the silent engine
    stream.close()
    reader.join(timeout=2)
    assert not reader.is_alive() and got == [b"line 1\n"] and stream.closed
