"""One way to wait for something: :func:`wait_until`.

Every poll in agentrt (a service's health, the egress proxy coming up, a Swarm task's state, a
PostgreSQL server accepting connections) goes through this helper, so they share one cadence
and one time-out error::

    wait_until(lambda: proxy_ready(container), timeout=30, what="the egress proxy to start")

The predicate returns something truthy when the wait is over; that value is returned. A
predicate may raise to end the wait early (its exception propagates unchanged).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar, cast

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_exponential

from runtime.errors import WaitTimeoutError

T = TypeVar("T")

#: First pause between two polls; it doubles up to MAX_INTERVAL_S, so a quick event is seen
#: within tens of milliseconds and a slow one costs few calls.
FIRST_INTERVAL_S = 0.02
MAX_INTERVAL_S = 0.5


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = FIRST_INTERVAL_S,
    max_interval: float = MAX_INTERVAL_S,
    pause: Callable[[float], float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raises :class:`~runtime.errors.WaitTimeoutError` ("timed out after N s waiting for
    <what>") once ``timeout`` seconds have passed with no truthy answer. The pause between
    polls starts at ``interval`` and doubles up to ``max_interval``; or ``pause(elapsed)``
    gives it, for a wait with its own cadence (a Swarm task: quick at first, then slower).
    """
    retrying = Retrying(
        retry=retry_if_result(lambda value: not value),
        stop=stop_after_delay(timeout),
        wait=(wait_exponential(multiplier=interval, min=interval, max=max_interval)
              if pause is None else
              lambda state: pause(state.seconds_since_start or 0.0)),
        sleep=sleep,
        reraise=True,
    )
    try:
        return cast(T, retrying(predicate))
    except RetryError as exc:
        raise WaitTimeoutError(what, timeout) from exc
