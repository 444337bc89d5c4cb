"""The merge gate's pure parts: its task id, its settings, its output tail, and the merge
queue's hook (a real git repository, no engine)."""

from __future__ import annotations

from pathlib import Path

from runtime.config import RunConfig, Task
from runtime.git.merge import merge_branches
from runtime.git.safe_git import MainRepo
from runtime.models import GateResult, SessionResult, SessionStatus
from runtime.run.merge_gate import gate_config, gate_task_id, output_tail
from tests.conftest import git, make_repo


def test_gate_task_id_is_a_valid_task_id_for_the_longest_task_ids() -> None:
    assert gate_task_id("parser") == "parser-gate"
    long_id = "a" * 34 + "-" + "b" * 5
    gated = gate_task_id(long_id)
    assert len(gated) <= 40 and gated.endswith("-gate") and "--" not in gated
    Task(id=gated, command=["true"])  # validates


def test_gate_config_has_the_gate_limits_no_network_and_no_merge() -> None:
    config = RunConfig(network="allowlist", egress_allow=["example.com"], merge="auto",
                       merge_gate=["pytest"], merge_gate_limits={"memory_mb": 64},
                       resource_limits={"memory_mb": 512, "time_seconds": 99})
    gate = gate_config(config, "agentrt/env:abc")
    assert (gate.image, gate.network, gate.merge, gate.egress_allow) == (
        "agentrt/env:abc", "none", "none", [])
    assert gate.resource_limits.memory_mb == 64 and gate.resource_limits.time_seconds == 99


def test_output_tail_keeps_the_end_from_a_line_start_and_escapes_control_characters() -> None:
    data = b"".join(b"line %d\n" % n for n in range(1000)) + b"\x1b[2Jlast\n"
    tail = output_tail(data, limit=100)
    assert tail.endswith("\\x1b[2Jlast\n") and tail.startswith("line ")
    assert "\x1b" not in tail


def test_task_gate_overrides_the_runs_and_an_empty_list_turns_it_off() -> None:
    config = RunConfig(merge_gate=["make", "check"])
    assert config.gate_for(Task(id="a", command=["x"])) == ["make", "check"]
    assert config.gate_for(Task(id="b", command=["x"], merge_gate=["pytest"])) == ["pytest"]
    assert config.gate_for(Task(id="c", command=["x"], merge_gate=[])) is None


def _branch(repo: Path, name: str, path: str) -> None:
    git(repo, "switch", "-q", "-c", name)
    (repo / path).write_text(path + "\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", path)
    git(repo, "switch", "-q", "main")


def _session(name: str) -> SessionResult:
    return SessionResult(id=f"{name}-abc123", task_id=name, branch=f"agent/{name}/abc123",
                         status=SessionStatus.SUCCEEDED)


def test_merge_queue_gates_each_merge_on_top_of_the_ones_before_and_a_refusal_keeps_main(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "r")
    _branch(repo, "agent/a/abc123", "a.txt")
    _branch(repo, "agent/b/abc123", "b.txt")
    before = git(repo, "rev-parse", "main").strip()
    seen: list[str] = []

    def gate(session: SessionResult, commit: str) -> GateResult | None:
        seen.append(commit)
        if session.task_id == "a":
            return None  # no gate for this one
        return GateResult(command=["check"], verdict="failed", tested_commit=commit)

    a, b = _session("a"), _session("b")
    merge_branches([a, b], "auto", MainRepo(repo), "main", gate=gate)
    assert a.merge.status == "merged" and a.merge.gate is None
    assert b.merge.status == "gate_failed" and b.merge.gate is not None
    # b was tested on top of a's merge; main holds a's merge only.
    assert git(repo, "rev-parse", f"{seen[1]}^1").strip() == a.merge.merge_commit
    assert git(repo, "rev-parse", "main").strip() == a.merge.merge_commit
    assert git(repo, "rev-parse", "main^1").strip() == before



def test_the_gate_verdict_is_shown_escaped_in_the_summary_table_and_the_html_report() -> None:
    from datetime import UTC, datetime

    from rich.console import Console

    from runtime.cli.html_report import render_html
    from runtime.cli.live_view import summary_table
    from runtime.models import MergeInfo, RunReport

    gate = GateResult(command=["pytest", "-q"], verdict="failed", status="failed", exit_code=1,
                      reason="exit code 1", duration_s=2.5,
                      output_tail="<script>x</script>\n1 failed, 3 passed\n")
    result = SessionResult(id="t-abc123", task_id="t", branch="agent/t/abc123",
                           status=SessionStatus.SUCCEEDED,
                           merge=MergeInfo(status="gate_failed", gate=gate))
    report = RunReport(run_id="r1", repo="/src/app", base_commit="c" * 40, target="main",
                       merge="auto", started_at=datetime(2025, 1, 1, tzinfo=UTC),
                       sessions=[result])
    assert report.exit_code() == 1
    console = Console(width=200, record=True)
    console.print(summary_table(report))
    assert "gate_failed (gate failed: exit code 1)" in console.export_text()
    page = render_html(report, {}, {})
    assert "Merge gate" in page and "pytest -q" in page and "1 failed, 3 passed" in page
    assert "<script>x" not in page and "gate failed" in page
