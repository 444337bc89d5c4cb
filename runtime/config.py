"""What users write: the task file's models (``TaskFile``, ``RunConfig``) and its loading.

``Task`` (:mod:`runtime.task`) and ``ResourceLimits`` (:mod:`runtime.limits`) are importable
from here too.

Every model forbids unknown keys. :func:`load_task_file` turns any problem into one
:class:`~runtime.errors.ConfigError` whose message names the file, the task and the field.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from runtime.environments import Environment, Service, check_command, check_services
from runtime.errors import ConfigError
from runtime.limits import (
    ConcurrentAgents,
    DiskMb,
    RadarSeconds,
    StrictModel,
    WarmPool,
    plain_limits,
    validation_message,
)
from runtime.limits import LimitOverrides as LimitOverrides
from runtime.limits import ResourceLimits as ResourceLimits
from runtime.task import (
    AgentPreset,
    NetworkMode,
    check_egress_allow,
    check_egress_networks,
    no_nul,
)
from runtime.task import Task as Task

MergeStrategy = Literal["review", "auto", "none"]
#: Where sessions run: one Docker engine, or the services of a Docker Swarm.
EngineKind = Literal["docker", "swarm"]
DatabaseStrategy = Literal["per_agent", "shared"]
ContainerRuntime = Literal["runc", "runsc"]
IsolationStrategy = Literal["git_worktree", "directory"]
ExecutionMode = Literal["process", "thread"]


_REF_FORBIDDEN = frozenset(" ~^:?*[\\")


def branch_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid branch name (``git check-ref-format --branch``), or None.

    Pure: the rules of git's ``check_refname_format``, plus no leading ``-`` (an option to git).
    """
    if not name or len(name.encode()) > 255:
        return "empty or longer than 255 bytes"
    if name.startswith("-"):
        return "starts with '-'"
    if name == "@" or "@{" in name:
        return "is '@' or contains '@{'"
    if any(ord(c) < 32 or c == "\x7f" or c in _REF_FORBIDDEN for c in name):
        return "contains a control character, a space or one of ~^:?*[\\"
    if ".." in name:
        return "contains '..'"
    if name.startswith("/") or name.endswith(("/", ".")) or "//" in name:
        return "has an empty component or ends with '/' or '.'"
    for part in name.split("/"):
        if part.startswith(".") or part.endswith(".lock"):
            return "a component starts with '.' or ends with '.lock'"
    return None


