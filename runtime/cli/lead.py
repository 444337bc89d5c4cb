"""The lead's side of a live run: what ``agentrt mcp`` does for each tool, as plain methods.

One :class:`LeadRun` per MCP server (one repository). The first session started opens a run
(an :class:`~runtime.run.coordinator.AgentCoordinator` kept open, ``merge = "none"``: the lead
merges per session); every later session is submitted to it, with the run's limit,
dependencies, radar and budget. Sessions are named by their task id. ``stop`` with no ids
cancels the run (work kept on branches); the next start opens a new run.

Every refusal is a :class:`~runtime.errors.AgentRuntimeError` whose message says what to do;
the MCP layer turns it into a tool error.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from runtime.cli.session_output import saved_log_tail, session_diff
from runtime.config import RunConfig
from runtime.errors import AgentRuntimeError, ConfigError, MergeError, NotFoundError
from runtime.git.safe_git import MainRepo
from runtime.git.session_work import work_head
from runtime.models import SessionResult
from runtime.run.budget import RunBudget
from runtime.run.coordinator import AgentCoordinator
from runtime.state.store import Store
from runtime.text import terminal_safe

#: Most diff text returned at once (the lead reads a long diff in pieces with ``offset``).
DIFF_MAX_CHARS = 60_000
DISCARDED = "discarded"


class SessionInfo(BaseModel):
    """One session as the lead sees it."""

    id: str = Field(description="The task id the lead gave; names the session in every tool.")
    session_id: str | None = Field(description="agentrt's session id (for `agentrt logs`).")
    status: str = Field(description="waiting | pending | running | succeeded | failed | "
                        "oom_killed | timed_out | disk_full | crashed | cancelled | skipped")
    branch: str = ""
    exit_code: int | None = None
    reason: str | None = None
    duration_s: float | None = None
    cpu_seconds: float = 0.0
    peak_memory_bytes: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    merge: str = Field("not_attempted", description="merged | clean | conflicts | "
                       "not_attempted | reverted | discarded")
    work: str = "none"


def info(task_id: str, result: SessionResult | None) -> SessionInfo:
    """The lead's view of a task's result (None: still waiting). Pure."""
    if result is None:
        return SessionInfo(id=task_id, session_id=None, status="waiting")
    usage = result.usage
    return SessionInfo(
        id=task_id, session_id=result.id, status=result.status.value, branch=result.branch,
        exit_code=result.exit_code, reason=result.reason, duration_s=result.duration_s,
        cpu_seconds=result.cpu_seconds, peak_memory_bytes=result.peak_memory_bytes,
        input_tokens=usage.input_tokens if usage else None,
        output_tokens=usage.output_tokens if usage else None,
        merge=str(result.merge.status), work=str(result.work))


class LeadRun:
    """The run a lead drives (see the module docstring)."""

    def __init__(self, repo: MainRepo, *, budget: RunBudget | None = None,
                 config: RunConfig | Mapping[str, Any] | None = None) -> None:
        base = config if isinstance(config, RunConfig) else RunConfig.model_validate(
            dict(config or {}))
        self.repo = repo
        self.config = base.model_copy(update={"merge": "none"})
        self.budget = budget or RunBudget()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._runs: list[AgentCoordinator] = []
        self._extra: dict[str, str] = {}  # task id -> merge state the lead set (reverted...)

    # -- the run -----------------------------------------------------------------------------

    @property
    def run(self) -> AgentCoordinator | None:
        """The run taking sessions now, if any."""
        return self._runs[-1] if self._runs else None

    def _open_run(self) -> AgentCoordinator:
        current = self.run
        if current is not None and current.taking_tasks:
            return current
        coordinator = AgentCoordinator(config=self.config, repo=self.repo, budget=self.budget,
                                       listener=self._heard)
        coordinator.start()
        self._runs.append(coordinator)
        return coordinator

    def _heard(self, event: str, result: SessionResult) -> None:
        with self._changed:
            self._changed.notify_all()

    def close(self) -> None:
        """Stop every running session (work kept on branches) and close the runs."""
        for coordinator in self._runs:
            coordinator.cancel()
            with contextlib.suppress(AgentRuntimeError):
                coordinator.close()

    # -- the tools ---------------------------------------------------------------------------

    def start(self, spec: Mapping[str, Any]) -> SessionInfo:
        """Start (or queue) a session; ConfigError names the field that is wrong."""
        task = dict(spec)
        if not task.get("command") and not task.get("agent"):
            raise ConfigError("give command (an argv list, e.g. [\"sh\", \"-c\", \"make\"]) or "
                              "agent (a preset: claude-code, codex, aider, shell) with a prompt")
        with self._lock:
            coordinator = self._open_run()
            if self._find(str(task.get("id", ""))) is not None:
                raise ConfigError(f"field id: a session {task['id']!r} exists; choose another id")
        task_id = coordinator.submit(task)
        return info(task_id, coordinator.task_states().get(task_id))

    def _find(self, task_id: str) -> AgentCoordinator | None:
        for coordinator in reversed(self._runs):
            if task_id in coordinator.task_states():
                return coordinator
        return None

    def _result(self, task_id: str) -> tuple[AgentCoordinator, SessionResult | None]:
        coordinator = self._find(task_id)
        if coordinator is None:
            raise NotFoundError(f"no session {task_id!r}; list_sessions names them")
        return coordinator, coordinator.task_states()[task_id]

    def _finished(self, task_id: str, doing: str) -> tuple[AgentCoordinator, SessionResult]:
        coordinator, result = self._result(task_id)
        if result is None or not result.status.is_final:
            raise ConfigError(f"session {task_id!r} has not finished; wait_sessions for it "
                              f"before you {doing} it")
        return coordinator, result

    def sessions(self) -> list[SessionInfo]:
        """Every session of the server's runs, oldest first."""
        found = []
        for coordinator in self._runs:
            for task_id, result in coordinator.task_states().items():
                entry = info(task_id, result)
                entry.merge = self._extra.get(task_id, entry.merge)
                found.append(entry)
        return found

    def wait(self, ids: Sequence[str], timeout_s: float,
             mode: Literal["all", "any"] = "all") -> tuple[bool, list[SessionInfo]]:
        """Wait until all (or any) of ``ids`` (every session when empty) ended, at most
        ``timeout_s``; return whether they did, and their state."""
        for task_id in ids:
            self._result(task_id)
        deadline = time.monotonic() + timeout_s

        def chosen() -> list[SessionInfo]:
            every = self.sessions()
            return [s for s in every if not ids or s.id in ids]

        def over(found: list[SessionInfo]) -> bool:
            ended = [s.status not in ("waiting", "pending", "running") for s in found]
            return any(ended) if mode == "any" else all(ended)

        with self._changed:
            while True:
                found = chosen()
                left = deadline - time.monotonic()
                if over(found) or left <= 0:
                    return over(found), found
                # Woken by the run's listener; the timeout also covers a missed notification.
                self._changed.wait(min(left, 1.0))

    def output(self, task_id: str, lines: int) -> tuple[SessionInfo, str]:
        """The last ``lines`` of a session's output (secrets redacted, controls escaped)."""
        _, result = self._result(task_id)
        if result is None or not result.id:
            return info(task_id, result), ""
        text = "\n".join(saved_log_tail(self.repo, result.id, lines))
        return info(task_id, result), terminal_safe(text, multiline=True)

    def diff(self, task_id: str, offset: int = 0) -> tuple[SessionInfo, str, int]:
        """A session's diff against its base (controls escaped), from ``offset``, at most
        :data:`DIFF_MAX_CHARS`; and the whole diff's length."""
        _, result = self._result(task_id)
        if result is None or not result.branch:
            status = info(task_id, result).status
            raise ConfigError(f"session {task_id!r} has no branch yet ({status}); "
                              "wait_sessions for it first")
        with self._store() as store:
            row = store.get_session(result.id)
        text = terminal_safe(session_diff(self.repo, row).decode("utf-8", "replace"),
                             multiline=True)
        return info(task_id, result), text[offset:offset + DIFF_MAX_CHARS], len(text)

    def merge(self, ids: Sequence[str], target: str | None, *,
              no_gate: bool = False) -> list[SessionResult]:
        """Merge each finished, succeeded session into ``target`` (default: the run's),
        one merge commit each, in the order given; through the merge gate when the server has
        one (``no_gate``: recorded as skipped)."""
        from runtime.run.merge_gate import MergeGate
        from runtime.run.merging import merge_agent_results

        if not ids:
            raise ConfigError("field ids: name the sessions to merge")
        merged = []
        for task_id in ids:
            coordinator, result = self._finished(task_id, "merge")
            if result.status.value != "succeeded":
                raise ConfigError(f"session {task_id!r} {result.status.value}: only a "
                                  "succeeded session merges; read_output says why it ended")
            if self._extra.get(task_id) == DISCARDED:
                raise ConfigError(f"session {task_id!r} was discarded; its branch is gone")
            into = target or self.repo.current_branch()
            gate = MergeGate(self.repo, self.config, {}, client=coordinator.client,
                             skip=no_gate) if self.config.merge_gate else None
            merge_agent_results([result], "auto", repo=self.repo, target=into,
                                run_id=coordinator.run_id, gate=gate)
            self._extra.pop(task_id, None)
            merged.append(result)
        return merged

    def apply(self, task_id: str) -> list[str]:
        """Write a finished session's changes into the checkout as unstaged edits (no commit,
        no merge); return the paths changed. Refused on a dirty overlap or when they do not
        apply (:func:`runtime.git.session_work.apply_session`)."""
        from runtime.git.session_work import apply_session

        _, result = self._finished(task_id, "apply")
        head = work_head(self.repo, result)
        if not head or not result.base_commit:
            raise ConfigError(f"session {task_id!r} has no work on a branch to apply")
        return apply_session(self.repo, result.base_commit, head)

    def revert(self, task_id: str) -> str:
        """Revert a merged session's merge commit on its target; return the revert commit."""
        from runtime.run.revert import revert_session

        _, result = self._finished(task_id, "revert")
        done = revert_session(result.id, self.repo)
        self._extra[task_id] = "reverted"
        return done[0].revert_commit if done else ""

    def discard(self, task_id: str) -> str:
        """Delete a finished session's branch when its work is on no branch it was merged
        into: refused for a merged session (revert it first). Returns the branch."""
        coordinator, result = self._finished(task_id, "discard")
        if str(result.merge.status) == "merged" and self._extra.get(task_id) != "reverted":
            raise MergeError(f"session {task_id!r} is merged; revert_session it first (a "
                             "merged session's work is on the target)")
        branch = result.branch
        head = self.repo.branch_head(branch) if branch else None
        if head is not None:
            target = self.repo.current_branch()
            if target and self._extra.get(task_id) != "reverted" and self._contains(target, head):
                raise MergeError(f"session {task_id!r}: its work is on {target}; nothing to "
                                 "discard (revert_session undoes a merge)")
            self.repo.git("update-ref", "-d", f"refs/heads/{branch}", head)
        self._extra[task_id] = DISCARDED
        with self._store() as store:
            store.add_event(coordinator.run_id, DISCARDED, f"branch {branch} deleted by the "
                            "lead", session_id=result.id)
        return branch

    def _contains(self, target: str, commit: str) -> bool:
        try:
            self.repo.git("merge-base", "--is-ancestor", commit, f"refs/heads/{target}")
        except AgentRuntimeError:
            return False
        return True

    def stop(self, ids: Sequence[str]) -> list[str]:
        """Stop the named running sessions (all, and the run, when empty); work kept."""
        if not ids:
            stopped = [s.id for s in self.sessions() if s.status in ("running", "pending")]
            if self.run is not None:
                self.run.cancel()
            return stopped
        stopped = []
        for task_id in ids:
            coordinator, result = self._result(task_id)
            for session in coordinator.live_sessions():
                if session.task.id == task_id:
                    session.cancel()
                    stopped.append(task_id)
            if result is None:
                raise ConfigError(f"session {task_id!r} is waiting for a slot or its "
                                  "dependencies; stop_sessions with no ids stops the run")
        return stopped

    def report_json(self) -> str:
        """The current run's report as JSON (sessions so far)."""
        if self.run is None:
            raise NotFoundError("no run yet: start_session opens one")
        with self._store() as store:
            return store.run_report(self.run.run_id).model_dump_json(indent=2)

    def log(self, task_id: str) -> str:
        """A session's whole saved output (controls escaped)."""
        return self.output(task_id, 100_000)[1]

    def _store(self) -> Store:
        from runtime.cli.lookup import open_store

        return open_store(self.repo)
