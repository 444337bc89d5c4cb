"""What users write about a project's toolchain and its services (issue #20).

* :class:`Environment`, ``[run.environment]`` or a task's ``environment``: the image sessions
  run in, made from exactly one of a local ``image``, a ``dockerfile`` in the repository or a
  ``devcontainer`` file, plus ``setup`` commands run once at build time and ``env``.
* :class:`Service`, ``[[run.services]]``: a container started next to every session on that
  session's own internal network, reached by its ``name``.

Pure models (frozen, ``extra="forbid"``); :mod:`runtime.config` imports them into the task
file. Building is :mod:`runtime.engine.environment_build`, services
:mod:`runtime.engine.services`.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A service's name is its host name on the session's network: one DNS label.
_SERVICE_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
RESERVED_SERVICE_NAMES = frozenset({"agentrt-egress", "localhost"})

MAX_SERVICES = 16
MAX_SETUP_COMMANDS = 64

ServiceMemoryMb = Annotated[int, Field(strict=True, gt=0, le=1024 * 1024)]
ServiceCpuPercent = Annotated[int, Field(strict=True, gt=0, le=100 * 1024)]
ServiceDiskMb = Annotated[int, Field(strict=True, gt=0, le=64 * 1024)]
MAX_WRITABLE_PATHS = 16


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def repo_path_problem(value: str) -> str | None:
    """Why ``value`` is not a relative path inside the repository, or None (pure)."""
    if not value or "\0" in value or "\\" in value:
        return "must be a non-empty relative path with '/' separators"
    path = PurePosixPath(value)
    if path.is_absolute():
        return "must be relative to the repository's root, not absolute"
    if any(part == ".." for part in path.parts):
        return "must stay inside the repository (no '..')"
    return None


def check_command(value: list[str] | None) -> list[str] | None:
    """An argv (or None): non-empty, no NUL byte (it cannot cross exec(2))."""
    if value is not None and (not value or any("\0" in part for part in value)):
        raise ValueError("command must be a non-empty list of strings without NUL bytes")
    return value


def check_env_table(value: dict[str, str]) -> dict[str, str]:
    """Environment variable names and values an image's ``ENV`` can hold."""
    for key, item in value.items():
        if not _ENV_NAME_RE.match(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
        if key.startswith("AGENT_"):
            raise ValueError(f"{key!r}: names starting with AGENT_ are set by agentrt")
        if "\0" in item or "\n" in item or "\r" in item:
            raise ValueError(f"the value of {key!r} must be one line without NUL bytes")
    return value


class Environment(_Strict):
    """The project's toolchain: exactly one of ``image``, ``dockerfile`` or ``devcontainer``.

    The session image is built from it (``setup`` as root at build time), then the agent
    preset's CLI, then what agentrt needs (git, ``timeout``, ``sh``, user 1000), and cached by
    the hash of all of it. Files come from the repository's committed tree at the run's base
    commit, never from the working tree.
    """

    image: str | None = Field(None, description="A local image to start from.")
    dockerfile: str | None = Field(
        None, description="A Dockerfile in the repository (path from its root).")
    context: str | None = Field(
        None, description="With dockerfile: the build context, a directory of the repository; "
        "default: the Dockerfile's directory.")
    args: dict[str, str] = Field(default_factory=dict,
                                 description="With dockerfile: build arguments.")
    build_network: bool = Field(
        False, description="With dockerfile: give its RUN steps the network (default: none; "
        "earlier merged agent work can change the Dockerfile, which builds as root).")
    devcontainer: str | None = Field(
        None, description="A devcontainer.json in the repository (its common subset).")
    setup: list[str] = Field(
        default_factory=list, description="Shell commands run once, as root, when the image "
        "is built (never at session start); in a directory holding `files`.")
    files: list[str] = Field(
        default_factory=list, description="Repository paths (files or directories) the setup "
        "commands read; copied into the setup directory and part of the image's hash.")
    env: dict[str, str] = Field(default_factory=dict,
                                description="Environment variables set in the image.")
    agent_image: str | None = Field(
        None, description="The image an agent preset's CLI is copied from; default: the "
        "preset's own image (agentrt/<preset>:latest).")

    @model_validator(mode="after")
    def _exactly_one(self) -> Environment:
        given = [k for k in ("image", "dockerfile", "devcontainer") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of image, dockerfile or devcontainer"
                + (f" (got {' and '.join(given)})" if given else ""))
        if (self.context is not None or self.args or self.build_network) \
                and self.dockerfile is None:
            key = ("context" if self.context is not None else "args" if self.args
                   else "build_network")
            raise ValueError(f"{key} is only used with dockerfile")
        return self

    @field_validator("dockerfile", "context", "devcontainer")
    @classmethod
    def _check_repo_path(cls, value: str | None) -> str | None:
        if value is not None and (problem := repo_path_problem(value)):
            raise ValueError(f"{value!r} {problem}")
        return value

    @field_validator("files")
    @classmethod
    def _check_files(cls, value: list[str]) -> list[str]:
        for item in value:
            if problem := repo_path_problem(item):
                raise ValueError(f"{item!r} {problem}")
        return value

    @field_validator("image", "agent_image")
    @classmethod
    def _check_image(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c.isspace() or c == "\0"
                                                           for c in value)):
            raise ValueError(f"{value!r} is not an image reference")
        return value

    @field_validator("setup")
    @classmethod
    def _check_setup(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_SETUP_COMMANDS:
            raise ValueError(f"at most {MAX_SETUP_COMMANDS} setup commands")
        for command in value:
            if not command.strip() or "\0" in command:
                raise ValueError("each setup command must be a non-empty string without NUL")
        return value

    @field_validator("args")
    @classmethod
    def _check_args(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not _ENV_NAME_RE.match(key) or "\0" in item:
                raise ValueError(f"{key!r} is not a valid build argument")
        return value

    _env = field_validator("env")(check_env_table)


class Healthcheck(_Strict):
    """How a service says it is ready: ``cmd`` (an argv run inside it) exits 0."""

    cmd: list[str] = Field(description="argv run inside the service; exit 0 = healthy.")
    interval: float = Field(1.0, gt=0, le=600, description="Seconds between checks.")
    retries: int = Field(30, strict=True, gt=0, le=10_000,
                         description="Failed checks in a row before the service is unhealthy.")

    @field_validator("cmd")
    @classmethod
    def _check_cmd(cls, value: list[str]) -> list[str]:
        if not value or any("\0" in part for part in value):
            raise ValueError("cmd must be a non-empty list of strings without NUL bytes")
        return value


class Service(_Strict):
    """A container started for each session on the session's own internal network."""

    name: str = Field(description="Its host name on the session's network (a DNS label).")
    image: str = Field(description="A local image.")
    command: list[str] | None = Field(None, description="argv; default: the image's own.")
    env: dict[str, str] = Field(default_factory=dict, description="Its environment.")
    healthcheck: Healthcheck | None = Field(
        None, description="Readiness check; without one the service counts as ready once "
        "it runs.")
    memory_mb: ServiceMemoryMb = Field(256, description="Memory limit in MiB (no swap).")
    cpu_percent: ServiceCpuPercent = Field(50, description="Percent of one core.")
    disk_mb: ServiceDiskMb = Field(
        256, description="Size in MiB of each place the service may write (its image's "
        "VOLUMEs and ``writable``; /tmp is 64 MiB): a tmpfs, whose pages count in memory_mb.")
    writable: list[str] = Field(
        default_factory=list, description="Absolute paths the service writes besides /tmp and "
        "its image's VOLUMEs (its root is read-only); each starts empty.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _SERVICE_NAME_RE.match(value) or value in RESERVED_SERVICE_NAMES:
            raise ValueError(f"{value!r} is not a service name: 1-63 characters of a-z, 0-9 "
                             "and '-', not starting or ending with '-'")
        return value

    @field_validator("image")
    @classmethod
    def _check_image(cls, value: str) -> str:
        if not value.strip() or any(c.isspace() or c == "\0" for c in value):
            raise ValueError(f"{value!r} is not an image reference")
        return value

    @field_validator("writable")
    @classmethod
    def _check_writable(cls, value: list[str]) -> list[str]:
        if len(value) > MAX_WRITABLE_PATHS:
            raise ValueError(f"at most {MAX_WRITABLE_PATHS} writable paths")
        for item in value:
            path = PurePosixPath(item)
            if (not path.is_absolute() or item != str(path) or path == PurePosixPath("/")
                    or ".." in path.parts or any(c in item for c in ",:\0\n")):
                raise ValueError(f"{item!r} is not an absolute path below / (no '..', ',' "
                                 "or ':')")
        return value

    _command = field_validator("command")(check_command)

    _env = field_validator("env")(check_env_table)


def check_services(services: list[Service]) -> list[Service]:
    """Refuse two services of one name, or too many (a validator of ``RunConfig.services``)."""
    if len(services) > MAX_SERVICES:
        raise ValueError(f"at most {MAX_SERVICES} services")
    seen: set[str] = set()
    for service in services:
        if service.name in seen:
            raise ValueError(f"duplicate service name {service.name!r}")
        seen.add(service.name)
    return services
