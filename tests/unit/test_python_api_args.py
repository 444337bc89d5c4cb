"""The original design's Python API, as a user writes it, works next to the typed one (no
Docker: construction, argument checks, and merges of real git branches)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from runtime import (
    AgentCoordinator,
    IsolatedAgentSession,
    ResourceLimits,
    RunConfig,
    Task,
    merge_agent_results,
)
from runtime.cli.main import main
from runtime.errors import ConfigError, SessionError
from runtime.models import SessionResult, SessionStatus
from runtime.run.api_args import as_tasks
from runtime.state.store import Store
from tests.unit.test_merge import commit_branch, git, make_repo


def test_resource_limits_take_the_designs_names_and_sizes_as_strings() -> None:
    limits = ResourceLimits(max_memory="2GB", max_cpu_percent=150, max_execution_time="30m",
                            max_disk_usage="1.5GiB")
    assert (limits.memory_mb, limits.cpu_percent, limits.time_seconds, limits.disk_mb) == \
        (2048, 150, 1800, 1536)
    assert ResourceLimits(max_memory=512).memory_mb == 512  # a bare number is MiB
    assert ResourceLimits(max_execution_time="2h").time_seconds == 7200
    assert limits.model_dump()["memory_mb"] == 2048  # fields keep agentrt's names
    assert Task(id="t", command=["true"], resource_limits={"max_memory": "1GB"}) \
        .resource_limits.memory_mb == 1024


@pytest.mark.parametrize(("fields", "message"), [
    ({"memory_mb": 512, "max_memory": 512}, "same limit"),
    ({"max_memory": "lots"}, "not a size"),
    ({"max_memory": "0MB"}, "greater than 0"),
    ({"max_memory": "2TB"}, "less than or equal"),
    ({"max_execution_time": "soon"}, "not a duration"),
    ({"memory_mb": "512"}, "valid integer"),  # agentrt's own names stay strict
    ({"max_cpu_percent": 1.5}, "valid integer"),
])
def test_resource_limits_refuse_bad_design_values(fields: dict[str, object],
                                                  message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ResourceLimits(**fields)  # type: ignore[arg-type]


def test_run_config_takes_the_designs_concurrent_config() -> None:
    concurrent_config = {"max_concurrent_agents": 3, "isolation_strategy": "git_worktree",
                         "execution_mode": "process", "auto_merge": True}
    config = RunConfig(**concurrent_config)  # type: ignore[arg-type]
    assert (config.merge, config.isolation_strategy, config.execution_mode) == \
        ("auto", "git_worktree", "process")
    assert RunConfig(auto_merge=False).merge == "review"  # type: ignore[call-arg]
    assert RunConfig(isolation_strategy="directory").isolation_strategy == "directory"
    assert "auto_merge" not in config.model_dump()  # stored as `merge`


@pytest.mark.parametrize(("fields", "message"), [
    ({"execution_mode": "thread"}, "execution_mode \"thread\" is not supported: an agent is "
                                   "isolated by its own container"),
    ({"auto_merge": True, "merge": "none"}, "contradicts"),
    ({"auto_merge": "yes"}, "true or false"),
    ({"isolation_strategy": "copy"}, "'git_worktree' or 'directory'"),
])
def test_run_config_refuses_what_agentrt_cannot_do(fields: dict[str, object],
                                                   message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunConfig(**fields)  # type: ignore[arg-type]


def test_run_agents_inputs_tasks_dicts_and_prompts_become_tasks() -> None:
    typed = Task(id="typed", command=["true"])
    tasks = as_tasks([{"id": "a", "prompt": "echo a > a.txt"}, "Write tests!", typed,
                      "write tests", {"prompt": "x", "command": ["make"]}])
    assert [t.id for t in tasks] == ["a", "write-tests", "typed", "write-tests-2", "x"]
    assert tasks[0].agent is None and tasks[1].agent is None  # no default agent: none given
    assert tasks[1].prompt == "Write tests!"
    assert tasks[2] is typed
    assert tasks[4].agent is None and tasks[4].command == ["make"]
    assert as_tasks(["fix it"], "claude-code")[0].agent == "claude-code"


@pytest.mark.parametrize(("tasks", "message"), [
    ("just one string", "must be a list"),
    ([42], r"tasks\[0\] must be a Task, a dict or a prompt string, not int"),
    ([{"id": "a", "promt": "typo"}], r"tasks\[0\]: field promt: unknown key"),
    ([{"id": "Bad Id", "prompt": "x"}], r"tasks\[0\]: field id"),
])
def test_run_agents_inputs_are_refused_with_config_errors(tasks: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        as_tasks(tasks)


def test_coordinator_arguments_are_checked(repo: Path) -> None:
    coordinator = AgentCoordinator(max_concurrent=5, config={"auto_merge": True,
                                                             "resource_limits": {
                                                                 "max_memory": "256MB"}},
                                   repo=repo)
    assert coordinator.config.max_concurrent_agents == 5
    assert coordinator.config.merge == "auto"
    assert coordinator.config.resource_limits.memory_mb == 256
    for kwargs, message in [
        ({"max_concurrent": "5"}, "max_concurrent must be an integer, not str"),
        ({"max_concurrent": 0}, "greater than 0"),
        ({"config": Path("x")}, "config must be a RunConfig or a dict, not PosixPath"),
        ({"config": {"execution_mode": "thread"}}, "not supported"),
        ({"repo": 7}, "repo must be a path"),
        ({"default_agent": "gpt"}, "default_agent must be one of"),
    ]:
        with pytest.raises(ConfigError, match=message):
            AgentCoordinator(**{"repo": repo, **kwargs})  # type: ignore[arg-type]


def test_session_takes_an_id_string_base_workspace_and_limits(repo: Path) -> None:
    limits = ResourceLimits(max_memory="2GB", max_disk_usage=64)
    session = IsolatedAgentSession("fix-parser", base_workspace=repo, limits=limits)
    assert session.task.id == "fix-parser"
    assert session.repo.root == repo.resolve()
    assert session.limits.memory_mb == 2048 and session.limits.disk_mb == 64
    assert session.branch.startswith("agent/fix-parser/")
    # The design's positional form, and the typed one, name the same repository.
    assert IsolatedAgentSession("x", repo).repo.root == repo.resolve()  # type: ignore[arg-type]
    typed = IsolatedAgentSession(Task(id="t", command=["true"]), RunConfig(), repo=str(repo))
    assert typed.config == RunConfig()
    with pytest.raises(SessionError, match="not prepared"):
        _ = session.workspace
    with pytest.raises(SessionError, match="not prepared"):
        _ = session.db_path


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((42,), {}, "task must be a Task, a dict or a session id string, not int"),
    (("Not An Id",), {}, "field id"),
    (("x",), {"repo": ".", "base_workspace": "."}, "give the repository once"),
    (("x", "."), {"base_workspace": "."}, "give the repository once"),
    (("x",), {"limits": 2048}, "limits must be a ResourceLimits or a dict, not int"),
    (("x",), {"config": ["merge"]}, "config must be a RunConfig or a dict, not list"),
    (("x",), {"base_workspace": 3}, "base_workspace must be a path"),
])
def test_session_arguments_are_refused_with_config_errors(
        repo: Path, args: tuple[object, ...], kwargs: dict[str, object], message: str) -> None:
    if not {"repo", "base_workspace"} & set(kwargs) and len(args) < 2:
        kwargs["base_workspace"] = repo
    with pytest.raises(ConfigError, match=message):
        IsolatedAgentSession(*args, **kwargs)  # type: ignore[arg-type]


def test_merge_infers_the_repository_from_sessions(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    sessions = [IsolatedAgentSession(name, base_workspace=repo) for name in ("one", "two")]
    for number, session in enumerate(sessions):
        commit_branch(repo, session.branch, {f"new{number}.txt": "x\n"})
        session.result.status = SessionStatus.SUCCEEDED
    merged = merge_agent_results(sessions, strategy="auto")
    assert [r.merge.status for r in merged] == ["merged", "merged"]
    assert merged[0] is sessions[0].result
    assert git(repo, "show", "main:new1.txt") == "x"
    with pytest.raises(ConfigError, match="pass repo="):
        merge_agent_results([s.result for s in sessions], "review")
    with pytest.raises(ConfigError, match="not PosixPath"):
        merge_agent_results([repo], "review")  # type: ignore[list-item]


def test_a_merge_from_python_is_recorded_for_agentrt_report(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    results = []
    with Store(repo / ".git" / "agentrt" / "state.db") as store:
        store.create_run("r1", str(repo), git(repo, "rev-parse", "main"), "main", "none",
                         "{}", None, None, None)
        for name in ("a", "b"):
            branch = f"agent/{name}/abc123"
            commit_branch(repo, branch, {f"{name}.txt": "x\n"})
            result = SessionResult(id=f"{name}-abc123", task_id=name, branch=branch,
                                   status=SessionStatus.SUCCEEDED)
            store.upsert_session(result, "r1")
            results.append(result)
        store.finish_run("r1", "finished")
    merge_agent_results(results, "auto", repo)
    out = CliRunner().invoke(main, ["report", "r1", "--json", "--repo", str(repo)])
    assert out.exit_code == 0, out.output
    import json

    report = json.loads(out.output)
    assert report["merge"] == "auto"
    assert [s["merge"]["status"] for s in report["sessions"]] == ["merged", "merged"]
    assert report["sessions"][1]["merge"]["merge_commit"] == git(repo, "rev-parse", "main")
