"""``agentrt mcp``: an MCP server (the official ``mcp`` SDK) through which a lead agent runs
isolated, quota-bound sub-agents on one repository and lands their work.

Tools (structured results; every refusal a tool error saying what to do): ``start_session``,
``list_sessions``, ``wait_sessions``, ``read_output``, ``read_diff``, ``merge_sessions``,
``revert_session``, ``discard_session``, ``stop_sessions``. Resources: ``agentrt://run/report``
(the current run's report) and ``agentrt://sessions/{id}/log`` (a session's output). The
server owns the live run it opens (:class:`~runtime.cli.lead.LeadRun`); on exit it stops the
run's sessions, keeping their work on their branches. Over HTTP (``--http``) every request
must carry ``Authorization: Bearer <the token file's content>``. See docs/mcp.md.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from pydantic import BaseModel, Field

from runtime.cli.lead import LeadRun, SessionInfo, info
from runtime.errors import AgentRuntimeError, ConfigError
from runtime.git.safe_git import MainRepo
from runtime.limits import LimitOverrides
from runtime.run.budget import RunBudget
from runtime.task import AgentPreset, NetworkMode

INSTRUCTIONS = """agentrt runs each session (a sub-agent or a command) in its own hardened
container, on its own branch, with memory/CPU/time/disk quotas. Start sessions with
start_session (give each an id; depends_on makes one start from others' work, and it can read
their diff and output under /agentrt/deps/<id>/), wait_sessions for them, read_diff and
read_output to judge their work, then merge_sessions the good ones and discard_session the
rest. Nothing lands on the repository's branch until you merge."""


@contextlib.contextmanager
def tool_errors() -> Iterator[None]:
    """agentrt's refusals as tool errors (the model reads them and corrects its call)."""
    try:
        yield
    except AgentRuntimeError as exc:
        raise ToolError(str(exc)) from None
    except (TimeoutError, ValueError) as exc:
        raise ToolError(str(exc)) from None


class Sessions(BaseModel):
    """Sessions and what the run has spent against its budget."""

    run_id: str | None
    sessions: list[SessionInfo]
    spent: dict[str, float] = Field(default_factory=dict)
    budget: dict[str, float | None] = Field(default_factory=dict)


class Waited(BaseModel):
    """The outcome of a wait."""

    done: bool = Field(description="True when the sessions waited for ended; false: timeout.")
    sessions: list[SessionInfo]


class Output(BaseModel):
    """The end of a session's output."""

    session: SessionInfo
    output: str


class Diff(BaseModel):
    """A session's diff against the commit it started from (a part of it, from ``offset``)."""

    session: SessionInfo
    diff: str
    offset: int
    total_chars: int
    truncated: bool


class Merged(BaseModel):
    """Merge outcomes, one per session."""

    target: str | None
    sessions: list[SessionInfo]
    conflicts: dict[str, list[str]] = Field(default_factory=dict)
    gate_failed: dict[str, str] = Field(
        default_factory=dict, description="Sessions the merge gate kept off the target: why, "
        "and the end of the gate's output.")


class Done(BaseModel):
    """A lead's action and what it changed."""

    ids: list[str]
    detail: str


