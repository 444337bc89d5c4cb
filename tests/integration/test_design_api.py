"""The design's session and coordinator forms do what they say on a real engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime import AgentCoordinator, IsolatedAgentSession, ResourceLimits
from runtime.errors import ConfigError
from tests.conftest import git

LIMITS = ResourceLimits(max_memory="256MB", max_disk_usage="64MB", max_execution_time="2m")


@pytest.mark.docker
def test_a_session_from_an_id_runs_the_command_given_to_run_and_cleans_up(
        repo: Path, docker_client: object) -> None:
    with IsolatedAgentSession("fix-parser", base_workspace=repo, limits=LIMITS) as session:
        workspace, db_path = session.workspace, session.db_path
        assert (workspace / "README.md").read_text() == "# demo\n"  # the checkout, on the host
        assert db_path is not None and db_path.is_file()
        result = session.run(["sh", "-c", "echo hi > x.txt; test -w \"$AGENT_DB\""])
    assert result.status.value == "succeeded", result.reason
    assert git(repo, "show", f"{session.branch}:x.txt") == "hi\n"
    assert not workspace.exists() and not db_path.exists()
    assert session.task.command == ["sh", "-c", "echo hi > x.txt; test -w \"$AGENT_DB\""]


@pytest.mark.docker
def test_a_session_from_an_id_without_a_command_says_so(repo: Path,
                                                        docker_client: object) -> None:
    session = IsolatedAgentSession("idle", repo, limits=LIMITS)  # type: ignore[arg-type]
    with session, pytest.raises(ConfigError, match=r"no command to run"):
        session.run()
    assert not session.workspace.exists()


@pytest.mark.docker
def test_the_coordinator_runs_dicts_and_prompt_strings_with_the_agent_it_is_given(
        repo: Path, docker_client: object) -> None:
    concurrent_config = {"isolation_strategy": "worktree", "auto_merge": True,
                         "execution_mode": "process", "agent": "shell",
                         "resource_limits": {"max_memory": "256MB", "max_disk_usage": 64}}
    report = AgentCoordinator(max_concurrent=2, config=concurrent_config,
                              repo=repo).run_agents(
        [{"id": "a", "prompt": "echo a > a.txt"}, "echo from a prompt > p.txt"])
    assert [(s.task_id, s.status.value, s.merge.status) for s in report.sessions] == \
        [("a", "succeeded", "merged"), ("echo-from-a-prompt-p-txt", "succeeded", "merged")]
    assert (repo / "p.txt").read_text() == "from a prompt\n"