class RunConfig(StrictModel):
    """Settings of a whole run: the ``[run]`` table of the task file."""

    max_concurrent_agents: ConcurrentAgents = Field(
        5, description="Containers running at once, at most."
    )
    warm_pool: WarmPool = Field(
        2, description="Sessions prepared ahead (volume, checkout, container created but not "
        "started) for tasks waiting for a slot; 0: off.")
    engine_timeout: int = Field(
        60, ge=5, le=86400, description="Seconds the engine may stop answering before its "
        "sessions end as crashed (engine lost), their work kept.")
    base: str = Field("HEAD", description="Commit-ish every session starts from.")
    target: str | None = Field(None, description="Branch merges go into; default: checked out.")
    merge: MergeStrategy = Field("review", description="review | auto | none.")
    cleanup_on_complete: bool = Field(True, description="Remove containers and volumes at the end.")
    image: str = Field("agentrt/base:latest", description="Default image for every task.")
    agent: AgentPreset | None = Field(
        None, description="The agent preset that runs the prompt of every task that names "
        "neither a command nor an agent; none: such a task is refused.")
    network: NetworkMode = Field("none", description="none | bridge | allowlist.")
    egress_allow: list[str] = Field(
        default_factory=list, description="With network = \"allowlist\": the hosts (host or "
        "host:port) sessions may reach through the run's egress proxy.")
    egress_networks: list[str] = Field(
        default_factory=list, description="Existing Docker networks the egress proxy joins "
        "(e.g. where a private model server runs).")
    database_strategy: DatabaseStrategy = Field("per_agent", description="per_agent | shared.")
    database_url: str | None = Field(
        None,
        description="PostgreSQL admin URL for the shared strategy; default: agentrt starts one.",
    )
    runtime: ContainerRuntime = Field("runc", description="runc | runsc (gVisor).")
    engine: EngineKind = Field(
        "docker", description="docker: the engine DOCKER_HOST (or the context) names, local or "
        "remote; swarm: sessions as services of the Swarm that engine manages.")
    conflict_radar_seconds: RadarSeconds = Field(
        5, description="How often live sessions are compared for overlapping changes; 0: off."
    )
    max_import_mb: DiskMb = Field(
        1024,
        description="Largest bundle of work a session may bring home, MiB; larger is refused.")
    max_file_mb: DiskMb = Field(
        100,
        description="Largest single file a session may bring home, MiB; larger is refused.")
    resource_limits: ResourceLimits = Field(
        default_factory=ResourceLimits, description="Defaults for every task."
    )
    volumes_dir: Path | None = Field(
        None,
        description="Absolute directory for session volumes (each reserves disk_mb there); "
        "default: the repository's .git/agentrt. AGENTRT_VOLUMES_DIR, if set, wins.",
    )
    isolation_strategy: IsolationStrategy = Field(
        "git_worktree",
        description="git_worktree (or the design's name, worktree): the repository's own "
        "branches; directory: a folder that is no git repository, kept in a private "
        "repository in agentrt's state directory.",
    )
    execution_mode: ExecutionMode = Field(
        "process", description="process (the only mode): each agent is its own process tree "
        "in its own container.")
    environment: Environment | None = Field(
        None, description="The project's toolchain every task runs in (docs/environments.md).")
    services: list[Service] = Field(
        default_factory=list, description="Containers started for each session on its own "
        "internal network, reached by name.")
    merge_gate: list[str] | None = Field(
        None, description="A command (argv) run on each session's would-be merge result, in a "
        "fresh session of the run's environment, before merge = \"auto\" lands it; the work "
        "lands only if it exits 0 (docs/merging.md).")
    delete_merged_branches: bool = Field(
        False, description="After an automatic merge, delete the branches it merged (the merge "
        "commits keep the work; `agentrt gc --merged-branches` does it later).")
    merge_gate_limits: LimitOverrides = Field(
        default_factory=LimitOverrides, description="The gate session's limits: overrides of "
        "resource_limits.")

    @model_validator(mode="before")
    @classmethod
    def _auto_merge(cls, data: Any) -> Any:
        # The design's `auto_merge: bool` is input only: it sets `merge`, which is stored.
        if not isinstance(data, dict) or "auto_merge" not in data:
            return data
        data = dict(data)
        flag = data.pop("auto_merge")
        if not isinstance(flag, bool):
            raise ValueError("auto_merge must be true or false")
        wanted = "auto" if flag else "review"
        if data.get("merge", wanted) != wanted:
            raise ValueError(f"auto_merge = {str(flag).lower()} contradicts merge = "
                             f"{data['merge']!r}: give one of them")
        data["merge"] = wanted
        return data

    @field_validator("resource_limits")
    @classmethod
    def _plain_limits(cls, value: ResourceLimits) -> ResourceLimits:
        # A subclass (the design's own limits class) is taken for its values: downstream,
        # manifests and reports see agentrt's model.
        return plain_limits(value)

    @field_validator("isolation_strategy", mode="before")
    @classmethod
    def _worktree_alias(cls, value: Any) -> Any:
        # The design writes "worktree"; it is stored under agentrt's name.
        return "git_worktree" if value == "worktree" else value

    @field_validator("execution_mode")
    @classmethod
    def _check_execution_mode(cls, value: str) -> str:
        if value == "thread":
            raise ValueError(
                "execution_mode \"thread\" is not supported: an agent is isolated by its own "
                "container (memory, CPU, disk, network), which a thread cannot have; use "
                "\"process\"")
        return value

    @field_validator("base", "image", "database_url")
    @classmethod
    def _check_text(cls, value: str | None) -> str | None:
        return value if value is None else no_nul(value, "the value")

    _egress_allow = field_validator("egress_allow")(check_egress_allow)
    _egress_networks = field_validator("egress_networks")(check_egress_networks)
    _services = field_validator("services")(check_services)
    _merge_gate = field_validator("merge_gate")(check_command)

    @field_validator("target")
    @classmethod
    def _check_target(cls, value: str | None) -> str | None:
        # Refused at load, not when the run ends: "-x" or "a..b" could never be merged into.
        if value is None:
            return None
        problem = branch_name_problem(value)
        if problem:
            raise ValueError(f"invalid branch name {value!r}: {problem} "
                             "(see git check-ref-format --branch)")
        return value

    def with_overrides(self, where: str = "command line", **updates: Any) -> RunConfig:
        """This config with ``updates`` applied and validated like the task file's own values
        (``model_copy(update=...)`` would skip the validators); ConfigError naming the
        field."""
        try:
            return type(self).model_validate({**dict(self), **updates})
        except ValidationError as exc:
            raise ConfigError(validation_message(exc, where)) from None

    def limits_for(self, task: Task) -> ResourceLimits:
        """The effective limits of ``task``: the run's defaults with the task's overrides."""
        return task.resource_limits.apply_to(self.resource_limits)

    def gate_for(self, task: Task) -> list[str] | None:
        """The merge gate of ``task``: its own (``[]``: none), else the run's."""
        gate = task.merge_gate if task.merge_gate is not None else self.merge_gate
        return gate or None

    def network_for(self, task: Task) -> NetworkMode:
        """The network mode of ``task``."""
        return task.network or self.network

    def environment_for(self, task: Task) -> Environment | None:
        """``task``'s environment: its own, else the run's (None when it names an image)."""
        if task.environment is not None:
            return task.environment
        return None if task.image else self.environment

    def egress_for(self, task: Task) -> tuple[list[str], list[str]]:
        """``task``'s egress_allow and egress_networks (its own, else the run's)."""
        allow = task.egress_allow if task.egress_allow is not None else self.egress_allow
        networks = (task.egress_networks if task.egress_networks is not None
                    else self.egress_networks)
        return list(allow), list(networks)


