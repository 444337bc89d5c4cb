"""One unit of agent work as the task file gives it: the ``Task`` model, its id, preset and
network vocabulary, and the checks its fields share with the run's (no NUL bytes, egress
hosts and network names). Importable from :mod:`runtime.config` as before."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from runtime.egress_rules import parse_target
from runtime.environments import Environment, check_command
from runtime.limits import LimitOverrides, StrictModel

TASK_ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,39}$"
_TASK_ID_RE = re.compile(TASK_ID_PATTERN)
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DOCKER_NETWORK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

NetworkMode = Literal["none", "bridge", "allowlist"]
AgentPreset = Literal["shell", "claude-code", "codex", "aider"]


def no_nul(value: str, what: str) -> str:
    """``value``, refused (ValueError naming ``what``) if it holds a NUL byte."""
    # A NUL cannot cross exec(2) or the engine's API: refuse it here, before anything starts.
    if "\0" in value:
        raise ValueError(f"{what} must not contain NUL bytes")
    return value


def check_egress_allow(value: list[str] | None) -> list[str] | None:
    """Each entry a host or host:port the egress proxy can allow."""
    for entry in value or []:
        parse_target(entry)  # its ValueError names the entry and what is wrong
    return value


def check_egress_networks(value: list[str] | None) -> list[str] | None:
    """Each entry a Docker network name."""
    for name in value or []:
        if not _DOCKER_NETWORK_RE.match(name):
            raise ValueError(f"{name!r} is not a Docker network name")
    return value


class Task(StrictModel):
    """One unit of agent work: a prompt and the command (or preset) that acts on it."""

    id: str = Field(description="Unique id, [a-z0-9][a-z0-9-]{0,39}; names the branch.")
    prompt: str = Field("", description="What the agent should do; passed as AGENT_TASK.")
    command: list[str] | None = Field(None, description="argv run in /workspace.")
    agent: AgentPreset | None = Field(None, description="A preset that supplies image and command.")
    deps: list[str] = Field(default_factory=list, description="Task ids that must succeed first.")
    image: str | None = Field(None, description="Image override for this task.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment variables.")
    secrets: list[str] = Field(
        default_factory=list, description="Host environment variables passed by name only."
    )
    network: NetworkMode | None = Field(None, description="Network override for this task.")
    egress_allow: list[str] | None = Field(
        None, description="Hosts (host or host:port) this task may reach with network = "
        "\"allowlist\"; default: [run] egress_allow.")
    egress_networks: list[str] | None = Field(
        None, description="Existing Docker networks the egress proxy joins for this task; "
        "default: [run] egress_networks.")
    base_url: str | None = Field(
        None, description="The model API's base URL, passed to the agent preset's CLI.")
    model: str | None = Field(None, description="The model, passed to the agent preset's CLI.")
    resource_limits: LimitOverrides = Field(
        default_factory=LimitOverrides, description="Overrides of the run's default limits."
    )
    environment: Environment | None = Field(
        None, description="This task's own environment (replacing [run] environment).")
    merge_gate: list[str] | None = Field(
        None, description="The check this task's work must pass before an automatic merge "
        "lands it (replacing [run] merge_gate); [] = no gate for this task.")
    interactive: bool = Field(
        False, description="Run the agent with a terminal (its CLI's TUI, or the command with a "
        "TTY and stdin) for a person to reach with `agentrt attach`; same container, limits, "
        "network and harvest as a batch session; its work comes home when the agent exits.")

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not _TASK_ID_RE.match(value):
            raise ValueError(
                f"{value!r} is not a valid task id: use 1-40 characters of a-z, 0-9 and '-', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("prompt", "image")
    @classmethod
    def _check_text(cls, value: str | None) -> str | None:
        return value if value is None else no_nul(value, "the value")

    _egress_allow = field_validator("egress_allow")(check_egress_allow)
    _egress_networks = field_validator("egress_networks")(check_egress_networks)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/?#]+[^\s]*$", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value.startswith("-")
                                  or any(ord(c) < 32 for c in value)):
            raise ValueError(f"{value!r} is not a model name")
        return value

    _command = field_validator("command")(check_command)

    @field_validator("merge_gate")
    @classmethod
    def _check_gate(cls, value: list[str] | None) -> list[str] | None:
        return value if not value else check_command(value)

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_NAME_RE.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
            if key.startswith("AGENT_"):
                raise ValueError(f"{key!r}: names starting with AGENT_ are set by agentrt")
            no_nul(value[key], f"the value of {key!r}")
        return value

    @field_validator("secrets")
    @classmethod
    def _check_secrets(cls, value: list[str]) -> list[str]:
        for key in value:
            if not _ENV_NAME_RE.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return value
