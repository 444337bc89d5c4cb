"""Conflict radar: warn while agents run when two live sessions change the same file.

Every ``interval`` seconds the radar asks each live session what it changed against its base,
inside the session's own container (``docker exec`` as the agent's uid, see
:func:`runtime.git.live_tree.changed_paths`: the host never reads an agent's tree), and reports each
newly overlapping path once, so a person can stop one agent early instead of meeting the
conflict at merge time. The paths are the agents' text: views sanitise them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from runtime.engine.container import AgentContainer
from runtime.engine.engine_watch import ENGINE_LOST
from runtime.errors import AgentRuntimeError
from runtime.git.live_tree import changed_paths
from runtime.git.safe_git import MainRepo

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 5.0
#: How long stopping waits for a scan under way; a scan stuck on a lost engine is left behind.
STOP_WAIT_S = 30.0
LOST_STOP_WAIT_S = 0.5


@dataclass(frozen=True)
class LiveTree:
    """What the radar needs of one running session."""

    session_id: str
    task_id: str
    container: AgentContainer
    user: str
    base_commit: str


@dataclass(frozen=True)
class Overlap:
    """Two live sessions changed the same path."""

    path: str
    first: str
    second: str

    def message(self) -> str:
        """One line for the live view and the report."""
        return f"conflict radar: {self.first} and {self.second} both changed {self.path}"


def overlaps(changes: Mapping[str, set[str]]) -> list[Overlap]:
    """Every path changed by more than one session, per pair, sorted. Pure."""
    found = []
    for first, second in itertools.combinations(sorted(changes), 2):
        for path in sorted(changes[first] & changes[second]):
            found.append(Overlap(path, first, second))
    return found


class ConflictRadar:
    """A background thread comparing live sessions' changes; call ``stop()`` at the end."""

    def __init__(self, repo: MainRepo, live: Callable[[], Iterable[LiveTree]],
                 on_overlap: Callable[[Overlap], None], interval: float = DEFAULT_INTERVAL) -> None:
        self.repo = repo
        self.live = live
        self.on_overlap = on_overlap
        self.interval = interval
        self.seen: set[Overlap] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="agentrt-radar", daemon=True)

    def start(self) -> ConflictRadar:
        """Start scanning."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop scanning and wait for the thread (not for a scan stuck on a lost engine)."""
        self._stop.set()
        self._thread.join(timeout=LOST_STOP_WAIT_S if ENGINE_LOST.is_set() else STOP_WAIT_S)

    def scan(self) -> list[Overlap]:
        """One pass: report and return the overlaps not seen before."""
        trees = list(self.live())
        if len(trees) < 2:
            return []
        changes = {}
        for tree in trees:
            try:
                changes[tree.task_id] = changed_paths(tree.container, tree.user,
                                                      tree.base_commit)
            except AgentRuntimeError as exc:  # it just ended, or the engine hiccuped
                log.debug("conflict radar: %s: %s", tree.session_id, exc)
        new = [o for o in overlaps(changes) if o not in self.seen]
        for overlap in new:
            self.seen.add(overlap)
            self.on_overlap(overlap)
        return new

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except Exception as exc:  # noqa: BLE001 - the radar is advisory: never disturb the run
                log.warning("conflict radar: %s", exc)


@contextlib.contextmanager
def radar_running(repo: MainRepo, seconds: int, live_trees: Callable[[], list[LiveTree]],
                  on_overlap: Callable[[Overlap], None]) -> Iterator[None]:
    """A :class:`ConflictRadar` comparing ``live_trees`` every ``seconds`` while inside the
    block (none when ``seconds`` is 0)."""
    if seconds == 0:
        yield
        return
    radar = ConflictRadar(repo, live_trees, on_overlap, float(seconds)).start()
    try:
        yield
    finally:
        radar.stop()
