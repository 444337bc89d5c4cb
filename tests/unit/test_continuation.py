"""What `agentrt continue` and interactive sessions decide, as pure functions: when a session
may be continued (and the message when not), the carry volume's name, the container of an
interactive session, the task field and the `-i` of a one-off run."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from docker.types import Mount

from runtime.config import ResourceLimits, Task, parse_task_file
from runtime.engine.carry import carry_name
from runtime.engine.container import (
    ENTRYPOINT,
    ENTRYPOINT_TTY,
    ContainerPlan,
    container_spec,
    entry_command,
)
from runtime.errors import ConfigError
from runtime.models import Manifest, SessionResult, SessionStatus, WorkState
from runtime.presets import resolve_command
from runtime.run.continuation import continuation_problem
from runtime.state.schema import SessionRow

NOW = datetime(2026, 12, 8, tzinfo=UTC)


def row(status: SessionStatus = SessionStatus.SUCCEEDED, work: WorkState = WorkState.HOME,
        started: bool = True, manifest: bool = True) -> SessionRow:
    result = SessionResult(id="fix-abc123", task_id="fix", branch="agent/fix/abc123",
                           status=status, work=work, base_commit="b" * 40,
                           started_at=NOW if started else None)
    man = Manifest(image="i", image_digest=None, base_commit="b" * 40,
                   task={"id": "fix", "prompt": "p"}, limits=ResourceLimits(), network="none",
                   runtime="runc", database_strategy="per_agent")
    fields: dict[str, Any] = dict(
        id=result.id, run_id="r1", task_id="fix", branch=result.branch, status=status,
        result_json=result.model_dump_json(),
        manifest_json=man.model_dump_json() if manifest else None, container_id=None,
        volume_path=None, mount_path=None, loop_device=None, db_path=None, deadline=None,
        owner_pid=None, owner_start_time=None, created_at=0.0, updated_at=0.0, result=result)
    return SessionRow(**fields)


def test_a_finished_session_with_its_work_home_can_be_continued() -> None:
    assert continuation_problem(row(), "c" * 40, []) is None
    # Files-only work is on the branch too; so is a session that changed nothing.
    assert continuation_problem(row(work=WorkState.FILES_ONLY), "c" * 40, []) is None
    assert continuation_problem(row(status=SessionStatus.FAILED), "c" * 40, []) is None


@pytest.mark.parametrize(("kwargs", "head", "live", "words"), [
    ({"status": SessionStatus.RUNNING}, "c" * 40, [], "is still running"),
    ({}, None, [], "the branch agent/fix/abc123 of session fix-abc123 is gone"),
    ({"work": WorkState.KEPT}, "c" * 40, [], "is not home (kept): `agentrt recover fix-abc123`"),
    ({"work": WorkState.REFUSED}, "c" * 40, [], "is not home (refused)"),
    ({"work": WorkState.LOST}, "c" * 40, [], "is not home (lost)"),
    ({"started": False, "status": SessionStatus.SKIPPED}, "c" * 40, [], "never ran (skipped)"),
    ({}, "c" * 40, ["fix-def456"], "fix-def456 is already working on agent/fix/abc123"),
])
def test_what_cannot_be_continued_is_refused_with_the_reason(
        kwargs: dict[str, Any], head: str | None, live: list[str], words: str) -> None:
    problem = continuation_problem(row(**kwargs), head, live)
    assert problem is not None and words in problem, problem


def test_one_carry_volume_per_branch_and_repository() -> None:
    a = carry_name("/src/app", "agent/fix/abc123")
    assert a == carry_name("/src/app", "agent/fix/abc123")
    assert a != carry_name("/src/other", "agent/fix/abc123")
    assert a != carry_name("/src/app", "agent/fix/abc124")
    # A valid volume name whatever the branch holds.
    assert a.startswith("agentrt-carry-") and a.replace("-", "").isalnum()


def plan(tty: bool) -> ContainerPlan:
    return ContainerPlan(session_id="a-123456", run_id="r1", image="agentrt/base:latest",
                         command=["sh"], limits=ResourceLimits(), uid=1000, gid=1000,
                         mounts=(Mount("/workspace", "/s", type="bind"),), tty=tty)


def test_an_interactive_session_gets_a_tty_and_stdin_and_the_rest_unchanged() -> None:
    batch, live = container_spec(plan(False)), container_spec(plan(True))
    assert (batch["tty"], batch["stdin_open"]) == (False, False)
    assert (live["tty"], live["stdin_open"]) == (True, True)
    # Same limits, hardening, network and mounts as a batch session.
    same = {k: v for k, v in batch.items() if k not in ("tty", "stdin_open", "command")}
    assert same == {k: v for k, v in live.items() if k not in ("tty", "stdin_open", "command")}
    # timeout(1) keeps the agent in the terminal's foreground (else its read stops it).
    assert entry_command(plan(False))[2] == ENTRYPOINT and "--foreground" not in ENTRYPOINT
    assert entry_command(plan(True))[2] == ENTRYPOINT_TTY
    assert "exec timeout --foreground -k" in ENTRYPOINT_TTY


def test_interactive_is_a_task_field_and_presets_open_their_tui() -> None:
    parsed = parse_task_file({"tasks": [{"id": "t", "agent": "claude-code", "prompt": "hi",
                                         "interactive": True}]}, "f.toml")
    task = parsed.tasks[0]
    assert task.interactive is True
    argv = resolve_command(task)
    assert argv[0] == "claude" and "-p" not in argv and argv[-1] == "hi"
    assert "-p" not in resolve_command(task.model_copy(update={"prompt": ""}))
    assert "" not in resolve_command(task.model_copy(update={"prompt": ""}))
    codex = resolve_command(Task(id="t", agent="codex", prompt="hi", interactive=True))
    assert codex[0] == "codex" and "exec" not in codex
    aider = resolve_command(Task(id="t", agent="aider", prompt="hi", interactive=True))
    assert "--message" not in aider
    # A command runs as written, with a terminal.
    own = Task(id="t", command=["sh"], interactive=True)
    assert resolve_command(own) == ["sh"]
    with pytest.raises(ConfigError, match="interactive"):
        parse_task_file({"tasks": [{"id": "t", "command": ["sh"], "interactive": "sometimes"}]},
                        "f.toml")


def test_run_dash_i_is_an_option_of_run() -> None:
    from click.testing import CliRunner

    from runtime.cli.main import main

    out = CliRunner().invoke(main, ["run", "--help"]).output
    assert "-i, --interactive" in out
    assert "attach" in CliRunner().invoke(main, ["--help"]).output
    assert "continue" in CliRunner().invoke(main, ["--help"]).output




def test_an_interactive_preset_gets_its_first_run_answers_in_a_fresh_data_dir(
        tmp_path: Path) -> None:
    import json as _json

    from runtime.run.agent_state import seed_tui_state

    claude = Task(id="t", agent="claude-code", prompt="hi", interactive=True)
    seed_tui_state(claude, tmp_path, os.getuid(), os.getgid())
    written = _json.loads((tmp_path / ".claude" / ".claude.json").read_text())
    assert written["hasCompletedOnboarding"] is True
    assert written["projects"]["/workspace"]["hasTrustDialogAccepted"] is True
    assert (tmp_path / ".claude" / ".claude.json").stat().st_mode & 0o777 == 0o600
    # Nothing for a batch task, a command, a preset without TUI answers, or no host dir.
    for task in (claude.model_copy(update={"interactive": False}),
                 Task(id="t", command=["sh"], interactive=True),
                 Task(id="t", agent="codex", interactive=True)):
        other = tmp_path / task.model_dump_json().__hash__().__str__()
        other.mkdir()
        seed_tui_state(task, other, os.getuid(), os.getgid())
        assert list(other.iterdir()) == []
    seed_tui_state(claude, None, 0, 0)
    # A link planted where the file goes is never followed.
    planted = tmp_path / "planted"
    (planted / ".claude").mkdir(parents=True)
    (planted / ".claude" / ".claude.json").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        seed_tui_state(claude, planted, os.getuid(), os.getgid())
    assert not (tmp_path / "elsewhere").exists()


def test_an_interactive_agent_is_idle_since_it_last_used_cpu() -> None:
    from runtime.cli.attach import idle_seconds
    from runtime.state.schema import Sample

    def s(ts: float, cpu: float) -> Sample:
        return Sample(session_id="a", ts=ts, memory_bytes=0, cpu_seconds=cpu, disk_bytes=0)

    assert idle_seconds([], 100.0) is None
    busy_then_quiet = [s(10, 0.0), s(11, 0.5), s(12, 0.9), s(13, 0.901), s(14, 0.902)]
    assert idle_seconds(busy_then_quiet, 20.0) == 8.0
    assert idle_seconds([s(10, 0.0), s(11, 0.001)], 15.0) == 5.0
    assert idle_seconds([s(10, 0.0), s(11, 1.0)], 11.0) == 0.0


def test_a_data_dir_left_as_made_needs_no_carry(tmp_path: Path) -> None:
    import sqlite3

    from runtime.databases.sqlite import create_sqlite
    from runtime.run.continuation import untouched

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    create_sqlite(fresh, os.getuid(), os.getgid())
    assert untouched(fresh)
    used = tmp_path / "used"
    used.mkdir()
    db = create_sqlite(used, os.getuid(), os.getgid())
    with sqlite3.connect(db.host_path) as conn:
        conn.execute("CREATE TABLE t (x)")
    assert not untouched(used)
    cli = tmp_path / "cli"
    cli.mkdir()
    create_sqlite(cli, os.getuid(), os.getgid())
    (cli / ".claude").mkdir()
    assert not untouched(cli)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "agent.db").symlink_to(fresh / "agent.db")
    assert not untouched(linked)
    assert not untouched(tmp_path / "missing")
