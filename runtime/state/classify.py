"""How a session ended, decided by one pure function from the facts recorded about it.

The supervisor's threads and the session record what they saw (a deadline fired, a stop was
asked for, the disk limit was crossed, the engine went away, the container vanished or was
killed from outside, an OOM kill, the exit code, the engine's own error text); :func:`classify`
turns those facts and the limits into a :class:`~runtime.models.SessionStatus` and a reason.
The precedence is fixed (the table in :data:`PRECEDENCE`), so the outcome never depends on
which thread noticed first. ``agentrt gc`` classifies a session whose agentrt process died
through the same function, from the facts the engine recorded (:func:`recorded_facts`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from runtime.config import ResourceLimits
from runtime.engine.container import ended_at_deadline
from runtime.models import SessionStatus
from runtime.state.session_facts import engine_times

PRECEDENCE = (
    "cancelled",          # a person asked: Ctrl-C, `agentrt stop`, the API's cancel()
    "timed_out",          # the deadline: agentrt's stop reached the engine, or the container's own
    "disk_exceeded",      # a soft disk limit was crossed (agentrt stopped it)
    "owner_lost",         # its agentrt process died; gc found it running and stopped it
    "engine_lost",        # the engine restarted, vanished or stopped answering around the end
    "node_lost",          # the Swarm node it ran on went down or stopped answering
    "vanished",           # the container is gone without an exit
    "oom",                # the kernel's OOM killer
    "exit 0",             # the agent said it succeeded
    "volume_full",        # a loop volume is full and the agent failed
    "external_kill",      # SIGKILL from outside agentrt (exit 137, not stopping)
    "engine_error",       # the engine's own State.Error
    "exit code",          # anything else: failed
)


#: timeout(1)'s exit code when its own timer ended the command.
TIMEOUT_OWN_EXIT = 124
OWNER_LOST = "the agentrt process owning this session died; gc stopped its container"
ENGINE_LOST = "engine lost: the Docker engine restarted or stopped answering during the session"
NODE_LOST = "node lost: the Swarm node running the session went down or stopped answering"


@dataclass(frozen=True)
class EndFacts:
    """What was seen of a session's end (every field defaults to "not seen").

    The one vocabulary of a session's end: every backend's ``AgentRun.wait``
    (:mod:`runtime.backends.base`) returns one, and gc builds one from the engine's record
    (:func:`recorded_facts`). :func:`classify` reads the facts above ``exit_code``'s
    neighbours; the measurements below them go into the session's result as they are.
    """

    cancelled: bool = False
    timed_out: bool = False
    """agentrt's deadline fired and it asked the engine to stop the container."""
    stop_failed: bool = False
    """agentrt's stop did not reach the engine: the deadline alone did not end the session."""
    own_deadline: bool = False
    """The engine's record says the container's own deadline (its timeout(1)) ended it."""
    disk_exceeded: bool = False
    owner_lost: bool = False
    engine_lost: bool = False
    node_lost: bool = False
    vanished: bool = False
    oom: bool = False
    exit_code: int | None = None
    volume_full: bool = False
    external_kill: bool = False
    stopping: bool = False
    engine_error: str | None = None
    # Measurements (not read by classify): the engine's clock, peaks and totals, and what
    # went wrong while watching.
    started_at: datetime | None = None
    finished_at: datetime | None = None
    peak_memory_bytes: int | None = None
    cpu_seconds: float | None = None
    disk_used_bytes: int | None = None
    #: The volume filled up at some point (writes failed with ENOSPC) even if space came back.
    disk_filled: bool = False
    #: The engine or node was gone at the end: its tree cannot be read (the work stays there).
    tree_unreachable: str | None = None
    #: agentrt asked for the stop but the engine stopped answering: it was never confirmed.
    stop_unconfirmed: bool = False
    warnings: tuple[str, ...] = ()


def classify(facts: EndFacts, limits: ResourceLimits) -> tuple[SessionStatus, str | None]:
    """The status and reason of a session that ended with ``facts`` under ``limits``. Pure."""
    if facts.cancelled:
        return SessionStatus.CANCELLED, "stopped on request"
    if facts.own_deadline or (facts.timed_out and not facts.stop_failed):
        return SessionStatus.TIMED_OUT, f"ran past time_seconds={limits.time_seconds}"
    if facts.disk_exceeded:
        return SessionStatus.DISK_FULL, f"used more than disk_mb={limits.disk_mb}"
    if facts.owner_lost:
        return SessionStatus.CRASHED, OWNER_LOST
    if facts.engine_lost:
        return SessionStatus.CRASHED, ENGINE_LOST
    if facts.node_lost:
        return SessionStatus.CRASHED, NODE_LOST
    if facts.vanished:
        return SessionStatus.CRASHED, "container vanished"
    if facts.oom:
        return SessionStatus.OOM_KILLED, f"out of memory at memory_mb={limits.memory_mb}"
    if facts.exit_code == 0:
        return SessionStatus.SUCCEEDED, None
    if facts.volume_full:
        return SessionStatus.DISK_FULL, f"volume full at disk_mb={limits.disk_mb}"
    if facts.external_kill or (facts.exit_code == 137 and not facts.stopping):
        return SessionStatus.CRASHED, "container was killed from outside agentrt"
    if facts.engine_error:
        return SessionStatus.CRASHED, facts.engine_error
    return SessionStatus.FAILED, f"exit code {facts.exit_code}"


def recorded_facts(state: Mapping[str, Any], time_seconds: int | None, *,
                   stopped_by_gc: bool) -> EndFacts:
    """The facts of a container's end that its engine record (``State`` of an inspect) holds,
    for a session whose agentrt process died. Pure.

    ``stopped_by_gc``: gc found it still running and stopped it (its owner is lost). Otherwise
    it ended on its own: its exit code, ``OOMKilled``, the engine's error, and whether its
    finish time says its own deadline ended it (``time_seconds`` from its label) decide.
    """
    code = state.get("ExitCode")
    exit_code = int(code) if isinstance(code, int) else None
    own = time_seconds is not None and ended_at_deadline(exit_code, *engine_times(state),
                                                         time_seconds)
    return EndFacts(owner_lost=stopped_by_gc, own_deadline=own, oom=bool(state.get("OOMKilled")),
                    exit_code=exit_code, stopping=stopped_by_gc,
                    engine_error=str(state["Error"]) if state.get("Error") else None)


def own_deadline_ended(exit_code: int | None, started: datetime | None,
                       finished: datetime | None, time_seconds: int,
                       stop_sent_at: float | None, stop_failed: bool) -> bool:
    """True when the container's own deadline (its entry point's timeout), not agentrt's stop,
    ended it: the engine's record says it ran to the deadline, and either its exit code is
    timeout(1)'s own (124: agentrt's SIGTERM, forwarded by timeout, gives 143), or it finished
    before agentrt's stop was sent (agentrt was paused or late), or that stop never reached the
    engine. Pure."""
    if not ended_at_deadline(exit_code, started, finished, time_seconds) or finished is None:
        return False
    return exit_code == TIMEOUT_OWN_EXIT or stop_sent_at is None or stop_failed or \
        finished.timestamp() <= stop_sent_at
