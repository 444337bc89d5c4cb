"""What the runtime reports: session states, per-session results, merge outcomes, run reports.

These models are the JSON report of the interface (``agentrt run --json``); their field names
are part of the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from runtime.config import ResourceLimits


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class SessionStatus(StrEnum):
    """Where a session is, or how it ended."""

    PREPARED = "prepared"  # made ahead by the warm pool for a task still waiting for a slot
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    OOM_KILLED = "oom_killed"
    TIMED_OUT = "timed_out"
    DISK_FULL = "disk_full"
    CRASHED = "crashed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"

    @property
    def is_final(self) -> bool:
        """True once the session can no longer change state."""
        return self not in (SessionStatus.PREPARED, SessionStatus.PENDING, SessionStatus.RUNNING)

    @property
    def is_failure(self) -> bool:
        """True for the states that make ``run`` exit 1."""
        return self in _FAILURES


_FAILURES = frozenset(
    {
        SessionStatus.FAILED,
        SessionStatus.OOM_KILLED,
        SessionStatus.TIMED_OUT,
        SessionStatus.DISK_FULL,
        SessionStatus.CRASHED,
    }
)


class WorkState(StrEnum):
    """Whether a session's work reached its branch (see docs/security.md, the bundle boundary)."""

    NONE = "none"              # nothing to bring home (never started), or not yet harvested
    HOME = "home"              # everything the agent left is on its branch (or it changed nothing)
    FILES_ONLY = "files_only"  # its own commits were refused; its files came home as one commit
    REFUSED = "refused"        # the bundle was refused (fsck, size, secret); kept for inspection
    KEPT = "kept"              # the harvest failed (disk full, engine gone): the volume is kept
    LOST = "lost"              # it was kept, and the kept volume no longer exists

    @property
    def is_failure(self) -> bool:
        """True when work did not fully come home: the run exits 1."""
        return self in (WorkState.FILES_ONLY, WorkState.REFUSED, WorkState.KEPT, WorkState.LOST)

    @property
    def off_branch(self) -> bool:
        """True when none of the session's work is on its branch (kept, refused or lost), so
        the branch cannot stand for it: it is never merged nor reported merged."""
        return self in (WorkState.REFUSED, WorkState.KEPT, WorkState.LOST)


class Conflict(BaseModel):
    """One conflicting path between a branch and the target (or another branch)."""

    path: str
    kind: str = "content"
    ours_lines: list[tuple[int, int]] = Field(default_factory=list)
    theirs_lines: list[tuple[int, int]] = Field(default_factory=list)
    with_branch: str | None = None


class GateResult(BaseModel):
    """The merge gate's verdict on one session's would-be merge result (docs/merging.md).

    ``verdict`` is ``passed`` (the command exited 0: the work may land), ``failed`` (it exited
    non-zero, ran out of memory or time, or could not run: the target does not move) or
    ``skipped`` (``agentrt merge --no-gate``: landed without the gate, on purpose).
    """

    command: list[str]
    verdict: Literal["passed", "failed", "skipped"]
    status: str | None = None
    """How the gate session ended: ``succeeded``, ``failed``, ``oom_killed``, ``timed_out``..."""
    exit_code: int | None = None
    reason: str | None = None
    duration_s: float | None = None
    tested_commit: str | None = None
    """The would-be merge commit the gate ran on (the target with this session's work)."""
    output_tail: str = ""
    """The gate's last output lines (secrets redacted, control characters removed)."""


MergeStatus = Literal["merged", "clean", "conflicts", "gate_failed", "not_attempted",
                      "not_merged"]


class MergeInfo(BaseModel):
    """The merge result of one session's branch.

    ``not_merged``: the session's work is not on the target and cannot be merged from its
    branch (kept, refused or lost, or the branch no longer carries the session's commits);
    ``reason`` says why and what brings it home. ``gate_failed``: the merge gate failed on
    the would-be merge result; the work stays on its branch.
    """

    status: MergeStatus = "not_attempted"
    conflicts: list[Conflict] = Field(default_factory=list)
    merge_commit: str | None = None
    reason: str | None = None
    gate: GateResult | None = None
    """The merge gate's verdict, when the run (or task) has a ``merge_gate``."""


def work_not_merged_reason(result: SessionResult) -> str | None:
    """Why ``result``'s work cannot be merged from its branch, from its work state; None when
    the branch carries it (or nothing says otherwise). Pure."""
    work = result.work
    if work is WorkState.KEPT:
        return (f"work kept, not on its branch (the harvest did not finish): `agentrt recover "
                f"{result.id}` brings it home")
    if work is WorkState.REFUSED:
        return "work refused at import (kept for inspection); nothing of it is on its branch"
    if work is WorkState.LOST:
        return "work lost: the volume it was kept in no longer exists"
    return None


