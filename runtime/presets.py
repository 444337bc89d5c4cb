"""Agent presets: ``agent = "<name>"`` in a task maps to an image and a command template.

Each agent runs non-interactively with its own permission prompts off: that is safe because
the container (not the agent's prompt) is the sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.config import Task


@dataclass(frozen=True)
class Preset:
    """An agent CLI packaged in an image."""

    image: str
    argv: tuple[str, ...]
    version_argv: tuple[str, ...] = ()

    def command(self, prompt: str) -> list[str]:
        """The argv for ``prompt`` (``{prompt}`` is replaced as one argument, never via a shell)."""
        return [prompt if part == "{prompt}" else part for part in self.argv]


PRESETS: dict[str, Preset] = {
    "shell": Preset("agentrt/base:latest", ("sh", "-c", "{prompt}"), ("sh", "--version")),
    "claude-code": Preset(
        "agentrt/claude-code:latest",
        ("claude", "-p", "{prompt}", "--dangerously-skip-permissions", "--output-format", "text"),
        ("claude", "--version"),
    ),
    "codex": Preset(
        "agentrt/codex:latest",
        ("codex", "exec", "--dangerously-bypass-approvals-and-sandbox", "{prompt}"),
        ("codex", "--version"),
    ),
    "aider": Preset(
        "agentrt/aider:latest",
        ("aider", "--yes-always", "--no-auto-commits", "--message", "{prompt}"),
        ("aider", "--version"),
    ),
}


def resolve_command(task: Task) -> list[str]:
    """The argv a task runs: its ``command``, else its preset's template."""
    if task.command:
        return list(task.command)
    if task.agent is None:
        raise ValueError(f"task {task.id!r} has neither command nor agent")
    return PRESETS[task.agent].command(task.prompt)


def resolve_image(task: Task, default: str) -> str:
    """The image a task runs in: its own, else its preset's, else the run's default."""
    if task.image:
        return task.image
    if task.agent and task.agent != "shell":
        return PRESETS[task.agent].image
    return default
