"""How a session ended, decided by one pure function from the facts recorded about it.

The supervisor's threads and the session record what they saw (a deadline fired, a stop was
asked for, the disk limit was crossed, the engine went away, the container vanished or was
killed from outside, an OOM kill, the exit code, the engine's own error text); :func:`classify`
turns those facts and the limits into a :class:`~runtime.models.SessionStatus` and a reason.
The precedence is fixed (the table in :data:`PRECEDENCE`), so the outcome never depends on
which thread noticed first.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.config import ResourceLimits
from runtime.models import SessionStatus

PRECEDENCE = (
    "cancelled",          # a person asked: Ctrl-C, `agentrt stop`, the API's cancel()
    "timed_out",          # the deadline fired (agentrt stopped it)
    "disk_exceeded",      # a soft disk limit was crossed (agentrt stopped it)
    "engine_lost",        # the engine restarted or vanished around the end
    "vanished",           # the container is gone without an exit
    "oom",                # the kernel's OOM killer
    "exit 0",             # the agent said it succeeded
    "volume_full",        # a loop volume is full and the agent failed
    "external_kill",      # SIGKILL from outside agentrt (exit 137, not stopping)
    "engine_error",       # the engine's own State.Error
    "exit code",          # anything else: failed
)


@dataclass(frozen=True)
class EndFacts:
    """What was seen of a session's end (every field defaults to "not seen")."""

    cancelled: bool = False
    timed_out: bool = False
    disk_exceeded: bool = False
    engine_lost: bool = False
    vanished: bool = False
    oom: bool = False
    exit_code: int | None = None
    volume_full: bool = False
    external_kill: bool = False
    stopping: bool = False
    engine_error: str | None = None


def classify(facts: EndFacts, limits: ResourceLimits) -> tuple[SessionStatus, str | None]:
    """The status and reason of a session that ended with ``facts`` under ``limits``. Pure."""
    if facts.cancelled:
        return SessionStatus.CANCELLED, "stopped on request"
    if facts.timed_out:
        return SessionStatus.TIMED_OUT, f"ran past time_seconds={limits.time_seconds}"
    if facts.disk_exceeded:
        return SessionStatus.DISK_FULL, f"used more than disk_mb={limits.disk_mb}"
    if facts.engine_lost:
        return SessionStatus.CRASHED, "the Docker engine restarted during the session"
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
