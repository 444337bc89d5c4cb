"""`agentrt mcp` driven by the MCP SDK's own client over stdio, against the real engine."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

pytestmark = pytest.mark.docker

Call = Callable[..., Awaitable[Any]]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True).stdout


def with_server(repo: Path, body: Callable[[ClientSession], Awaitable[None]],
                *extra: str) -> None:
    """Run ``body`` against `agentrt mcp --repo repo` spoken to over stdio."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "runtime.cli", "mcp", "--repo", str(repo), *extra],
        env=dict(os.environ), cwd=str(repo))

    async def main() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
            await client.initialize()
            await body(client)

    anyio.run(main)


async def call(client: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool's structured result; the test fails on a tool error."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    return result.structured_content


async def refused(client: ClientSession, tool: str, **arguments: Any) -> str:
    """The text of a tool error (the call must be refused, the server must live on)."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return " ".join(getattr(c, "text", "") for c in result.content)


def test_a_lead_starts_three_sessions_merges_two_and_discards_one(
        repo: Path, docker_client: object) -> None:
    async def body(client: ClientSession) -> None:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"start_session", "list_sessions", "wait_sessions", "read_output", "read_diff",
                "merge_sessions", "apply_session", "revert_session", "discard_session",
                "stop_sessions"} <= set(tools)
        assert tools["list_sessions"].output_schema is not None  # structured results
        for name, text in (("alpha", "a"), ("beta", "b"), ("gamma", "c")):
            started = await call(client, "start_session", id=name, command=[
                "sh", "-c", f"echo {text} > {name}.txt && echo wrote {name}"],
                limits={"memory_mb": 128, "time_seconds": 60})
            assert started["id"] == name
        waited = await call(client, "wait_sessions", timeout_s=240)
        assert waited["done"], waited
        assert {s["id"]: s["status"] for s in waited["sessions"]} == {
            "alpha": "succeeded", "beta": "succeeded", "gamma": "succeeded"}
        output = await call(client, "read_output", id="beta")
        assert "wrote beta" in output["output"]
        diff = await call(client, "read_diff", id="gamma")
        assert "+c" in diff["diff"] and "gamma.txt" in diff["diff"]
        merged = await call(client, "merge_sessions", ids=["alpha", "beta"])
        assert [s["merge"] for s in merged["sessions"]] == ["merged", "merged"]
        discarded = await call(client, "discard_session", id="gamma")
        assert "agent/gamma/" in discarded["detail"]
        listed = await call(client, "list_sessions")
        assert {s["id"]: s["merge"] for s in listed["sessions"]}["gamma"] == "discarded"
        assert listed["spent"]["sessions"] == 3
        # Bad input is a tool error saying what to do; the server lives on.
        assert "give command" in await refused(client, "start_session", id="nothing")
        assert "valid task id" in await refused(client, "start_session", id="Bad Id!",
                                                command=["true"])
        assert "exists" in await refused(client, "start_session", id="alpha",
                                         command=["true"])
        assert "no session 'nope'" in await refused(client, "read_diff", id="nope")
        assert "unknown task 'ghost'" in await refused(
            client, "start_session", id="orphan", command=["true"], depends_on=["ghost"])
        assert "is merged" in await refused(client, "discard_session", id="alpha")
        assert "memory_mb" in await refused(client, "start_session", id="huge",
                                            command=["true"], limits={"memory_mb": -5})
        # Revert a merge, then its branch may go.
        reverted = await call(client, "revert_session", id="beta")
        assert "reverted by commit" in reverted["detail"]
        await call(client, "discard_session", id="beta")
        # A wait times out (done=false) and a stopped session keeps its work on its branch.
        await call(client, "start_session", id="sleeper",
                   command=["sh", "-c", "echo partial > partial.txt; sleep 300"])
        waited = await call(client, "wait_sessions", ids=["sleeper"], timeout_s=3)
        assert not waited["done"]
        assert "has not finished" in await refused(client, "merge_sessions", ids=["sleeper"])
        stopped = await call(client, "stop_sessions", ids=["sleeper"])
        assert stopped["ids"] == ["sleeper"]
        waited = await call(client, "wait_sessions", ids=["sleeper"], timeout_s=120)
        assert waited["done"] and waited["sessions"][0]["status"] == "cancelled"
        assert "+partial" in (await call(client, "read_diff", id="sleeper"))["diff"]
        report = await client.read_resource("agentrt://run/report")
        data = json.loads(report.contents[0].text)  # type: ignore[union-attr]
        assert {s["task_id"] for s in data["sessions"]} >= {"alpha", "beta", "gamma"}
        log = await client.read_resource("agentrt://sessions/alpha/log")
        assert "wrote alpha" in log.contents[0].text  # type: ignore[union-attr]

    with_server(repo, body)
    tree = git(repo, "ls-tree", "--name-only", "main")
    assert "alpha.txt" in tree and "beta.txt" not in tree and "gamma.txt" not in tree
    assert "agent/gamma" not in git(repo, "branch", "--list")
    assert "agent/beta" not in git(repo, "branch", "--list")
    assert git(repo, "branch", "--list", "agent/alpha/*").strip()


def test_the_budget_refuses_by_name_over_mcp(repo: Path, docker_client: object) -> None:
    async def body(client: ClientSession) -> None:
        await call(client, "start_session", id="one", command=["true"])
        message = await refused(client, "start_session", id="two", command=["true"])
        assert "budget max_sessions is spent: 1 of 1" in message
        await call(client, "wait_sessions", timeout_s=120)

    with_server(repo, body, "--max-sessions", "1")


@contextlib.contextmanager
def http_server(repo: Path, token_file: Path) -> Iterator[str]:
    """`agentrt mcp --http` on a free local port, answering; its URL."""
    import socket
    import time

    import httpx2

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "runtime.cli", "mcp", "--repo", str(repo),
                               "--http", f"127.0.0.1:{port}", "--token-file", str(token_file)])
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx2.post(url, json={})
                break
            except httpx2.TransportError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_http_needs_the_bearer_token(repo: Path, tmp_path: Path) -> None:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    token = "s3cret-token-0123456789abcdef"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o644)
    loose = subprocess.run([sys.executable, "-m", "runtime.cli", "mcp", "--repo", str(repo),
                            "--http", "127.0.0.1:1", "--token-file", str(token_file)],
                           capture_output=True, text=True, timeout=60)
    assert loose.returncode == 2 and "chmod 600" in loose.stderr
    no_token = subprocess.run([sys.executable, "-m", "runtime.cli", "mcp", "--repo", str(repo),
                               "--http", "127.0.0.1:1"], capture_output=True, text=True,
                              timeout=60)
    assert no_token.returncode == 2 and "--token-file" in no_token.stderr
    token_file.chmod(0o600)
    with http_server(repo, token_file) as url:
        answer = httpx2.post(url, json={})
        assert answer.status_code == 401  # the attack: no token
        wrong = httpx2.post(url, json={}, headers={"Authorization": "Bearer not-the-token"})
        assert wrong.status_code == 401

        async def main() -> list[str]:
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http, \
                    streamable_http_client(url, http_client=http) as (read, write), \
                    ClientSession(read, write) as client:
                await client.initialize()
                return [t.name for t in (await client.list_tools()).tools]

        assert "start_session" in anyio.run(main)  # the control: with the token it answers


REACH = """
import socket, struct, sys
gateway = None
for line in open('/proc/net/route').read().splitlines()[1:]:
    fields = line.split()
    if fields[1] == '00000000':
        gateway = socket.inet_ntoa(struct.pack('<L', int(fields[2], 16)))
for port in sys.argv[1:]:
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((gateway, int(port)))
        print(port, 'REACHED')
    except OSError as exc:
        print(port, 'BLOCKED', type(exc).__name__)
"""


def test_a_session_cannot_reach_the_http_server_but_reaches_a_host_port_open_to_it(
        repo: Path, docker_client: object, tmp_path: Path) -> None:
    import socket

    from tests.integration.helpers import by_task, run_tasks, sh

    token_file = tmp_path / "token"
    token_file.write_text("0123456789abcdef0123456789abcdef\n")
    token_file.chmod(0o600)
    # The control: a port the host opens to everyone is reachable from a bridge session.
    with http_server(repo, token_file) as url, socket.socket() as open_port:
        open_port.bind(("0.0.0.0", 0))
        open_port.listen()
        port, control = url.rsplit(":", 1)[1].split("/")[0], open_port.getsockname()[1]
        script = REACH.replace("'", "'\"'\"'")
        report = run_tasks(repo, [sh("probe", f"python3 -c '{script}' {port} {control} "
                                              "> reach.txt")], network="bridge")
    probe = by_task(report)["probe"]
    assert probe.status.value == "succeeded", probe.reason
    seen = git(repo, "show", f"{probe.head_commit}:reach.txt")
    assert f"{control} REACHED" in seen, seen
    assert f"{port} BLOCKED" in seen, seen


def test_the_merge_tool_honours_the_merge_gate_and_no_gate_is_explicit(
        repo: Path, docker_client: object) -> None:
    async def body(client: ClientSession) -> None:
        await call(client, "start_session", id="good", command=["sh", "-c", "echo ok > GOOD.md"])
        await call(client, "start_session", id="bad", command=["sh", "-c", "echo x > BROKEN"])
        await call(client, "wait_sessions", timeout_s=180)
        merged = await call(client, "merge_sessions", ids=["good", "bad"])
        states = {s["id"]: s["merge"] for s in merged["sessions"]}
        assert states == {"good": "merged", "bad": "gate_failed"}, merged
        assert "BROKEN is here" in merged["gate_failed"]["bad"]
        assert git(repo, "show", "main:GOOD.md") == "ok\n"
        assert "BROKEN" not in git(repo, "ls-tree", "--name-only", "main")
        forced = await call(client, "merge_sessions", ids=["bad"], no_gate=True)
        assert [s["merge"] for s in forced["sessions"]] == ["merged"]
        assert "BROKEN" in git(repo, "ls-tree", "--name-only", "main")

    with_server(repo, body, "--merge-gate",
                "sh -c 'if [ -e BROKEN ]; then echo BROKEN is here; exit 1; fi'")


def test_apply_writes_a_sessions_changes_unstaged_and_refuses_a_dirty_overlap(
        repo: Path, docker_client: object) -> None:
    async def body(client: ClientSession) -> None:
        await call(client, "start_session", id="readme",
                   command=["sh", "-c", "echo more >> README.md"])
        await call(client, "wait_sessions", timeout_s=180)
        (repo / "README.md").write_text("mine\n")
        assert "uncommitted changes" in await refused(client, "apply_session", id="readme")
        assert (repo / "README.md").read_text() == "mine\n"
        git(repo, "checkout", "--", "README.md")
        done = await call(client, "apply_session", id="readme")
        assert "README.md" in done["detail"]
        assert git(repo, "status", "--porcelain") == " M README.md\n"

    with_server(repo, body)
