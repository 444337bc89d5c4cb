"""Surviving a crash or an engine restart: the crash points of the recovery tests
(:mod:`runtime.crash_points`, re-exported here), and retrying an engine call while the engine
is unreachable (a dockerd restart)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from runtime.crash_points import CRASH_POINT_ENV, crash_point
from runtime.engine.engine_watch import ENGINE_LOST
from runtime.errors import EngineUnreachableError

__all__ = ["CRASH_POINT_ENV", "crash_point", "engine_retry"]

T = TypeVar("T")

ENGINE_WAIT_SECONDS = 60


def engine_retry(action: Callable[[], T]) -> T:
    """Run ``action``, retrying while the engine is unreachable (a dockerd restart). An answer
    from the engine, even an error, is final: retrying a refusal would only repeat it; and an
    engine already declared lost (:data:`~runtime.engine.engine_watch.ENGINE_LOST`) gets one try."""
    if ENGINE_LOST.is_set():
        return action()
    retrying = Retrying(retry=retry_if_exception_type(EngineUnreachableError), reraise=True,
                        stop=stop_after_delay(ENGINE_WAIT_SECONDS), wait=wait_fixed(1))
    return retrying(action)
