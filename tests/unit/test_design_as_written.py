"""The design's code as it is written: its config dict, its limits class and names, prompts
that need an agent, and refusals that name the field, all before anything starts (no Docker)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from runtime import AgentCoordinator, IsolatedAgentSession, ResourceLimits, RunConfig, Task
from runtime.config import parse_task_file
from runtime.engine.images import build_hint
from runtime.errors import ConfigError
from runtime.run.preflight import check_run
from runtime.text import strip_ansi, terminal_safe
from tests.merge_helpers import make_repo

CONCURRENT_CONFIG = {
    "max_concurrent_agents": 5,
    "isolation_strategy": "worktree",
    "execution_mode": "process",
    "auto_merge": False,
}


def test_the_designs_concurrent_config_is_taken_with_its_worktree_name() -> None:
    config = RunConfig(**CONCURRENT_CONFIG)  # type: ignore[arg-type]
    assert (config.isolation_strategy, config.merge) == ("git_worktree", "review")
    assert "worktree" not in config.model_dump_json().replace("git_worktree", "")
    assert parse_task_file({"run": {"isolation_strategy": "worktree"},
                            "tasks": [{"id": "t", "command": ["true"]}]}) \
        .run.isolation_strategy == "git_worktree"


@pytest.mark.parametrize(("build", "field"), [
    (lambda: RunConfig(**{**CONCURRENT_CONFIG, "isolation_strategy": "copy"}),
     "isolation_strategy"),
    (lambda: RunConfig(max_concurrent_agents=0), "max_concurrent_agents"),
    (lambda: RunConfig(merge_strategy="auto"), "merge_strategy"),  # type: ignore[call-arg]
    (lambda: ResourceLimits(max_memory="lots"), "(top level)"),
    (lambda: ResourceLimits(pids=0), "pids"),
    (lambda: Task(id="Bad Id", command=["true"]), "id"),
    (lambda: Task(id="t", command=[]), "command"),
])
def test_every_constructor_error_is_a_config_error_naming_the_field(build: object,
                                                                   field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build()  # type: ignore[operator]
    assert not isinstance(caught.value, ValidationError)
    assert f"field {field}:" in str(caught.value), caught.value


def test_the_limits_read_under_the_designs_names() -> None:
    limits = ResourceLimits(max_memory="2GB", max_cpu_percent=150, max_execution_time="30m",
                            max_disk_usage="10GB")
    assert (limits.max_memory, limits.max_cpu_percent, limits.max_execution_time,
            limits.max_disk_usage) == (2048, 150, 1800, 10240)
    assert ResourceLimits().max_memory == ResourceLimits().memory_mb == 1024
    with pytest.raises(AttributeError, match="max_swap"):
        _ = limits.max_swap  # type: ignore[attr-defined]


class DesignLimits(ResourceLimits):
    """The design's own limits class: its defaults under its names."""

    max_memory: str = "2GB"
    max_cpu_percent: int = 50
    max_execution_time: int = 3600
    max_disk_usage: str = "10GB"


def test_a_limits_subclass_with_the_designs_defaults_is_honoured(tmp_path: Path) -> None:
    limits = DesignLimits()
    assert (limits.memory_mb, limits.cpu_percent, limits.time_seconds, limits.disk_mb) == \
        (2048, 50, 3600, 10240)
    assert limits.max_memory == "2GB"  # the subclass's own field, as it declared it
    assert DesignLimits(max_memory="4GB").memory_mb == 4096
    with pytest.raises(ConfigError, match="same limit"):
        DesignLimits(memory_mb=512, max_memory="1GB")
    # Taken for its values wherever limits go: a run's defaults, a session's limits.
    assert RunConfig(resource_limits=limits).resource_limits == \
        ResourceLimits(memory_mb=2048, disk_mb=10240)
    session = IsolatedAgentSession("s", make_repo(tmp_path), limits=limits)  # type: ignore[arg-type]
    assert type(session.limits) is ResourceLimits and session.limits.disk_mb == 10240

    class Typed(ResourceLimits):
        memory_mb: int = 300
    assert RunConfig(resource_limits=Typed()).resource_limits.memory_mb == 300


