"""Presets know their CLI: model and base_url flags, quiet settings, state off the workspace."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import Task
from runtime.engine.build_context import BUILD_CA_NAME, build_ca_bundle, build_context
from runtime.engine.container import DB_MOUNT
from runtime.engine.recipes import recipe_dir, recipe_hash
from runtime.errors import ConfigError
from runtime.presets import (
    PRESETS,
    STATE_DIR,
    api_base,
    needs_network,
    resolve_command,
    resolve_env,
    resolve_secrets,
)

URL = "http://models.internal:8080/v1"


def task(agent: str, **extra: str) -> Task:
    return Task(id="t", agent=agent, prompt="fix it", **extra)  # type: ignore[arg-type]


def test_claude_code_model_and_base_url() -> None:
    argv = resolve_command(task("claude-code", model="claude-sonnet-4-5", base_url=URL))
    assert argv[:3] == ["claude", "-p", "fix it"]
    assert argv[argv.index("--model") + 1] == "claude-sonnet-4-5"
    env = resolve_env(task("claude-code", base_url=URL))
    assert env["ANTHROPIC_BASE_URL"] == "http://models.internal:8080"  # its client adds /v1
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert "--model" not in resolve_command(task("claude-code"))
    assert "ANTHROPIC_BASE_URL" not in resolve_env(task("claude-code"))


def test_codex_model_provider_and_key() -> None:
    argv = resolve_command(task("codex", model="gpt-5-codex", base_url=URL))
    assert argv[:4] == ["codex", "exec", "--json", "--dangerously-bypass-approvals-and-sandbox"]
    assert argv[-1] == "fix it"
    assert argv[argv.index("-m") + 1] == "gpt-5-codex"
    configs = [argv[i + 1] for i, part in enumerate(argv) if part == "-c"]
    assert "check_for_update_on_startup=false" in configs
    assert 'model_provider="agentrt"' in configs
    assert f'model_providers.agentrt.base_url="{URL}"' in configs  # codex appends /responses
    assert 'model_providers.agentrt.env_key="CODEX_API_KEY"' in configs
    plain = resolve_command(task("codex"))
    assert "-m" not in plain and not any("model_provider" in p for p in plain)
    assert resolve_secrets(task("codex"), {"OPENAI_API_KEY": "k"}) == {
        "OPENAI_API_KEY": "k", "CODEX_API_KEY": "k"}
    assert resolve_secrets(task("codex"), {"CODEX_API_KEY": "c", "OPENAI_API_KEY": "o"})[
        "CODEX_API_KEY"] == "c"
    assert resolve_secrets(task("aider"), {"OPENAI_API_KEY": "k"}) == {"OPENAI_API_KEY": "k"}


@pytest.mark.parametrize(("model", "option"), [
    ("gpt-4o", "--openai-api-base"), ("openai/qwen2.5-coder", "--openai-api-base"),
    ("anthropic/claude-sonnet-4-5", "--anthropic-api-base"), ("sonnet", "--anthropic-api-base"),
])
def test_aider_base_url_follows_the_model(model: str, option: str) -> None:
    argv = resolve_command(task("aider", model=model, base_url=URL))
    openai = option == "--openai-api-base"
    assert argv[argv.index(option) + 1] == (URL if openai else "http://models.internal:8080")
    assert argv[argv.index("--model") + 1] == model
    assert argv[-2:] == ["--message", "fix it"]
    env = resolve_env(task("aider"))
    assert env["AIDER_CHECK_UPDATE"] == "false" and env["AIDER_ANALYTICS"] == "false"


@pytest.mark.parametrize(("written", "with_v1", "without_v1"), [
    ("http://m:8080", "http://m:8080/v1", "http://m:8080"),
    ("http://m:8080/", "http://m:8080/v1", "http://m:8080"),
    ("http://m:8080/v1", "http://m:8080/v1", "http://m:8080"),
    ("https://m/v1/", "https://m/v1", "https://m"),
    ("https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1", "https://openrouter.ai/api"),
    ("https://m/openai/v1beta", "https://m/openai/v1beta", "https://m/openai/v1beta"),
    ("http://m:8080/v1?x=1", "http://m:8080/v1?x=1", "http://m:8080?x=1"),
])
def test_base_url_is_taken_with_or_without_v1(written: str, with_v1: str,
                                              without_v1: str) -> None:
    assert api_base(written, True) == with_v1 and api_base(written, False) == without_v1
    # Each preset gets the form its client wants, however the task wrote it.
    claude = resolve_env(task("claude-code", base_url=written))["ANTHROPIC_BASE_URL"]
    codex = resolve_command(task("codex", base_url=written))
    aider = resolve_command(task("aider", model="openai/m", base_url=written))
    assert claude == without_v1
    assert f'model_providers.agentrt.base_url="{with_v1}"' in codex
    assert aider[aider.index("--openai-api-base") + 1] == with_v1


def test_aider_edits_in_whole_files_on_a_server_of_the_tasks_own() -> None:
    assert resolve_env(task("aider", base_url=URL))["AIDER_EDIT_FORMAT"] == "whole"
    # Talking to a provider aider knows, aider's own choice per model stands.
    assert "AIDER_EDIT_FORMAT" not in resolve_env(task("aider", model="gpt-4o"))


def test_every_cli_keeps_its_state_off_the_workspace_in_the_sessions_data_dir() -> None:
    for name, preset in PRESETS.items():
        for key, value in preset.env.items():
            assert not value.startswith("/workspace"), (name, key)
    # The session's private data directory: disk-limited, never harvested, carried to a
    # continuation (runtime/run/continuation.py).
    assert STATE_DIR == DB_MOUNT
    assert resolve_env(task("codex"))["CODEX_HOME"] == STATE_DIR
    assert resolve_env(task("claude-code"))["CLAUDE_CONFIG_DIR"].startswith(STATE_DIR + "/")
    assert resolve_env(task("aider"))["AIDER_INPUT_HISTORY_FILE"].startswith(STATE_DIR + "/")
    assert resolve_env(task("aider"))["AIDER_GITIGNORE"] == "false"


def test_a_continuation_resumes_the_conversation_where_the_cli_can() -> None:
    claude = resolve_command(task("claude-code", model="m"), resume=True)
    assert claude[:3] == ["claude", "-p", "fix it"] and "--continue" in claude
    assert claude[claude.index("--model") + 1] == "m"
    codex = resolve_command(task("codex"), resume=True)
    assert codex[codex.index("resume"):] == ["resume", "--last", "fix it"]
    assert "--restore-chat-history" in resolve_command(task("aider"), resume=True)
    # No resume form: the same argv as a first session.
    assert resolve_command(task("shell"), resume=True) == resolve_command(task("shell"))
    own = Task(id="t", agent="claude-code", command=["true"])
    assert resolve_command(own, resume=True) == ["true"]


def test_a_task_command_overrides_the_preset_entirely() -> None:
    own = Task(id="t", agent="codex", command=["true"], model="m")
    assert resolve_command(own) == ["true"] and resolve_env(own) == {}
    assert not needs_network(own) and needs_network(task("codex"))
    assert not needs_network(task("shell"))


def test_cli_versions_are_pinned_in_the_recipes() -> None:
    for name, arg in (("claude-code", "CLAUDE_CODE_VERSION"), ("codex", "CODEX_VERSION"),
                      ("aider", "AIDER_VERSION")):
        text = (recipe_dir(name) / "Dockerfile").read_text()
        assert f"ARG {arg}=" in text and f"${{{arg}}}" in text, name
        assert "AS build" in text and "COPY --from=build" in text, name


def test_bumping_a_pinned_version_changes_the_recipe_hash(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    copy = tmp_path / "recipes"
    shutil.copytree(recipe_dir("base").parent, copy)
    monkeypatch.setenv("AGENTRT_IMAGES_DIR", str(copy))
    before = recipe_hash("codex")
    dockerfile = copy / "codex" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("ARG CODEX_VERSION=",
                                                         "ARG CODEX_VERSION=9"))
    assert recipe_hash("codex") != before


def test_the_build_ca_bundle(tmp_path: Path) -> None:
    host = tmp_path / "host.crt"
    assert build_ca_bundle({}, host) is None
    host.write_text("HOST")
    assert build_ca_bundle({}, host) == host
    mine = tmp_path / "mine.pem"
    mine.write_text("MINE")
    assert build_ca_bundle({"AGENTRT_BUILD_CA_BUNDLE": str(mine)}, host) == mine
    assert build_ca_bundle({"AGENTRT_BUILD_CA_BUNDLE": "none"}, host) is None
    with pytest.raises(ConfigError, match="AGENTRT_BUILD_CA_BUNDLE"):
        build_ca_bundle({"AGENTRT_BUILD_CA_BUNDLE": str(tmp_path / "nope")}, host)
    with build_context(recipe_dir("codex"), mine) as context:
        assert (context / BUILD_CA_NAME).read_text() == "MINE"
        assert (context / "Dockerfile").is_file()
    assert not context.exists()
    with build_context(recipe_dir("codex"), None) as context:
        assert (context / BUILD_CA_NAME).read_bytes() == b""
    assert not (recipe_dir("codex") / BUILD_CA_NAME).exists()
