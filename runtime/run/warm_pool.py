"""Sessions prepared ahead: a run with more tasks than slots never waits for set-up.

While every slot is busy, the coordinator asks the scheduler which tasks come next
(:meth:`~runtime.run.scheduler.DagScheduler.upcoming`) and the pool prepares up to ``[run]
warm_pool`` of them in the background: branch, volume (a copy of the run's seed), working tree,
database, and the container *created but not started*. When a slot frees, the task's session is
taken from the pool and only has to start its container.

A session prepared ahead is in the state database as ``prepared`` from before its branch
exists (``agentrt ps`` shows it); if the process dies, ``agentrt gc`` removes its container,
volume, branch and row (it never was a task's session). Taken by its task
(:meth:`~runtime.run.session.IsolatedAgentSession.take`), the same row becomes the
task's. Sessions never taken (the run was cancelled, or their task was skipped) are released
with their branch and forgotten by :meth:`WarmPool.drain`. A preparation that fails is
dropped the same way, silently: the task is prepared again when it starts, and that failure is
reported as usual.

Cost, per session in the pool: its volume's ``disk_mb`` reserved on the volumes' disk (counted
by admission), the copied checkout in the page cache, and a created container (no process, no
memory). Nothing runs.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runtime.config import RunConfig
from runtime.errors import AgentRuntimeError

if TYPE_CHECKING:
    from runtime.run.session import IsolatedAgentSession

log = logging.getLogger(__name__)


def pool_size(config: RunConfig, tasks: int, *, prepares_ahead: bool) -> int:
    """How many sessions to prepare ahead: ``warm_pool``, when the run has more tasks than
    slots; none when the backend cannot (on Swarm, placement decides where a volume goes)
    nor with per-session services (they would run while the task waits). Pure."""
    if not prepares_ahead or config.services:
        return 0
    return max(0, min(config.warm_pool, tasks - config.max_concurrent_agents))


@dataclass
class _Warming:
    """One task's session being prepared (or prepared) ahead."""

    session: IsolatedAgentSession
    ready: threading.Event = field(default_factory=threading.Event)
    ok: bool = False


class WarmPool:
    """Up to ``size`` sessions prepared ahead, by task id."""

    def __init__(self, size: int, make: Callable[[str], IsolatedAgentSession | None]) -> None:
        self.size = size
        self._make = make
        self._lock = threading.Lock()
        self._warming: dict[str, _Warming] = {}
        self._threads: list[threading.Thread] = []

    def fill(self, upcoming: Iterable[str]) -> None:
        """Start preparing the first of ``upcoming`` not in the pool yet, up to its size."""
        with self._lock:
            for task_id in upcoming:
                if len(self._warming) >= self.size:
                    return
                if task_id in self._warming:
                    continue
                session = self._make(task_id)
                if session is None:
                    continue
                warming = self._warming[task_id] = _Warming(session)
                thread = threading.Thread(target=self._prepare, args=(warming,),
                                          name=f"agentrt-warm-{task_id}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _prepare(self, warming: _Warming) -> None:
        try:
            warming.session.prepare()
            warming.session.stand_by()
            warming.ok = True
        except AgentRuntimeError as exc:
            log.info("warm pool: %s not prepared ahead: %s", warming.session.task.id, exc)
        except Exception:  # noqa: BLE001 - the task is prepared again when it starts
            log.exception("warm pool: preparing %s failed", warming.session.task.id)
        finally:
            if not warming.ok:
                _release(warming.session)
            warming.ready.set()

    def take(self, task_id: str) -> IsolatedAgentSession | None:
        """The task's prepared session (waiting for a preparation under way), or None."""
        with self._lock:
            warming = self._warming.pop(task_id, None)
        if warming is None:
            return None
        warming.ready.wait()
        return warming.session if warming.ok else None

    def drain(self) -> None:
        """Release every session never taken (container, volume, database, branch)."""
        with self._lock:
            left, self._warming = list(self._warming.values()), {}
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join()
        for warming in left:
            if warming.ok:
                _release(warming.session)


def _release(session: IsolatedAgentSession) -> None:
    """Release a session prepared ahead and never run, and forget its row."""
    try:
        session.discard()
    except Exception:  # noqa: BLE001 - gc finds whatever is left (the marker, the row)
        log.exception("warm pool: releasing %s failed", session.session_id)