def check_egress(config: RunConfig, tasks: Iterable[Task], source: str = "tasks") -> None:
    """Raise ConfigError naming the task and field when an allowlist has nothing to allow, or
    egress keys are set (on a task, or in ``[run]``) where no network is ``"allowlist"``."""
    tasks = list(tasks)
    if not any(config.network_for(task) == "allowlist" for task in tasks):
        for key in ("egress_allow", "egress_networks"):
            if getattr(config, key) and not any(getattr(task, key) is not None
                                                for task in tasks):
                ids = ", ".join(repr(task.id) for task in tasks)
                raise ConfigError(
                    f"{source}: [run]: field {key}: only used with network = \"allowlist\", "
                    f"which no task has (tasks {ids}); set network = \"allowlist\" or "
                    "remove the key")
    for task in tasks:
        where = f"{source}: task {task.id!r}"
        if config.network_for(task) != "allowlist":
            for key in ("egress_allow", "egress_networks"):
                if getattr(task, key) is not None:
                    raise ConfigError(f"{where}: field {key}: only used with network = "
                                      "\"allowlist\" (this task's network is "
                                      f"{config.network_for(task)!r})")
            continue
        allow, _ = config.egress_for(task)
        if not allow:
            if task.egress_allow is None and task.network is None:
                where = f"{source}: [run]"
            raise ConfigError(
                f"{where}: field egress_allow: network = \"allowlist\" needs at least one "
                f"host (task {task.id!r} has none), e.g. egress_allow = "
                "[\"api.anthropic.com\", \"models.internal:8080\"]")


