"""runtime/run/usage.py: token and cost figures read from agent CLIs' output, defensively."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runtime.models import SessionResult, Usage
from runtime.run.usage import (
    aider_usage,
    claude_usage,
    codex_usage,
    format_usage,
    total_usage,
    usage_from_log,
    usage_from_text,
)

# claude -p --output-format json (Claude Code 2.x): one object at the end of the output.
CLAUDE = json.dumps({
    "type": "result", "subtype": "success", "is_error": False, "duration_ms": 5231,
    "duration_api_ms": 4012, "num_turns": 2, "result": "Done: hello-claude.txt is written.",
    "session_id": "0f5c1e7e-7d43-4b4f-9d7e-3f1c2b2e1a11", "total_cost_usd": 0.0123456,
    "usage": {"input_tokens": 12, "cache_creation_input_tokens": 4321,
              "cache_read_input_tokens": 1000, "output_tokens": 210,
              "server_tool_use": {"web_search_requests": 0}, "service_tier": "standard"},
    "modelUsage": {"claude-sonnet-4-5": {"inputTokens": 12, "outputTokens": 210}},
    "permission_denials": [], "uuid": "3f0d6d2c-0000-4000-8000-000000000000",
})

# codex exec --json: JSON Lines events, usage on each turn.completed.
CODEX = "\n".join(json.dumps(e) for e in [
    {"type": "thread.started", "thread_id": "0199a213-81c0-7800-8aa1-bbab2a035a53"},
    {"type": "turn.started"},
    {"type": "item.started", "item": {"id": "item_1", "type": "command_execution",
                                      "command": "bash -lc ls", "status": "in_progress"}},
    {"type": "item.completed", "item": {"id": "item_1", "type": "command_execution",
                                        "command": "bash -lc ls", "exit_code": 0,
                                        "aggregated_output": "README.md\n",
                                        "status": "completed"}},
    {"type": "item.completed", "item": {"id": "item_2", "type": "agent_message",
                                        "text": "Done."}},
    {"type": "turn.completed", "usage": {"input_tokens": 24763, "cached_input_tokens": 24448,
                                         "output_tokens": 122}},
    {"type": "turn.completed", "usage": {"input_tokens": 1000, "cached_input_tokens": 0,
                                         "output_tokens": 8}},
])

# Older codex exec --json: {"id", "msg"} events, a running total in token_count.
CODEX_OLD = "\n".join(json.dumps(e) for e in [
    {"id": "0", "msg": {"type": "task_started"}},
    {"id": "0", "msg": {"type": "token_count", "info": {
        "total_token_usage": {"input_tokens": 100, "output_tokens": 5, "total_tokens": 105},
        "last_token_usage": {"input_tokens": 100, "output_tokens": 5}}}},
    {"id": "0", "msg": {"type": "token_count", "info": {
        "total_token_usage": {"input_tokens": 250, "output_tokens": 17, "total_tokens": 267}}}},
    {"id": "0", "msg": {"type": "task_complete"}},
])

AIDER = """\
Aider v0.86.2
Model: openai/agentrt-scripted with whole edit format
Git repo: .git with 3 files
Repo-map: disabled

