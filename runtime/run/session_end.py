"""How a session ends, in its result: the classification of its backend's
:class:`~runtime.state.classify.EndFacts` (exit code, OOM, deadline, disk, engine or node lost)
with the measurements that come with them, and a stop asked for from another process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtime.config import ResourceLimits
from runtime.errors import AgentRuntimeError
from runtime.models import SessionResult, SessionStatus
from runtime.state.classify import EndFacts, classify

if TYPE_CHECKING:
    from runtime.state.store import Store

STOP_REQUESTED = "stop_requested"
#: A cancelled session whose engine stopped answering: its container may still run.
UNCONFIRMED_STOP = ("the engine stopped answering, so the stop was not confirmed: `agentrt gc` "
                    "stops the container and brings the work home once the engine answers")


def stop_requested(store: Store | None, session_id: str) -> bool:
    """True if `agentrt stop` asked for ``session_id`` from another process."""
    if store is None:
        return False
    try:
        return any(e.kind == STOP_REQUESTED for e in store.events(session_id=session_id))
    except AgentRuntimeError:
        return False


def record_end(result: SessionResult, facts: EndFacts, limits: ResourceLimits) -> None:
    """Record how a session ended in ``result``, from its backend's facts: the status and
    reason by the pure classifier; the engine's times, peaks and totals as measured."""
    result.exit_code = facts.exit_code
    status, reason = classify(facts, limits)
    if status is SessionStatus.CANCELLED and facts.stop_unconfirmed:
        reason = f"{reason}; {UNCONFIRMED_STOP}"
    result.status = status
    result.reason = reason
    if status is SessionStatus.TIMED_OUT and facts.own_deadline:
        result.warnings.append(
            "stopped by the container's own deadline (agentrt did not stop it in time)")
    started, finished = facts.started_at, facts.finished_at
    if started is not None and finished is not None:
        # The engine's own clock: a paused supervisor does not stretch a session. Its two
        # stamps come from different parts of the engine: a session that ran for under a
        # millisecond may "finish" before it started.
        result.started_at, result.finished_at = started, max(finished, started)
    if facts.peak_memory_bytes is not None:
        result.peak_memory_bytes = facts.peak_memory_bytes
    if facts.oom:
        # The kernel OOM-kills only once the cgroup's usage reached its limit, however
        # fast the climb was for the samples: the peak is at least the limit.
        result.peak_memory_bytes = max(result.peak_memory_bytes,
                                       limits.memory_mb * 1024 * 1024)
    if status is SessionStatus.SUCCEEDED and (facts.volume_full or facts.disk_filled):
        result.warnings.append(
            f"the volume filled up to disk_mb={limits.disk_mb} during the session "
            "(writes failed with ENOSPC), although the agent exited 0")
    if facts.cpu_seconds is not None:
        result.cpu_seconds = round(facts.cpu_seconds, 3)
    if facts.disk_used_bytes is not None:
        result.disk_used_bytes = facts.disk_used_bytes
    result.warnings.extend(facts.warnings)