def build_server(lead: LeadRun) -> MCPServer:
    """The MCP server over ``lead`` (tools and resources; no transport yet)."""
    server = MCPServer("agentrt", instructions=INSTRUCTIONS)

    @server.tool()
    def start_session(
        id: str,  # noqa: A002 - the task id is the name a model sees
        prompt: str = "",
        command: list[str] | None = None,
        agent: AgentPreset | None = None,
        depends_on: list[str] | None = None,
        image: str | None = None,
        env: dict[str, str] | None = None,
        network: NetworkMode | None = None,
        egress_allow: list[str] | None = None,
        limits: LimitOverrides | None = None,
        environment: dict[str, Any] | None = None,
        model: str | None = None,
        base_url: str | None = None,
    ) -> SessionInfo:
        """Start a session in its own container and branch: give `command` (an argv list run
        in /workspace) or `agent` (claude-code, codex, aider, shell) with a `prompt`. It
        queues while the run's slots are full or until `depends_on` sessions succeed (it then
        starts from their work). `limits`: memory_mb, cpu_percent, time_seconds, disk_mb,
        pids. `network`: none (default), bridge, or allowlist with `egress_allow` hosts."""
        spec: dict[str, Any] = {"id": id, "prompt": prompt, "command": command,
                                "agent": agent, "deps": depends_on or [], "image": image,
                                "env": env or {}, "network": network,
                                "egress_allow": egress_allow, "environment": environment,
                                "model": model, "base_url": base_url}
        if limits is not None:
            spec["resource_limits"] = limits.model_dump(exclude_none=True)
        with tool_errors():
            return lead.start({k: v for k, v in spec.items() if v is not None})

    @server.tool()
    def list_sessions() -> Sessions:
        """Every session with its status, exit code, usage (CPU seconds, memory, tokens) and
        merge state, and what the run has spent against its budget."""
        with tool_errors():
            run = lead.run
            spent = run.spent() if run is not None else None
            return Sessions(
                run_id=run.run_id if run else None, sessions=lead.sessions(),
                spent={"sessions": spent.sessions, "cpu_seconds": spent.cpu_seconds,
                       "tokens": spent.tokens} if spent else {},
                budget={"max_sessions": lead.budget.max_sessions,
                        "max_cpu_seconds": lead.budget.max_cpu_seconds,
                        "max_tokens": lead.budget.max_tokens})

    @server.tool()
    def wait_sessions(ids: list[str] | None = None, timeout_s: float = 300.0,
                      mode: Literal["all", "any"] = "all") -> Waited:
        """Wait until all (mode=all) or any (mode=any) of the sessions `ids` (every session
        when omitted) have ended, at most `timeout_s` seconds (done=false then)."""
        if timeout_s < 0 or timeout_s > 3600:
            raise ToolError("timeout_s must be between 0 and 3600; call again to wait longer")
        with tool_errors():
            done, found = lead.wait(ids or [], timeout_s, mode)
            return Waited(done=done, sessions=found)

    @server.tool()
    def read_output(id: str, lines: int = 50) -> Output:  # noqa: A002
        """The last `lines` lines of a session's output (secrets redacted, control
        characters escaped)."""
        if lines < 1 or lines > 5000:
            raise ToolError("lines must be between 1 and 5000")
        with tool_errors():
            session, text = lead.output(id, lines)
            return Output(session=session, output=text)

    @server.tool()
    def read_diff(id: str, offset: int = 0) -> Diff:  # noqa: A002
        """The session's changes as a unified diff against the commit it started from
        (control characters escaped); long diffs come in parts: call again with `offset`."""
        if offset < 0:
            raise ToolError("offset must not be negative")
        with tool_errors():
            session, text, total = lead.diff(id, offset)
            return Diff(session=session, diff=text, offset=offset, total_chars=total,
                        truncated=offset + len(text) < total)

    @server.tool()
    def merge_sessions(ids: list[str], target: str | None = None,
                       no_gate: bool = False) -> Merged:
        """Merge succeeded sessions into `target` (default: the repository's checked-out
        branch), one merge commit each, in the order given. A session that conflicts stays on
        its branch (merge: conflicts, with the paths). With a merge gate (`agentrt mcp
        --merge-gate`), each merge lands only if the gate passes on the merged result (else
        merge: gate_failed, with its output); `no_gate` skips it, recorded."""
        with tool_errors():
            results = lead.merge(ids, target, no_gate=no_gate)
        sessions = [info(task_id, r) for task_id, r in zip(ids, results, strict=True)]
        conflicts = {task_id: [c.path for c in r.merge.conflicts]
                     for task_id, r in zip(ids, results, strict=True) if r.merge.conflicts}
        gated = {task_id: f"{r.merge.gate.reason}\n{r.merge.gate.output_tail}"
                 for task_id, r in zip(ids, results, strict=True)
                 if r.merge.gate is not None and r.merge.status == "gate_failed"}
        return Merged(target=target or lead.repo.current_branch(), sessions=sessions,
                      conflicts=conflicts, gate_failed=gated)

    @server.tool()
    def apply_session(id: str) -> Done:  # noqa: A002
        """Write a finished session's changes into the repository's checkout as unstaged
        edits (no commit, no merge), for a person to review. Refused, writing nothing, when the
        checkout has uncommitted changes in those files or the changes no longer apply."""
        with tool_errors():
            paths = lead.apply(id)
        return Done(ids=[id], detail=f"{len(paths)} files changed, unstaged: "
                    + ", ".join(paths[:20]) + (" ..." if len(paths) > 20 else ""))

    @server.tool()
    def revert_session(id: str) -> Done:  # noqa: A002
        """Undo a merged session on its target with one revert commit."""
        with tool_errors():
            commit = lead.revert(id)
        return Done(ids=[id], detail=f"reverted by commit {commit}")

    @server.tool()
    def discard_session(id: str) -> Done:  # noqa: A002
        """Throw a finished session's work away: delete its branch. Refused for a merged
        session (revert_session it first)."""
        with tool_errors():
            branch = lead.discard(id)
        return Done(ids=[id], detail=f"branch {branch or '(none)'} deleted")

    @server.tool()
    def stop_sessions(ids: list[str] | None = None) -> Done:
        """Stop running sessions (SIGTERM, grace, SIGKILL); their work is kept on their
        branches. With no ids: stop every session and close the run (the next
        start_session opens a new one)."""
        with tool_errors():
            stopped = lead.stop(ids or [])
        return Done(ids=stopped, detail="stopping; wait_sessions to see them end")

    @server.resource("agentrt://run/report", mime_type="application/json")
    def run_report() -> str:
        """The current run's report (JSON, like `agentrt run --json`)."""
        try:
            return lead.report_json()
        except AgentRuntimeError as exc:
            raise ResourceError(str(exc)) from None

    @server.resource("agentrt://sessions/{id}/log", mime_type="text/plain")
    def session_log(id: str) -> str:  # noqa: A002
        """A session's output (secrets redacted, control characters escaped)."""
        try:
            return lead.log(id)
        except AgentRuntimeError as exc:
            raise ResourceError(str(exc)) from None

    return server


