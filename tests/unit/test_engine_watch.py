"""The engine watch's decision, and its effect on the retry helper (no engine needed)."""

from __future__ import annotations

import threading
import time

import pytest

from runtime.engine.engine_watch import (
    CANCEL_PROBE_S,
    ENGINE_LOST,
    LOST_CALL_TIMEOUT_S,
    EngineWatch,
    engine_silent,
)
from runtime.engine.resilience import engine_retry
from runtime.errors import EngineUnreachableError


def test_silence_is_judged_against_engine_timeout() -> None:
    assert not engine_silent(100.0, 160.0, 60)
    assert engine_silent(100.0, 160.5, 60)


class _Silent:
    """A client whose engine never answers (its pings hang)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def ping(self) -> None:
        self.release.wait()


def test_a_hung_engine_is_declared_lost_once_after_its_timeout() -> None:
    client = _Silent()
    lost: list[float] = []
    watch = EngineWatch(client, engine_timeout=0.6, on_lost=lambda: lost.append(1),  # type: ignore[arg-type]
                        interval=0.1)
    started = time.monotonic()
    watch.start()
    try:
        while not lost and time.monotonic() - started < 5:
            time.sleep(0.05)
        assert lost == [1] and watch.lost and ENGINE_LOST.is_set()
        assert 0.6 <= time.monotonic() - started < 2
    finally:
        client.release.set()
        watch.close()
        ENGINE_LOST.clear()


def test_a_lost_engine_gets_one_try_from_the_retry_helper() -> None:
    calls: list[int] = []

    def unreachable() -> None:
        calls.append(1)
        raise EngineUnreachableError("connection refused")

    ENGINE_LOST.set()
    try:
        started = time.monotonic()
        with pytest.raises(EngineUnreachableError):
            engine_retry(unreachable)
        assert calls == [1] and time.monotonic() - started < 1
    finally:
        ENGINE_LOST.clear()


class _Api:
    timeout = 120


class _Engine:
    """A client whose pings hang (frozen) or answer at once; its timeout on ``api``."""

    def __init__(self, frozen: bool) -> None:
        self.frozen = frozen
        self.api = _Api()
        self.release = threading.Event()

    def ping(self) -> None:
        if self.frozen:
            self.release.wait()


class _HangingContainer:
    """A container whose stop never returns (the engine took the request and froze)."""

    id = "c0ffee"

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def stop(self, grace: int) -> None:
        self.release.wait()


@pytest.mark.parametrize("frozen", [True, False])
def test_a_cancel_gives_a_frozen_engines_container_up_within_the_probe(frozen: bool) -> None:
    from runtime.backends.docker.supervisor import Supervisor, Watch

    client = _Engine(frozen)
    supervisor = Supervisor(client, "r")  # type: ignore[arg-type]
    watch = Watch(session_id="s-1", container=_HangingContainer(client.release),  # type: ignore[arg-type]
                  deadline=time.time() + 600, grace_seconds=10)
    asked = time.monotonic()
    threading.Thread(target=supervisor.stop, args=(watch,), kwargs={"reason": "cancel"},
                     daemon=True).start()
    try:
        given_up = watch.exited.wait(CANCEL_PROBE_S + 2)
        took = time.monotonic() - asked
        if frozen:  # no answer to a ping: given up after the probe, not after the grace
            assert given_up and watch.engine_gone and watch.engine_interrupted, watch
            assert CANCEL_PROBE_S <= took < CANCEL_PROBE_S + 2
            assert ENGINE_LOST.is_set() and client.api.timeout == LOST_CALL_TIMEOUT_S
        else:  # a live engine gets the grace to stop it
            assert not given_up and not watch.engine_gone and not ENGINE_LOST.is_set()
            assert client.api.timeout == 120
    finally:
        client.release.set()
        supervisor.close()
        ENGINE_LOST.clear()


def test_a_new_watch_gives_calls_their_full_timeout_again() -> None:
    client = _Engine(frozen=False)
    watch = EngineWatch(client, engine_timeout=60, on_lost=lambda: None)  # type: ignore[arg-type]
    watch.declare_lost()
    assert ENGINE_LOST.is_set() and client.api.timeout == LOST_CALL_TIMEOUT_S
    watch.start()
    try:
        assert not ENGINE_LOST.is_set() and client.api.timeout == 120
    finally:
        watch.close()


def test_a_client_shortened_twice_gets_its_full_timeout_back() -> None:
    client = _Engine(frozen=False)
    first = EngineWatch(client, engine_timeout=60, on_lost=lambda: None)  # type: ignore[arg-type]
    first.declare_lost()
    # The next run's watch is made while the client is still shortened (the Python API).
    second = EngineWatch(client, engine_timeout=60, on_lost=lambda: None)  # type: ignore[arg-type]
    second.declare_lost()
    assert client.api.timeout == LOST_CALL_TIMEOUT_S
    second.start()
    try:
        assert client.api.timeout == 120
    finally:
        second.close()
        ENGINE_LOST.clear()
