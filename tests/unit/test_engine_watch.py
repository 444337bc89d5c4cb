"""The engine watch's decision, and its effect on the retry helper (no engine needed)."""

from __future__ import annotations

import threading
import time

import pytest

from runtime.engine.engine_watch import ENGINE_LOST, EngineWatch, engine_silent
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