def read_token(path: Path) -> str:
    """The bearer token in ``path`` (one line, at least 16 characters; the file must not be
    readable by others). ConfigError naming the file otherwise."""
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"--token-file {path}: cannot read it: {exc}") from None
    if mode & 0o077:
        raise ConfigError(f"--token-file {path}: readable by others; chmod 600 it")
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ConfigError(f"--token-file {path}: the token must be one word of at least 16 "
                          "characters (e.g. `openssl rand -hex 32`)")
    return token


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` of ``--http``; ConfigError naming the option otherwise."""
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--http {value!r}: give HOST:PORT, e.g. 127.0.0.1:8765")
    return host.strip("[]"), int(port)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def bearer_only(app: ASGIApp, token: str) -> ASGIApp:
    """``app`` answering 401 to any HTTP request without ``Authorization: Bearer <token>``
    (compared in constant time)."""
    expected = f"Bearer {token}".encode()

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"text/plain"),
                                        (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body", "body": b"bearer token required\n"})
                return
        await app(scope, receive, send)

    return guarded


def serve(repo: MainRepo, *, http: str | None = None, token_file: Path | None = None,
          budget: RunBudget | None = None, merge_gate: list[str] | None = None) -> None:
    """Serve until the client goes away (stdio) or the process is interrupted (HTTP); then
    stop the run's sessions (work kept on branches)."""
    address = parse_address(http) if http else None
    if address is not None and token_file is None:
        raise ConfigError("--http needs --token-file: the server runs sessions for whoever "
                          "reaches it")
    if address is None and token_file is not None:
        raise ConfigError("--token-file is for --http; stdio needs no token")
    token = read_token(token_file) if token_file is not None else None
    lead = LeadRun(repo, budget=budget, config={"merge_gate": merge_gate} if merge_gate else None)
    server = build_server(lead)
    try:
        if address is None:
            server.run("stdio")
        else:
            import uvicorn

            app = server.streamable_http_app(host=address[0])
            uvicorn.run(bearer_only(app, token or ""), host=address[0], port=address[1],
                        log_level="warning")
    finally:
        lead.close()
