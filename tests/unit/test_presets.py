"""Agent presets map to an image and an argv; the prompt is always one argument."""

from __future__ import annotations

from runtime.config import Task
from runtime.presets import PRESETS, resolve_command, resolve_image


def test_prompt_is_passed_as_a_single_argument_never_through_a_shell() -> None:
    prompt = "fix it; rm -rf / $(whoami) 'quoted'"
    argv = resolve_command(Task(id="a", agent="claude-code", prompt=prompt))
    assert argv[0] == "claude" and argv.count(prompt) == 1
    assert "--dangerously-skip-permissions" in argv


def test_every_preset_has_an_image_and_uses_the_prompt() -> None:
    for name, preset in PRESETS.items():
        assert preset.image.startswith("agentrt/")
        assert "{prompt}" in preset.argv, name


def test_task_command_and_image_win_over_the_preset() -> None:
    task = Task(id="a", agent="aider", command=["echo", "hi"], image="mine:1")
    assert resolve_command(task) == ["echo", "hi"]
    assert resolve_image(task, "agentrt/base:latest") == "mine:1"
    assert resolve_image(Task(id="b", agent="codex"), "x") == "agentrt/codex:latest"
    assert resolve_image(Task(id="c", agent="shell"), "x") == "x"
