"""``agentrt run -p PROMPT --agent PRESET``: a run of one task without a task file.

The flags become one ``[[tasks]]`` table (limits as its ``resource_limits``; ``[run]`` keeps
its defaults) and go through the task-file loader, so a bad value is refused with the same
message naming the field, exit 2, before anything starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar, get_args

import click

from runtime.config import TaskFile, parse_task_file
from runtime.errors import ConfigError
from runtime.run.api_args import prompt_slug
from runtime.task import AgentPreset, NetworkMode

F = TypeVar("F", bound=Callable[..., Any])

LIMIT_FLAGS = ("memory_mb", "cpu_percent", "time_seconds", "disk_mb", "pids")
PRESETS: tuple[str, ...] = get_args(AgentPreset)


def one_off_options(func: F) -> F:
    """The flags of a run without a task file."""
    options = [
        click.option("-p", "--prompt", help="Run one task with this prompt (no TASK_FILE)."),
        click.option("--agent", type=click.Choice(list(PRESETS)),
                     help="The preset that runs the prompt (needed with -p; shell runs it as "
                     "a shell command)."),
        click.option("--id", "task_id", help="The task's id (default: made from the prompt)."),
        click.option("--network", type=click.Choice(get_args(NetworkMode))),
        click.option("--egress-allow", multiple=True, metavar="HOST[:PORT]",
                     help="With --network allowlist: a host it may reach (repeatable)."),
        click.option("--secret", "secrets", multiple=True, metavar="NAME",
                     help="An environment variable passed by name (repeatable)."),
        click.option("--model", help="The model the agent's CLI uses."),
        click.option("--base-url", help="The model API's base URL."),
        *(click.option(f"--{name.replace('_', '-')}", name, type=int,
                       help=f"resource_limits.{name}") for name in LIMIT_FLAGS),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def one_off_task_file(prompt: str, *, agent: str | None = None, task_id: str | None = None,
                      network: str | None = None, egress_allow: Sequence[str] = (),
                      secrets: Sequence[str] = (), model: str | None = None,
                      base_url: str | None = None, **limits: int | None) -> TaskFile:
    """The task file the flags describe (ConfigError naming the flag's field if bad).

    A prompt needs an agent to act on it: none is assumed (``shell`` would run the prompt's
    words as a command)."""
    if agent is None:
        raise ConfigError("-p PROMPT needs --agent PRESET (" + ", ".join(PRESETS) + "; shell "
                          "runs the prompt as a shell command)")
    task: dict[str, Any] = {"id": task_id or prompt_slug(prompt), "prompt": prompt,
                            "agent": agent}
    for key, value in (("network", network), ("model", model), ("base_url", base_url)):
        if value is not None:
            task[key] = value
    if egress_allow:
        task["egress_allow"] = list(egress_allow)
    if secrets:
        task["secrets"] = list(secrets)
    chosen = {k: v for k, v in limits.items() if v is not None}
    if chosen:
        task["resource_limits"] = chosen
    return parse_task_file({"tasks": [task]}, "the command line")
