"""Surviving a crash or an engine restart: crash points for the recovery tests, and retrying an
engine call while the engine is unreachable (a dockerd restart)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import TypeVar

from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from runtime.errors import EngineUnreachableError

T = TypeVar("T")

ENGINE_WAIT_SECONDS = 60

CRASH_POINT_ENV = "AGENTRT_CRASH_AT"


def crash_point(name: str) -> None:
    """Die here (SIGKILL, like a power cut) when ``AGENTRT_CRASH_AT`` names this step.

    Only the crash-recovery tests set it; every step of a session's set-up and end has one.
    """
    if os.environ.get(CRASH_POINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def engine_retry(action: Callable[[], T]) -> T:
    """Run ``action``, retrying while the engine is unreachable (a dockerd restart). An answer
    from the engine, even an error, is final: retrying a refusal would only repeat it."""
    retrying = Retrying(retry=retry_if_exception_type(EngineUnreachableError), reraise=True,
                        stop=stop_after_delay(ENGINE_WAIT_SECONDS), wait=wait_fixed(1))
    return retrying(action)