hello-aider.txt
Applied edit to hello-aider.txt
Tokens: 2.3k sent, 105 received. Cost: $0.0081 message, $0.0081 session.
Tokens: 12k sent, 1.2k cache write, 3.4k cache hit, 1,234 received. Cost: $0.05 message, $0.0581 session.
"""


def test_claude_result_object() -> None:
    usage = claude_usage("starting...\n" + CLAUDE + "\n")
    assert usage == Usage(input_tokens=12 + 4321 + 1000, output_tokens=210, cost_usd=0.0123456)


def test_claude_takes_the_last_result_and_ignores_other_json() -> None:
    first = json.dumps({"type": "result", "usage": {"input_tokens": 1, "output_tokens": 1}})
    other = json.dumps({"type": "system", "usage": {"input_tokens": 999}})
    assert claude_usage(f"{first}\n{CLAUDE}\n{other}") == claude_usage(CLAUDE)


def test_claude_error_result_with_cost_only() -> None:
    text = json.dumps({"type": "result", "subtype": "error_during_execution",
                       "total_cost_usd": 0.5})
    assert claude_usage(text) == Usage(cost_usd=0.5)


def test_codex_turns_are_summed() -> None:
    assert codex_usage(CODEX) == Usage(input_tokens=25763, output_tokens=130)


def test_codex_old_running_total() -> None:
    assert codex_usage(CODEX_OLD) == Usage(input_tokens=250, output_tokens=17)


def test_aider_lines_are_summed_and_the_cost_is_the_session_total() -> None:
    assert aider_usage(AIDER) == Usage(input_tokens=14300, output_tokens=1339, cost_usd=0.0581)


def test_aider_without_a_price() -> None:
    assert aider_usage("Tokens: 1.2k sent, 34 received.\n") == Usage(
        input_tokens=1200, output_tokens=34)


@pytest.mark.parametrize("agent", ["claude-code", "codex", "aider"])
def test_nothing_reported_is_none(agent: str) -> None:
    assert usage_from_text(agent, "") is None
    assert usage_from_text(agent, "hello\n{not json}\n[1, 2]\n") is None


def test_other_agents_have_no_parser() -> None:
    assert usage_from_text("shell", CLAUDE) is None
    assert usage_from_text(None, AIDER) is None


@pytest.mark.parametrize("bad", [
    {"input_tokens": -5, "output_tokens": True},          # negative, a bool
    {"input_tokens": "12", "output_tokens": 1.5},         # a string, a float
    {"input_tokens": 10**20, "output_tokens": None},      # out of range
])
def test_claude_refuses_odd_numbers(bad: dict[str, object]) -> None:
    text = json.dumps({"type": "result", "usage": bad, "total_cost_usd": float("nan")})
    assert claude_usage(text) is None


def test_hostile_text_is_neither_trusted_nor_slow() -> None:
    deep = "{" + '"a":[' * 50_000 + "]" * 50_000 + "}"
    flood = "Tokens: " + "1" * 100_000 + " sent, 5 received.\n"
    spaces = "Tokens: 1 sent," + " x," * 20_000 + " 2 received.\n"
    codex = json.dumps({"type": "turn.completed", "usage": {"input_tokens": "__import__('os')"}})
    started = time.monotonic()
    assert claude_usage(deep) is None
    assert aider_usage(flood) is None
    assert aider_usage(spaces) is None
    assert codex_usage(codex) is None
    assert time.monotonic() - started < 2


def test_a_forged_line_counts_like_any_other() -> None:
    # The agent controls its output: a forged figure is only its own claim, bounded.
    forged = "Tokens: 999M sent, 1 received. Cost: $1e9 message, $99999999999 session."
    usage = aider_usage(forged)
    assert usage is not None and usage.input_tokens == 999_000_000 and usage.cost_usd is None


def test_usage_from_a_saved_log(tmp_path: Path) -> None:
    log = tmp_path / "s.log"
    log.write_bytes(b"\xff\xfe binary noise\n" + CODEX.encode())
    assert usage_from_log("codex", log) == Usage(input_tokens=25763, output_tokens=130)
    assert usage_from_log("codex", tmp_path / "missing.log") is None
    assert usage_from_log("shell", log) is None


def test_totals_and_format() -> None:
    a = Usage(input_tokens=1000, output_tokens=10, cost_usd=0.01)
    b = Usage(input_tokens=234, output_tokens=None)
    total = total_usage([a, None, b])
    assert total == Usage(input_tokens=1234, output_tokens=10, cost_usd=0.01)
    assert total_usage([None, None]) is None
    assert format_usage(total) == "1.2k in, 10 out, $0.0100"
    assert format_usage(b) == "234 in, ? out"
    assert format_usage(None) == ""


def test_the_report_carries_usage_and_the_cli_version() -> None:
    result = SessionResult(id="s", task_id="t", branch="b", cli_version="2.1.332",
                           usage=Usage(input_tokens=1, output_tokens=2, cost_usd=0.5))
    data = json.loads(result.model_dump_json())
    assert data["usage"] == {"input_tokens": 1, "output_tokens": 2, "cost_usd": 0.5}
    assert data["cli_version"] == "2.1.332"
    assert SessionResult.model_validate(data) == result


# -- where usage is shown -----------------------------------------------------------------

def _agent_session(task: str, usage: Usage | None, version: str | None) -> SessionResult:
    from runtime.models import SessionStatus, utcnow

    return SessionResult(id=f"{task}-4db5ce", task_id=task, branch=f"agent/{task}/4db5ce",
                         status=SessionStatus.SUCCEEDED, started_at=utcnow(), duration_s=5.0,
                         usage=usage, cli_version=version)


def _run(*sessions: SessionResult) -> object:
    from runtime.models import RunReport, utcnow

    return RunReport(run_id="r1", repo="/src/app", base_commit="c" * 40, target="main",
                     merge="none", started_at=utcnow(), sessions=list(sessions))


def test_summary_and_live_view_show_usage_version_and_totals() -> None:
    import io

    from rich.console import Console

    from runtime.cli.live_view import ProgressView, summary_table

    a = _agent_session("claude", Usage(input_tokens=2400, output_tokens=68, cost_usd=0.00822),
                       "2.1.332")
    b = _agent_session("codex", Usage(input_tokens=2400, output_tokens=68), "0.171.0")
    out = io.StringIO()
    Console(file=out, width=250).print(summary_table(_run(a, b)))  # type: ignore[arg-type]
    text = out.getvalue()
    assert "cli version" in text and "2.1.332" in text and "0.171.0" in text
    assert "2.4k in, 68 out, $0.0082" in text
    assert "usage of the run: 4.8k in, 136 out, $0.0082" in text
    plain = _agent_session("sh", None, None)
    out = io.StringIO()
    Console(file=out, width=250).print(summary_table(_run(plain)))  # type: ignore[arg-type]
    assert "cli version" not in out.getvalue()

    view = ProgressView(io.StringIO(), total=2, live=False, run_id="r1")
    view("finished", a)
    grid = view._grid([a, plain], 200)
    assert [c.header for c in grid.columns][-2:] == ["tokens", "last output"]
    assert "tokens" not in [c.header for c in view._grid([plain], 200).columns]


def test_the_html_report_shows_usage_and_the_cli_version() -> None:
    from runtime.cli.html_report import render_html
    from runtime.config import ResourceLimits
    from runtime.models import Manifest

    a = _agent_session("claude", Usage(input_tokens=2400, output_tokens=68, cost_usd=0.5),
                       "2.1.332")
    manifest = Manifest(image="agentrt/claude-code:latest", image_digest=None,
                        base_commit="c" * 40, task={"id": "claude", "agent": "claude-code"},
                        limits=ResourceLimits(), network="allowlist", runtime="runc",
                        database_strategy="per_agent", cli_version="2.1.332")
    page = render_html(_run(a), {}, {a.id: manifest})  # type: ignore[arg-type]
    assert "<th>tokens</th>" in page and "2.4k in, 68 out, $0.5000" in page
    assert "agent CLI" in page and "2.1.332" in page
    assert "usage of the run" in page


def test_replay_keeps_the_recorded_egress_policy() -> None:
    from runtime.config import ResourceLimits
    from runtime.models import Manifest
    from runtime.run.replay import replay_config
    from runtime.state.schema import SessionRow

    manifest = Manifest(image="agentrt/codex:latest", image_digest="sha256:" + "ab" * 32,
                        base_commit="c" * 40,
                        task={"id": "x", "agent": "codex", "prompt": "hi"},
                        limits=ResourceLimits(), network="allowlist", runtime="runc",
                        database_strategy="per_agent", cli_version="0.171.0",
                        egress_allow=["models:8080"], egress_networks=["llm-net"])
    result = SessionResult(id="x-1", task_id="x", branch="agent/x/1")
    row = SessionRow(id="x-1", run_id="r", task_id="x", branch="agent/x/1",
                     status=result.status, result_json=result.model_dump_json(),
                     manifest_json=manifest.model_dump_json(), container_id=None,
                     volume_path=None, mount_path=None, loop_device=None, db_path=None,
                     deadline=None, owner_pid=None, owner_start_time=None, created_at=0.0,
                     updated_at=0.0, result=result)
    config, task = replay_config(row)
    assert config.network == "allowlist"
    assert config.egress_for(task) == (["models:8080"], ["llm-net"])
    assert task.image == manifest.image_digest


def test_the_cli_version_label_is_read_only_when_it_looks_like_one() -> None:
    from unittest import mock

    from runtime.engine.images import cli_version

    def client(labels: dict[str, str] | None) -> mock.MagicMock:
        fake = mock.MagicMock()
        fake.images.get.return_value = mock.MagicMock(labels=labels)
        return fake

    assert cli_version(client({"agentrt.cli.version": "2.1.332"}), "x") == "2.1.332"
    assert cli_version(client({}), "x") is None
    assert cli_version(client(None), "x") is None
    assert cli_version(client({"agentrt.cli.version": "1\x1b[31m"}), "x") is None
    assert cli_version(client({"agentrt.cli.version": "9" * 100}), "x") is None