def settle_merge(results: list[SessionResult]) -> None:
    """Mark every session whose work is off its branch ``not_merged`` with the reason, whatever
    an earlier check said of its branch (a branch left at its base is contained in the target,
    but that says nothing of the work). Sessions with a merge commit keep it; a session whose
    work has come home since (``agentrt recover``) is ``not_attempted`` again."""
    for result in results:
        reason = work_not_merged_reason(result)
        merge = result.merge
        if reason is not None and merge.merge_commit is None and merge.reason != reason:
            result.merge = MergeInfo(status="not_merged", reason=reason)
        elif reason is None and merge.status == "not_merged" and \
                (merge.reason or "").startswith(_WORK_REASON):
            result.merge = MergeInfo()


_WORK_REASON = "work "  # how every reason of work_not_merged_reason begins


class Usage(BaseModel):
    """What an agent CLI reported it used (``runtime/run/usage.py`` reads it from the log).

    ``None``: not reported. ``input_tokens`` counts every prompt token the model read (cached
    ones included); ``cost_usd`` is the CLI's own estimate, when it gives one.
    """

    input_tokens: int | None = Field(default=None, ge=0)
    output_tokens: int | None = Field(default=None, ge=0)
    cost_usd: float | None = Field(default=None, ge=0)

    @property
    def empty(self) -> bool:
        """True when nothing is known."""
        return self.input_tokens is None and self.output_tokens is None and self.cost_usd is None


class Manifest(BaseModel):
    """What is needed to replay a session: image digest, base commit, task and limits."""

    image: str
    image_digest: str | None
    base_commit: str
    task: dict[str, object]
    limits: ResourceLimits
    network: str
    runtime: str
    database_strategy: str
    env_keys: list[str] = Field(default_factory=list)
    cli_version: str | None = None
    """The agent CLI's version (the image's ``agentrt.cli.version`` label), for presets."""
    egress_allow: list[str] = Field(default_factory=list)
    egress_networks: list[str] = Field(default_factory=list)
    """With ``network = "allowlist"``: the policy the session ran under (the run's or its own)."""
    # The key (hash of the inputs) of the environment the image was built from, if any.
    environment_key: str | None = None
    agentrt_version: str | None = None
    """The agentrt that ran the session (None in manifests recorded before it was kept)."""
    services: list[dict[str, object]] = Field(default_factory=list)
    continues: str | None = None
    """The session this one continued (``agentrt continue``), on the same branch."""


class SessionResult(BaseModel):
    """One session in the run report."""

    model_config = ConfigDict(validate_assignment=True)

    id: str
    task_id: str
    branch: str
    image: str = ""
    image_digest: str | None = None
    base_commit: str = ""
    head_commit: str | None = None
    status: SessionStatus = SessionStatus.PENDING
    exit_code: int | None = None
    reason: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    peak_memory_bytes: int = 0
    cpu_seconds: float = 0.0
    disk_used_bytes: int = 0
    disk_limit_mode: Literal["loop", "soft", "none"] = "none"
    node: str | None = None  # the Swarm node's host name (engine = "swarm")
    merge: MergeInfo = Field(default_factory=MergeInfo)
    work: WorkState = WorkState.NONE
    warnings: list[str] = Field(default_factory=list)
    cli_version: str | None = None
    usage: Usage | None = None
    continues: str | None = None
    """The session this one continued (``agentrt continue``): its parent, on the same branch."""


@dataclass(frozen=True)
class LiveStat:
    """What a running session uses now, and its limits (the live view's numbers)."""

    memory_bytes: int
    cpu_seconds: float
    disk_bytes: int
    limits: ResourceLimits
    last_line: str = ""


class RunReport(BaseModel):
    """The final report of a run (``agentrt run --json``)."""

    run_id: str
    repo: str
    base_commit: str
    target: str | None
    merge: str
    started_at: datetime
    finished_at: datetime | None = None
    sessions: list[SessionResult] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    interrupted: bool = False
    merge_refused: str | None = None
    """Why ``merge = "auto"`` merged nothing (dirty checkout, detached HEAD, a rebase...)."""
    state_error: str | None = None
    """The state database failed during the run (a write, or saving this report): ``ps`` and
    ``report`` may be wrong, this report is the full record; the run exits 1."""

    @property
    def auto_merge_missed(self) -> bool:
        """True if the run asked for ``auto`` and a succeeded session was neither merged nor
        found conflicting: its work is only on its branch."""
        return self.merge == "auto" and any(
            s.status is SessionStatus.SUCCEEDED and s.merge.status in ("not_attempted", "clean")
            for s in self.sessions)

    def exit_code(self) -> int:
        """0 all succeeded; 1 a session failed, its work did not come home, its merge gate
        failed, or the state database failed during the run; 3 merge conflicts, or an automatic
        merge that did not happen (work kept on the branches); 130 interrupted."""
        if self.interrupted:
            return 130
        if any(s.status.is_failure or s.work.is_failure or s.merge.status == "gate_failed"
               for s in self.sessions) or self.state_error is not None:
            return 1
        if any(s.merge.status == "conflicts" for s in self.sessions):
            return 3
        if self.merge_refused is not None or self.auto_merge_missed:
            return 3
        return 0
