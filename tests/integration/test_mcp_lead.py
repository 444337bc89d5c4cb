"""A real lead agent: the Claude Code CLI (the binary of the `agentrt/claude-code` image, run on
this host) with `agentrt mcp` as its stdio MCP server, against a scripted model server whose
replies call the agentrt tools: three `shell` sub-sessions, a wait, a merge of all three."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import git
from tests.integration.model_server import Handler, _next_id, log

pytestmark = pytest.mark.docker

IMAGE = "agentrt/claude-code:latest"
SUBS = ("one", "two", "three")

#: The lead's script: each step answers once the previous tool's result came back.
STEPS: list[tuple[str, dict[str, Any]]] = [
    *[("mcp__agentrt__start_session",
       {"id": name, "agent": "shell", "prompt": f"echo {name} > {name}.txt && echo made {name}"})
      for name in SUBS],
    ("mcp__agentrt__wait_sessions", {"timeout_s": 240}),
    ("mcp__agentrt__merge_sessions", {"ids": list(SUBS)}),
]


class LeadHandler(Handler):
    """Anthropic Messages, scripted for a lead: one agentrt tool call per turn."""

    def _anthropic(self, path: str, body: dict) -> None:
        tools = [t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)]
        messages = body.get("messages") or []
        results = [b for m in messages if isinstance(m, dict)
                   and isinstance(m.get("content"), list)
                   for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
        step = len(results)
        if "mcp__agentrt__start_session" in tools and step < len(STEPS):
            name, arguments = STEPS[step]
            block: dict[str, Any] = {"type": "tool_use", "id": _next_id("toolu"), "name": name,
                                     "input": arguments}
            stop = "tool_use"
        else:
            text = "All three sub-agents finished and are merged." if step else "OK"
            block, stop = {"type": "text", "text": text}, "end_turn"
        log(path=path, step=step, tools=len(tools), answer=block.get("name") or "text")
        message = {"id": _next_id("msg"), "type": "message", "role": "assistant",
                   "model": body.get("model") or "scripted", "stop_reason": None,
                   "stop_sequence": None,
                   "usage": {"input_tokens": 100, "output_tokens": 1,
                             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}
        if not body.get("stream"):
            self._json(200, {**message, "content": [block], "stop_reason": stop})
            return
        if block["type"] == "tool_use":
            start = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        else:
            start, delta = {"type": "text", "text": ""}, {"type": "text_delta",
                                                          "text": block["text"]}
        self._sse([
            ("message_start", {"type": "message_start", "message": {**message, "content": []}}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": start}),
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta",
                               "delta": {"stop_reason": stop, "stop_sequence": None},
                               "usage": {"output_tokens": 10}}),
            ("message_stop", {"type": "message_stop"}),
        ])


@pytest.fixture
def claude_binary(docker_client: Any, tmp_path: Path) -> Path:
    """The `claude` binary of the claude-code preset's image, copied out to run here."""
    import docker.errors

    try:
        docker_client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{IMAGE} is not built (agentrt images build claude-code)")
    container = docker_client.containers.create(IMAGE, ["true"])
    try:
        bits, _ = container.get_archive("/usr/local/bin/claude")
        import io
        import tarfile

        data = io.BytesIO(b"".join(bits))
        with tarfile.open(fileobj=data) as tar:
            tar.extractall(tmp_path / "bin", filter="data")
    finally:
        container.remove(force=True)
    binary = tmp_path / "bin" / "claude"
    binary.chmod(0o755)
    return binary


@pytest.fixture
def lead_model() -> Iterator[str]:
    """The scripted model server on this host; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), LeadHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_a_real_claude_code_lead_fans_out_three_sessions_and_merges_them(
        repo: Path, claude_binary: Path, lead_model: str, tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"agentrt": {
        "type": "stdio", "command": sys.executable,
        "args": ["-m", "runtime.cli", "mcp", "--repo", str(repo)],
        "env": {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}}}}))
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "CLAUDE_CONFIG_DIR": str(home / ".claude"),
           "ANTHROPIC_BASE_URL": lead_model, "ANTHROPIC_API_KEY": "sk-scripted-lead",
           "DISABLE_TELEMETRY": "1", "DISABLE_AUTOUPDATER": "1",
           "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_ERROR_REPORTING": "1",
           "ENABLE_TOOL_SEARCH": "false", "MCP_TIMEOUT": "60000", "MCP_TOOL_TIMEOUT": "300000"}
    done = subprocess.run(
        [str(claude_binary), "-p", "Split the work in three, run it in agentrt, merge it.",
         "--mcp-config", str(config), "--strict-mcp-config", "--allowedTools", "mcp__agentrt",
         "--output-format", "stream-json", "--verbose", "--model", "claude-sonnet-4-5"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    transcript = [json.loads(line) for line in done.stdout.splitlines()
                  if line.startswith("{")]
    (tmp_path / "transcript.jsonl").write_text(done.stdout)
    assert done.returncode == 0, (done.stderr[-2000:], done.stdout[-4000:])
    # The lead's transcript shows the tool results: three sessions started, waited, merged.
    results = [block for event in transcript if event.get("type") == "user"
               for block in event.get("message", {}).get("content", [])
               if isinstance(block, dict) and block.get("type") == "tool_result"]
    texts = [json.dumps(r.get("content")) for r in results]
    assert len(results) == len(STEPS), texts
    assert not any(r.get("is_error") for r in results), texts
    assert all(f'\\"id\\": \\"{name}\\"' in texts[i] or f'"id": "{name}"' in texts[i]
               or name in texts[i] for i, name in enumerate(SUBS))
    assert "succeeded" in texts[3]
    assert texts[4].count("merged") >= 3
    # The three branches exist and are merged into main.
    branches = git(repo, "branch", "--list", "agent/*").split()
    for name in SUBS:
        assert any(b.startswith(f"agent/{name}/") for b in branches), branches
    tree = git(repo, "ls-tree", "--name-only", "main").split()
    assert {"one.txt", "two.txt", "three.txt"} <= set(tree)
    merges = git(repo, "log", "--merges", "--format=%s", "main")
    assert merges.count("agentrt: merge session") == 3