class TaskFile(StrictModel):
    """A whole task file: the ``[run]`` table and the ``[[tasks]]`` list."""

    run: RunConfig = Field(default_factory=RunConfig, description="Run-wide settings.")
    tasks: list[Task] = Field(description="The tasks to run; at least one.", min_length=1)


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """Return one dependency cycle as a closed path (``[a, b, a]``), or None if there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state and (found := visit(node)):
            return found
    return None


def validate_tasks(tasks: list[Task], source: str = "tasks") -> None:
    """Check ids are unique, deps exist and form no cycle; raise ConfigError naming the task."""
    seen: set[str] = set()
    for task in tasks:
        if task.id in seen:
            raise ConfigError(f"{source}: task {task.id!r}: field id: duplicate task id")
        seen.add(task.id)
    for task in tasks:
        if task.image is not None and task.environment is not None:
            raise ConfigError(
                f"{source}: task {task.id!r}: field environment: give image or environment, "
                "not both (an environment builds the task's image)")
        if task.command is None and task.agent is None:
            raise ConfigError(
                f"{source}: task {task.id!r}: field command: give a command (argv list) "
                "or an agent preset: nothing would run its prompt (set agent for the task, "
                "or [run] agent for every such task, e.g. agent = \"claude-code\")"
            )
        for dep in task.deps:
            if dep not in seen:
                raise ConfigError(f"{source}: task {task.id!r}: field deps: unknown task {dep!r}")
            if dep == task.id:
                raise ConfigError(f"{source}: task {task.id!r}: field deps: depends on itself")
    cycle = find_cycle({t.id: t.deps for t in tasks})
    if cycle:
        raise ConfigError(
            f"{source}: task {cycle[0]!r}: field deps: dependency cycle {' -> '.join(cycle)}"
        )


def with_default_agent(tasks: Iterable[Task], agent: AgentPreset | None) -> list[Task]:
    """``tasks`` with ``agent`` given to each that names neither a command nor an agent. Pure."""
    if agent is None:
        return list(tasks)
    return [task.model_copy(update={"agent": agent})
            if task.command is None and task.agent is None else task for task in tasks]


def _describe(error: dict[str, Any], raw: dict[str, Any], source: str) -> str:
    loc = list(error["loc"])
    where = source
    if len(loc) >= 2 and loc[0] == "tasks" and isinstance(loc[1], int):
        tasks = raw.get("tasks")
        task_id: Any = None
        if isinstance(tasks, list) and loc[1] < len(tasks) and isinstance(tasks[loc[1]], dict):
            task_id = tasks[loc[1]].get("id")
        where += f": task {task_id!r}" if isinstance(task_id, str) else f": task #{loc[1] + 1}"
        loc = loc[2:]
    elif loc and loc[0] == "run":
        where += ": [run]"
        loc = loc[1:]
    field = ".".join(str(part) for part in loc) or "(top level)"
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown key (check the spelling against the task file reference)"
    elif error["type"] == "missing":
        message = "required field is missing"
    return f"{where}: field {field}: {message}"


def parse_task_file(raw: dict[str, Any], source: str = "tasks") -> TaskFile:
    """Validate an already-parsed task file mapping; raise ConfigError naming file/task/field."""
    try:
        parsed = TaskFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(_describe(dict(first), raw, source)) from None
    parsed = parsed.model_copy(update={"tasks": with_default_agent(parsed.tasks,
                                                                   parsed.run.agent)})
    validate_tasks(parsed.tasks, source)
    check_egress(parsed.run, parsed.tasks, source)
    return parsed


def load_task_file(path: str | Path) -> TaskFile:
    """Read and validate a TOML task file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: task file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: cannot read task file: {exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: TOML syntax error: {exc}") from None
    return parse_task_file(raw, str(file))


def secret_values(names: Iterable[str]) -> dict[str, str]:
    """The values of the named secrets that agentrt's environment has (unset ones left out).

    The one place secret values are read; they are passed on by name and value, never stored.
    """
    return {name: os.environ[name] for name in names if os.environ.get(name)}
