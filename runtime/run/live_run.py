"""What a run shows while it goes: its live sessions, their usage and last lines (the live
view's), the conflict radar over their trees, and the listener told of every change.

:class:`LiveSessions` is owned by :class:`~runtime.run.coordinator.AgentCoordinator`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from runtime.config import RunConfig
from runtime.engine.container import AgentContainer
from runtime.errors import AgentRuntimeError
from runtime.git.safe_git import MainRepo
from runtime.models import LiveStat, RunReport, SessionResult, SessionStatus
from runtime.run.identity import agent_ids
from runtime.run.radar import LiveTree, Overlap, radar_running

if TYPE_CHECKING:
    from runtime.run.session import IsolatedAgentSession

log = logging.getLogger(__name__)

#: Seconds between two reads of a session's last output line for the live view.
LAST_LINE_EVERY = 2.0


class LiveSessions:
    """The live side of a run: its sessions now, their stats, the radar, the listener."""

    def __init__(self, repo: MainRepo, config: RunConfig,
                 listener: Callable[[str, SessionResult], None] | None) -> None:
        self.repo = repo
        self.config = config
        self.listener = listener
        self._lock = threading.Lock()
        self._live: dict[str, IsolatedAgentSession] = {}
        self._last_lines: dict[str, tuple[float, str]] = {}

    def add(self, task_id: str, session: IsolatedAgentSession) -> None:
        """``session`` of ``task_id`` is live from now."""
        with self._lock:
            self._live[task_id] = session

    def remove(self, task_id: str) -> None:
        """The session of ``task_id`` is over."""
        with self._lock:
            self._live.pop(task_id, None)

    def notify(self, event: str, result: SessionResult) -> None:
        """Tell the listener (a view: its failures must not change the run)."""
        if self.listener is not None:
            try:
                self.listener(event, result)
            except Exception as exc:  # noqa: BLE001 - a view's bug never changes the run
                log.warning("progress listener failed: %s", exc)

    def radar(self, report: RunReport) -> contextlib.AbstractContextManager[None]:
        """The conflict radar over the live trees while the run goes; overlaps warn."""
        def on_overlap(overlap: Overlap) -> None:
            message = overlap.message()
            report.warnings.append(message)
            with self._lock:
                live = {s.task.id: s for s in self._live.values()}
            for task_id in (overlap.first, overlap.second):
                if task_id in live:
                    live[task_id].result.warnings.append(message)
                    self.notify("radar", live[task_id].result)

        return radar_running(self.repo, self.config.conflict_radar_seconds, self._live_trees,
                             on_overlap)

    def _live_trees(self) -> list[LiveTree]:
        uid, gid = agent_ids()
        return [
            LiveTree(s.session_id, s.task.id, cast(AgentContainer, s.container), f"{uid}:{gid}",
                     s.base_commit)
            for s in self.sessions()
            # The radar reads a live tree by `docker exec`: where the backend allows it.
            if s.container is not None and s.backend.reads_live_trees
            and s.result.status is SessionStatus.RUNNING
        ]

    def stats(self) -> dict[str, LiveStat]:
        """What each running session uses now, against its limits (for the live view)."""
        stats = {}
        now = time.monotonic()
        for session in self.sessions():
            cached = self._last_lines.get(session.session_id)
            if cached is None or now - cached[0] > LAST_LINE_EVERY:
                with contextlib.suppress(AgentRuntimeError):
                    cached = (now, session.last_line())
                    self._last_lines[session.session_id] = cached
            stat = session.stats(last_line=cached[1] if cached else "")
            if stat is not None:
                stats[session.task.id] = stat
        return stats

    def sessions(self) -> list[IsolatedAgentSession]:
        """The sessions running now."""
        with self._lock:
            return list(self._live.values())
