"""Noticing an engine that stopped answering, in bounded time, whatever it does.

The supervisor's own reads cannot tell: a streamed read (the event stream) blocks on a socket
that a vanished remote engine may never close, and every call retries or waits out the
client's timeout. :class:`EngineWatch` asks separately: a ping every few seconds, each in a
thread of its own (a hung ping never delays the next check), and any sign of life the
supervisor sees (an event) counts as an answer. When nothing has answered for
``engine_timeout`` seconds it calls ``on_lost`` once: the supervisor then ends its sessions as
``crashed`` / engine lost (their work kept), and :data:`ENGINE_LOST` tells the retry helpers
(:func:`runtime.engine.resilience.engine_retry`) not to wait for that engine any more; each new
call to it then waits at most :data:`LOST_CALL_TIMEOUT_S` (a frozen engine answers none).

A person waiting for a stop (Ctrl-C, `agentrt stop`) is not made to wait for the grace and the
engine timeout: :meth:`EngineWatch.ping_now` asks at once, and an engine that has not answered
within :data:`CANCEL_PROBE_S` of the request (:meth:`EngineWatch.answered_since`) is taken as
frozen or gone.

:data:`ENGINE_LOST` is per process: a process drives one engine at a time (a new supervisor
clears it).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from runtime.engine.types import EngineClient

log = logging.getLogger(__name__)

#: Set once an engine was declared lost in this process (cleared by the next watch started).
ENGINE_LOST = threading.Event()
#: Seconds each new call to an engine declared lost may take (its client's timeout).
LOST_CALL_TIMEOUT_S = 3
#: Seconds an engine has to answer a ping after a stop was asked for, before it is taken as
#: frozen or gone (a live engine answers in milliseconds, even under load).
CANCEL_PROBE_S = 3.0
#: The full time-out of each client whose calls were shortened (restored by the next watch).
_FULL_TIMEOUT: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def engine_silent(last_answer: float, now: float, engine_timeout: float) -> bool:
    """True when the engine has not answered for more than ``engine_timeout`` seconds. Pure."""
    return now - last_answer > engine_timeout


class EngineWatch:
    """Pings ``client`` every ``interval`` seconds; ``on_lost()`` once it is silent too long."""

    def __init__(self, client: EngineClient, engine_timeout: float,
                 on_lost: Callable[[], None], interval: float | None = None) -> None:
        self.client = client
        self.engine_timeout = engine_timeout
        self.interval = interval if interval is not None else min(5.0, engine_timeout / 4)
        self._on_lost = on_lost
        self._last = time.monotonic()
        self._lock = threading.Lock()
        self._pinging = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    def answered(self) -> None:
        """The engine just answered (an event, a ping)."""
        with self._lock:
            self._last = time.monotonic()

    def silence(self) -> float:
        """Seconds since the engine last answered."""
        with self._lock:
            return time.monotonic() - self._last

    def answered_since(self, moment: float) -> bool:
        """Whether the engine answered after ``moment`` (a ``time.monotonic()`` reading)."""
        with self._lock:
            return self._last > moment

    def ping_now(self) -> None:
        """Ask the engine at once, in a thread of its own (even while another ping hangs)."""
        threading.Thread(target=self._ping_once, name="agentrt-engine-ping", daemon=True).start()

    def declare_lost(self) -> None:
        """The engine is gone or frozen: :data:`ENGINE_LOST`, and each new call to it waits at
        most :data:`LOST_CALL_TIMEOUT_S` (calls already waiting keep their own timeout)."""
        ENGINE_LOST.set()
        api: Any = getattr(self.client, "api", None)
        timeout = getattr(api, "timeout", None)
        if isinstance(timeout, int | float):
            full = _FULL_TIMEOUT.setdefault(api, timeout)
            api.timeout = min(full, LOST_CALL_TIMEOUT_S)

    def start(self) -> None:
        """Start watching (clears :data:`ENGINE_LOST`, and gives calls their full timeout)."""
        ENGINE_LOST.clear()
        api = getattr(self.client, "api", None)
        if api is not None and api in _FULL_TIMEOUT:
            api.timeout = _FULL_TIMEOUT.pop(api)
        self.answered()
        self._thread = threading.Thread(target=self._loop, name="agentrt-engine-watch",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._ping()
            with self._lock:
                last = self._last
            if engine_silent(last, time.monotonic(), self.engine_timeout):
                self.lost = True
                self.declare_lost()
                log.error("the Docker engine has not answered for %.0f s: its sessions end as "
                          "crashed (engine lost), their work kept", self.engine_timeout)
                self._on_lost()
                return

    def _ping(self) -> None:
        """One ping in its own thread, unless the previous one is still hanging."""
        with self._lock:
            if self._pinging:
                return
            self._pinging = True

        def ping() -> None:
            try:
                self._ping_once()
            finally:
                with self._lock:
                    self._pinging = False

        threading.Thread(target=ping, name="agentrt-engine-ping", daemon=True).start()

    def _ping_once(self) -> None:
        try:
            self.client.ping()
            self.answered()
        except Exception:  # noqa: BLE001 - no answer is what this watches for
            pass
