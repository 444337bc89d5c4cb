"""Arguments of the Python API as a user writes them, checked and turned into agentrt's models.

The original design's sketch passes plain values: a session id string, a ``dict`` of run
settings, a list mixing ``Task`` objects, dicts and prompt strings. These helpers accept those
forms next to the typed ones and raise :class:`~runtime.errors.ConfigError` (never an
``AttributeError``) naming the argument when a value is of the wrong kind or invalid.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from runtime.config import ResourceLimits, RunConfig, Task
from runtime.errors import ConfigError
from runtime.git.safe_git import MainRepo
from runtime.limits import plain_limits, validation_message
from runtime.task import AgentPreset

M = TypeVar("M", bound=BaseModel)


def _kind(value: object) -> str:
    return type(value).__name__


def as_model(model: type[M], value: object, where: str) -> M:
    """``value`` if it is a ``model`` already, else a mapping validated into one."""
    if isinstance(value, model):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a {model.__name__} or a dict, not {_kind(value)}")
    try:
        return model.model_validate(dict(value))
    except ValidationError as exc:
        raise ConfigError(validation_message(exc, where)) from None


def as_run_config(value: object, where: str = "config") -> RunConfig:
    """A :class:`RunConfig` from ``None`` (defaults), a RunConfig, or a dict of its keys."""
    return RunConfig() if value is None else as_model(RunConfig, value, where)


def as_limits(value: object, where: str = "limits") -> ResourceLimits:
    """A :class:`ResourceLimits` from itself (a subclass's values), or a dict (the design's
    names allowed)."""
    return plain_limits(as_model(ResourceLimits, value, where))


def as_repo(value: object, where: str = "repo") -> str | os.PathLike[str] | MainRepo:
    """Check that ``value`` can name a repository (a path or a :class:`MainRepo`)."""
    if isinstance(value, str | os.PathLike | MainRepo):
        return value
    raise ConfigError(f"{where} must be a path (str or Path) or a MainRepo, not {_kind(value)}")


def as_max_concurrent(value: object) -> int | None:
    """``max_concurrent`` checked: None, or an int within RunConfig's bounds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"max_concurrent must be an integer, not {_kind(value)}")
    as_run_config({"max_concurrent_agents": value}, "max_concurrent")
    return value


def prompt_slug(prompt: str) -> str:
    """A task id made from a prompt: ``"Write tests!"`` → ``write-tests``."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:32].strip("-")
    return slug or "task"


def as_tasks(values: object, default_agent: AgentPreset | None = None) -> list[Task]:
    """The tasks of ``run_agents``: each a :class:`Task`, a dict of Task keys, or a prompt.

    A prompt string becomes ``Task(id=<slug of the prompt>, prompt=<it>, agent=default_agent)``;
    a dict without ``command`` and ``agent`` gets ``agent=default_agent``, and one without
    ``id`` an id from its prompt. Generated ids never collide with given ones (``-2``, ``-3``...).
    A ``Task`` object is taken as it is. With no ``default_agent`` such a task has neither a
    command nor an agent, and the run's preflight refuses it, naming it.
    """
    if isinstance(values, str | bytes | Mapping | Task) or not isinstance(values, Sequence):
        raise ConfigError("tasks must be a list of Task objects, dicts or prompt strings, not "
                          f"{_kind(values)}")
    given = {v.id if isinstance(v, Task) else v.get("id") for v in values
             if isinstance(v, Task | Mapping)}
    taken = {i for i in given if isinstance(i, str)}
    tasks: list[Task] = []
    for index, value in enumerate(values):
        where = f"tasks[{index}]"
        if isinstance(value, Task):
            tasks.append(value)
            continue
        if isinstance(value, str):
            value = {"prompt": value}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a Task, a dict or a prompt string, not "
                              f"{_kind(value)}")
        data = dict(value)
        if "id" not in data:
            data["id"] = _fresh_id(prompt_slug(str(data.get("prompt", ""))), taken)
        if data.get("command") is None and data.get("agent") is None:
            data["agent"] = default_agent
        tasks.append(as_model(Task, data, where))
    return tasks


def _fresh_id(stem: str, taken: set[str]) -> str:
    candidate, n = stem, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem[: 40 - len(str(n)) - 1]}-{n}"
    taken.add(candidate)
    return candidate


def as_command(value: object) -> list[str]:
    """A command argv: a non-empty list of strings without NUL bytes."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not value or not all(
            isinstance(part, str) and "\0" not in part for part in value):
        raise ConfigError("command must be a non-empty list of strings (an argv such as "
                          "[\"sh\", \"-c\", \"make test\"]) without NUL bytes")
    return list(value)


def session_task(value: object) -> tuple[Task, bool]:
    """The task of ``IsolatedAgentSession``: a Task, a dict, or a session id string.

    Returns the task and whether it still needs a command from ``run(command)`` (an id string
    or a dict without command and agent)."""
    if isinstance(value, str):
        value = {"id": value}
    if isinstance(value, Mapping) and value.get("command") is None and \
            value.get("agent") is None:
        # A placeholder argv until run(command) names the real one.
        return as_model(Task, {**value, "command": ["true"]}, "task"), True
    if not isinstance(value, Task | Mapping):
        raise ConfigError(f"task must be a Task, a dict or a session id string, not "
                          f"{_kind(value)}")
    return as_model(Task, value, "task"), False
