"""The merge gate: a session's work lands only when the project's own check passes on the
merged result.

With ``merge_gate = ["pytest", "-q"]`` (``[run]`` or per task) and ``merge = "auto"``, each
clean merge is first written as a commit that no branch names yet (the target as it is after
the merges before it, plus this session's work: a merge queue) and the command runs on it in a
fresh, hardened session: the image the session itself ran in (the run's environment, with its
toolchain), the run's runtime and services, the gate's own limits (``merge_gate_limits``), no
network. Exit 0 lands the merge; anything else (a non-zero exit, OOM, the deadline, a crash)
leaves the work on its branch as ``gate_failed`` with the gate's output tail, and the target
does not move. The gate session's own branch and saved log are deleted when it ends: the branch
only held the commit under test, and the verdict keeps the output's tail.

:class:`MergeGate` is the callable :func:`runtime.git.merge.merge_branches` takes; the git
layer stays free of sessions and engines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from runtime.config import RunConfig, Task
from runtime.engine.types import EngineClient
from runtime.errors import AgentRuntimeError
from runtime.git.safe_git import MainRepo
from runtime.models import GateResult, SessionResult, SessionStatus
from runtime.text import terminal_safe

log = logging.getLogger(__name__)

#: How much of the gate's output the report keeps (its end: where test runners say why).
OUTPUT_TAIL_BYTES = 4000
GATE_ID_SUFFIX = "-gate"


def gate_task_id(task_id: str) -> str:
    """The gate session's task id for ``task_id``: a valid task id (at most 40 characters)."""
    return task_id[: 40 - len(GATE_ID_SUFFIX)].rstrip("-") + GATE_ID_SUFFIX


def gate_config(config: RunConfig, image: str) -> RunConfig:
    """The settings of a gate session for a run with ``config``, in ``image``. Pure.

    The run's runtime, services and volumes; the gate's limits; no network, no merge, no
    environment build (``image`` is the one the session ran in, already built); on the engine
    agentrt talks to (on a Swarm, its manager: a gate takes no node's room)."""
    return config.model_copy(update={
        "engine": "docker",
        "image": image, "network": "none", "egress_allow": [], "egress_networks": [],
        "merge": "none", "environment": None, "database_strategy": "per_agent",
        "warm_pool": 0, "max_concurrent_agents": 1, "cleanup_on_complete": True,
        "resource_limits": config.merge_gate_limits.apply_to(config.resource_limits),
    })


def output_tail(log_bytes: bytes, limit: int = OUTPUT_TAIL_BYTES) -> str:
    """The end of a gate's saved output, from a line start, made safe for any view. Pure."""
    tail = log_bytes[-limit:]
    if len(log_bytes) > limit and b"\n" in tail:
        tail = tail[tail.index(b"\n") + 1:]
    return terminal_safe(tail.decode(errors="replace"), multiline=True)


class MergeGate:
    """Runs each session's gate on its would-be merge commit; see the module docstring.

    ``tasks`` maps task ids to the run's tasks (for per-task gates); ``skip`` records the gate
    as ``skipped`` without running it (``agentrt merge --no-gate``); ``on_gating`` hears each
    session before its gate starts (the live view's ``gating``).
    """

    def __init__(self, repo: MainRepo, config: RunConfig, tasks: Mapping[str, Task], *,
                 client: EngineClient | None = None, skip: bool = False,
                 on_gating: Callable[[SessionResult], None] | None = None,
                 stop_grace_seconds: int = 10) -> None:
        self.repo = repo
        self.config = config
        self.tasks = dict(tasks)
        self.client = client
        self.skip = skip
        self.on_gating = on_gating
        self.stop_grace_seconds = stop_grace_seconds

    def command_for(self, session: SessionResult) -> list[str] | None:
        """The gate of ``session``'s task (its own, else the run's), or None."""
        task = self.tasks.get(session.task_id)
        return self.config.gate_for(task) if task is not None else self.config.merge_gate

    def __call__(self, session: SessionResult, commit: str) -> GateResult | None:
        command = self.command_for(session)
        if not command:
            return None
        if self.skip:
            return GateResult(command=command, verdict="skipped", tested_commit=commit)
        if self.on_gating is not None:
            self.on_gating(session)
        started = time.monotonic()
        try:
            ended = self._run(session, command, commit)
        except AgentRuntimeError as exc:
            log.warning("merge gate of session %s could not run: %s", session.id, exc)
            return GateResult(command=command, verdict="failed", status="crashed",
                              reason=f"the gate could not run: {exc}", tested_commit=commit,
                              duration_s=round(time.monotonic() - started, 3))
        gate, tail = ended
        passed = gate.status is SessionStatus.SUCCEEDED
        return GateResult(
            command=command, verdict="passed" if passed else "failed",
            status=gate.status.value, exit_code=gate.exit_code,
            reason=None if passed else (gate.reason or f"exit code {gate.exit_code}"),
            duration_s=round(time.monotonic() - started, 3), tested_commit=commit,
            output_tail=tail)

    def _run(self, session: SessionResult, command: list[str],
             commit: str) -> tuple[SessionResult, str]:
        """One gate session on ``commit``; its result and output tail. Its branch goes."""
        from runtime.run.session import IsolatedAgentSession

        task = Task(id=gate_task_id(session.task_id), command=command,
                    prompt=f"merge gate of session {session.id}",
                    env={"AGENTRT_GATE_SESSION": session.id})
        gate = IsolatedAgentSession(
            task, gate_config(self.config, session.image or self.config.image), repo=self.repo,
            base_commit=commit, client=self.client, stop_grace_seconds=self.stop_grace_seconds)
        try:
            with gate:
                gate.run()
            return gate.result, output_tail(gate.logs())
        finally:
            # Its output lives on in the verdict; its branch only held the commit under test.
            gate.log_path.unlink(missing_ok=True)
            self._drop_branch(gate.branch)

    def _drop_branch(self, branch: str) -> None:
        head = self.repo.branch_head(branch)
        if head is None:
            return
        try:
            self.repo.git("update-ref", "-d", f"refs/heads/{branch}", head)
        except AgentRuntimeError as exc:
            log.warning("merge gate: branch %s not deleted: %s", branch, exc)