def test_a_named_session_is_the_id_the_caller_passes(tmp_path: Path) -> None:
    session = IsolatedAgentSession("fix-parser", make_repo(tmp_path))  # type: ignore[arg-type]
    assert session.session_id == session.result.id == "fix-parser"
    assert session.branch.startswith("agent/fix-parser/") and len(session.branch) == 23
    assert session.session_dir.name == "fix-parser"


def test_prompts_without_an_agent_are_refused_before_anything_starts(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    coordinator = AgentCoordinator(repo=repo, client=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"task 'add-a-feature': field command: .*nothing "
                                          r"would run its prompt.*\[run\] agent"):
        coordinator.run_agents(["Add a feature"])
    assert not (repo / ".git" / "agentrt" / "state.db").exists()  # no run was recorded
    with pytest.raises(ConfigError, match="task 'typed'"):
        coordinator.run_agents([Task(id="typed", prompt="Add a feature")])


def test_run_agent_or_the_coordinators_default_runs_prompts(tmp_path: Path) -> None:
    parsed = parse_task_file({"run": {"agent": "aider"}, "tasks": [
        {"id": "a", "prompt": "Add a feature"},
        {"id": "b", "prompt": "x", "agent": "codex"},
        {"id": "c", "command": ["make"]}]})
    assert [(t.agent, t.command) for t in parsed.tasks] == \
        [("aider", None), ("codex", None), (None, ["make"])]
    with pytest.raises(ConfigError, match="task 'a': field command"):
        parse_task_file({"tasks": [{"id": "a", "prompt": "Add a feature"}]})
    repo = make_repo(tmp_path)
    assert AgentCoordinator(config={"agent": "claude-code"}, repo=repo).default_agent == \
        "claude-code"
    assert AgentCoordinator(config={"agent": "claude-code"}, repo=repo,
                            default_agent="shell").default_agent == "shell"


@pytest.mark.parametrize(("run", "message"), [
    ({"egress_allow": ["api.example.com"]},
     r"\[run\]: field egress_allow: only used with network = \"allowlist\", which no task "
     r"has \(tasks 't'\)"),
    ({"egress_allow": ["api.example.com"], "network": "bridge"}, r"\[run\]: field egress_allow"),
    ({"egress_allow": ["api.example.com"], "egress_networks": ["models"]},
     r"\[run\]: field egress_allow"),
    ({"egress_networks": ["models"]}, r"\[run\]: field egress_networks"),
])
def test_egress_keys_without_an_allowlist_are_refused(run: dict[str, object],
                                                      message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_task_file({"run": run, "tasks": [{"id": "t", "command": ["true"]}]})
    # A task with the allowlist uses the run's keys: accepted.
    parse_task_file({"run": {"egress_allow": ["api.example.com"], **run},
                     "tasks": [{"id": "t", "command": ["true"], "network": "allowlist"}]})


def test_an_unmergeable_auto_merge_target_is_refused_by_preflight_before_the_engine(
        tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    (repo / "keep.txt").write_text("unsaved\n")
    from runtime.git.safe_git import MainRepo

    def no_engine() -> object:
        raise AssertionError("the engine was asked before the refusal")

    task = Task(id="t", command=["true"])
    for config, found in ((RunConfig(merge="auto"), "uncommitted changes"),
                          (RunConfig(merge="auto", target="nope"), "'nope' does not exist")):
        with pytest.raises(ConfigError, match=f"field merge: .*{found}"):
            check_run(no_engine, MainRepo(repo), config, [task])  # type: ignore[arg-type]


@pytest.mark.parametrize(("ref", "command"), [
    ("agentrt/claude-code:latest", "`agentrt images build claude-code`"),
    ("agentrt/aider:latest", "`agentrt images build aider`"),
    ("agentrt/base:latest", "`agentrt images build base`"),
    ("python:3.12", "`docker pull python:3.12`"),
])
def test_the_missing_image_hint_names_the_exact_command(ref: str, command: str) -> None:
    assert command in build_hint(ref)


def test_tool_output_loses_its_colour_sequences_before_it_is_shown() -> None:
    line = "\x1b[91mE: Unable to locate package nope\n\x1b[0m"
    assert terminal_safe(strip_ansi(line)) == "E: Unable to locate package nope\\n"
    assert strip_ansi("a\x1b]0;title\x07b\x1b[2J\x1b[1;31mc\x9b0m") == "abc"
    assert strip_ansi("[bold] \\x1b stays") == "[bold] \\x1b stays"
