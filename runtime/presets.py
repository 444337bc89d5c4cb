"""Agent presets: ``agent = "<name>"`` in a task maps to an image, a command and an environment.

Each agent runs non-interactively with its own permission prompts off: that is safe because
the container (not the agent's prompt) is the sandbox. Each preset also knows its CLI:

* the task's ``model`` and ``base_url`` become that CLI's own flags or variables;
* its quiet settings are on (no update checks, telemetry or other non-essential traffic, which
  an allowlist would refuse anyway);
* its conversation state and history live in :data:`STATE_DIR` (the session's private
  ``/agentrt/db``, on its disk-limited volume, beside ``AGENT_DB``), never in ``/workspace``,
  so nothing of the CLI's own comes home with the agent's work; what a CLI writes into the
  repository regardless (aider's repo map cache) matches :data:`STATE_EXCLUDES`, which the
  harvest leaves out. That directory is what ``agentrt continue`` carries to the next
  session of the same branch (``runtime/run/continuation.py``), where the preset's
  ``resume`` argv picks the conversation up (``claude --continue``, ``codex exec resume
  --last``, aider's ``--restore-chat-history``);
* ``base_url`` is taken with or without ``/v1`` (:func:`api_base`);
* it prints in its machine-readable mode where it has one (``claude -p --output-format json``,
  ``codex exec --json``; aider's ``Tokens: …`` lines), from which ``runtime/run/usage.py``
  reads the tokens and cost it reports once the session ends.

Every decision here is a pure function of the task, table-tested in ``tests/unit``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from runtime.config import Task

#: The session's private data directory (runtime.engine.container.DB_MOUNT, which this layer
#: may not import; a unit test holds them equal): on the session's volume, so its bytes count
#: against disk_mb, never harvested, carried to a continuation of the session.
STATE_DIR = "/agentrt/db"

FlagsFn = Callable[[Task], list[str]]
EnvFn = Callable[[Task], dict[str, str]]


def _no_flags(_task: Task) -> list[str]:
    return []


def _no_env(_task: Task) -> dict[str, str]:
    return {}


@dataclass(frozen=True)
class Preset:
    """An agent CLI packaged in an image.

    ``argv`` holds ``{prompt}`` (replaced as one argument, never through a shell) and
    ``{options}`` (where the task's model and base-URL flags go); ``env`` is the CLI's quiet
    settings and state directories; ``needs_network``: it must reach a model API.
    """

    image: str
    argv: tuple[str, ...]
    version_argv: tuple[str, ...] = ()
    #: The argv of a continuation (``agentrt continue``): the same CLI resuming the
    #: conversation kept in STATE_DIR; empty: the CLI cannot resume (it starts afresh).
    resume: tuple[str, ...] = ()
    #: The argv of an interactive session (``interactive = true``): the CLI's TUI, given the
    #: prompt as its first message where it takes one; empty: the batch argv with a TTY.
    interactive: tuple[str, ...] = ()
    #: Files (path under STATE_DIR → content) written into a fresh session's data directory
    #: before its TUI first starts: the CLI's first-run answers that the container already
    #: settles (onboarding done, the workspace trusted, permission prompts off as in batch).
    tui_state: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    needs_network: bool = False
    flags: FlagsFn = _no_flags
    task_env: EnvFn = _no_env

    def command(self, prompt: str, task: Task | None = None, resume: bool = False) -> list[str]:
        """The argv for ``prompt`` with ``task``'s model and base-URL flags; ``resume``: the
        argv that continues the conversation kept from an earlier session, where the CLI has
        one; a task with ``interactive = true``: the CLI's TUI."""
        options = self.flags(task) if task is not None else []
        template = self.argv
        tui = task is not None and task.interactive and bool(self.interactive)
        if tui:
            template = self.interactive
        elif resume and self.resume:
            template = self.resume
        out: list[str] = []
        for part in template:
            if part == "{options}":
                out.extend(options)
            elif part != "{prompt}":
                out.append(part)
            elif prompt or not tui:  # a TUI with no prompt opens on an empty chat
                out.append(prompt)
        return out

    def environment(self, task: Task) -> dict[str, str]:
        """The CLI's quiet settings and state directories, plus what ``task`` asks for."""
        return {**self.env, **self.task_env(task)}


def api_base(url: str, version: bool) -> str:
    """``url`` as a CLI wants its API base, whether or not the user wrote ``/v1``. Pure.

    ``version``: the CLI appends paths after the version (``/chat/completions``, ``/responses``:
    OpenAI-style clients), so a URL with no path at all gets ``/v1``; otherwise the CLI appends
    ``/v1/...`` itself (Anthropic's clients), so one trailing ``/v1`` is taken off. Any other
    path (``/api/v1``, ``/openai/v1beta``, ...) is the server's own and is kept as written.
    """
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if version and not path:
        path = "/v1"
    elif not version and path.endswith("/v1"):
        path = path[:-3]
    return urlunsplit(parts._replace(path=path))


def _claude_flags(task: Task) -> list[str]:
    return ["--model", task.model] if task.model else []


def _claude_env(task: Task) -> dict[str, str]:
    return {"ANTHROPIC_BASE_URL": api_base(task.base_url, False)} if task.base_url else {}


CODEX_PROVIDER = "agentrt"


def _toml_string(value: str) -> str:
    # A JSON string of printable text is a valid TOML basic string (codex parses -c as TOML).
    return json.dumps(value)


def _codex_flags(task: Task) -> list[str]:
    flags = ["-c", "check_for_update_on_startup=false"]
    if task.model:
        flags += ["-m", task.model]
    if task.base_url:
        p = f"model_providers.{CODEX_PROVIDER}"
        flags += ["-c", f"model_provider={_toml_string(CODEX_PROVIDER)}",
                  "-c", f"{p}.name={_toml_string('agentrt base_url')}",
                  "-c", f"{p}.base_url={_toml_string(api_base(task.base_url, True))}",
                  "-c", f"{p}.env_key={_toml_string('CODEX_API_KEY')}"]
    return flags


def aider_is_anthropic(model: str | None) -> bool:
    """Whether aider talks to Anthropic's API for ``model`` (so base_url is Anthropic's)."""
    return bool(model) and (model or "").lower().startswith(("anthropic/", "claude", "sonnet",
                                                              "opus", "haiku"))


def _aider_flags(task: Task) -> list[str]:
    flags: list[str] = []
    if task.model:
        flags += ["--model", task.model]
    if task.base_url:
        anthropic = aider_is_anthropic(task.model)
        option = "--anthropic-api-base" if anthropic else "--openai-api-base"
        flags += [option, api_base(task.base_url, not anthropic)]
    return flags


def _aider_env(task: Task) -> dict[str, str]:
    # aider picks an edit format per model it knows (``diff``, ``udiff``, ...): a server of its
    # own (base_url) gets ``whole``, the format any model follows, so no edit is lost on a
    # reply in a shape aider did not ask for. The task's env (AIDER_EDIT_FORMAT) wins.
    return {"AIDER_EDIT_FORMAT": "whole"} if task.base_url else {}


PRESETS: dict[str, Preset] = {
    "shell": Preset("agentrt/base:latest", ("sh", "-c", "{prompt}"), ("sh", "--version")),
    "claude-code": Preset(
        "agentrt/claude-code:latest",
        ("claude", "-p", "{prompt}", "--dangerously-skip-permissions", "--output-format", "json",
         "{options}"),
        ("claude", "--version"),
        resume=("claude", "-p", "{prompt}", "--continue", "--dangerously-skip-permissions",
                "--output-format", "json", "{options}"),
        interactive=("claude", "--dangerously-skip-permissions", "{options}", "{prompt}"),
        # Without it the TUI's first start runs its onboarding, which checks api.anthropic.com
        # directly (refused behind an allowlist naming only a private base_url). An API key in
        # the environment is still offered to the person for approval: never written here.
        tui_state={".claude/.claude.json": json.dumps({
            "hasCompletedOnboarding": True, "bypassPermissionsModeAccepted": True,
            "theme": "dark",
            "projects": {"/workspace": {"hasTrustDialogAccepted": True,
                                        "hasCompletedProjectOnboarding": True}}})},
        env={"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
             "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
             "CLAUDE_CONFIG_DIR": f"{STATE_DIR}/.claude"},
        needs_network=True, flags=_claude_flags, task_env=_claude_env,
    ),
    "codex": Preset(
        "agentrt/codex:latest",
        ("codex", "exec", "--json", "--dangerously-bypass-approvals-and-sandbox", "{options}",
         "{prompt}"),
        ("codex", "--version"),
        resume=("codex", "exec", "--json", "--dangerously-bypass-approvals-and-sandbox",
                "{options}", "resume", "--last", "{prompt}"),
        interactive=("codex", "--dangerously-bypass-approvals-and-sandbox", "{options}",
                     "{prompt}"),
        # CODEX_HOME must exist when codex starts: the state directory itself does.
        env={"CODEX_HOME": STATE_DIR},
        needs_network=True, flags=_codex_flags,
    ),
    "aider": Preset(
        "agentrt/aider:latest",
        ("aider", "--yes-always", "--no-auto-commits", "{options}", "--message", "{prompt}"),
        ("aider", "--version"),
        resume=("aider", "--yes-always", "--no-auto-commits", "--restore-chat-history",
                "{options}", "--message", "{prompt}"),
        # aider's chat takes no first message on its command line (--message exits after it).
        interactive=("aider", "--yes-always", "--no-auto-commits", "{options}"),
        env={"AIDER_CHECK_UPDATE": "false", "AIDER_ANALYTICS": "false",
             "AIDER_SHOW_RELEASE_NOTES": "false", "AIDER_GITIGNORE": "false",
             "AIDER_INPUT_HISTORY_FILE": f"{STATE_DIR}/.aider.input.history",
             "AIDER_CHAT_HISTORY_FILE": f"{STATE_DIR}/.aider.chat.history.md"},
        needs_network=True, flags=_aider_flags, task_env=_aider_env,
    ),
}

# Files agent CLIs keep in the repository's top directory whatever they are told (aider's repo
# map cache ``.aider.tags.cache.v4/``; its history files, should a task's env move them back).
# The harvest leaves them out of every session's snapshot (runtime/git/harvest.py), so they
# never reach a branch; a tracked file of these names is harvested as usual.
STATE_EXCLUDES = ("/.aider*", "!/.aiderignore")

# Secrets a preset's CLI reads under another name: (variable it reads, task secrets to take it
# from, in order). codex exec authenticates with CODEX_API_KEY.
SECRET_ALIASES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "codex": (("CODEX_API_KEY", ("CODEX_API_KEY", "OPENAI_API_KEY")),),
}


def resolve_command(task: Task, resume: bool = False) -> list[str]:
    """The argv a task runs: its ``command``, else its preset's template (``resume``: the
    template continuing an earlier session's conversation, for ``agentrt continue``)."""
    if task.command:
        return list(task.command)
    if task.agent is None:
        raise ValueError(f"task {task.id!r} has neither command nor agent")
    return PRESETS[task.agent].command(task.prompt, task, resume=resume)


def resolve_env(task: Task) -> dict[str, str]:
    """The environment a task's preset sets (empty for a task with its own ``command``);
    the task's own ``env`` is applied over it."""
    if task.command or task.agent is None:
        return {}
    return PRESETS[task.agent].environment(task)


def resolve_secrets(task: Task, values: Mapping[str, str]) -> dict[str, str]:
    """``values`` (the task's secrets) plus the names the preset's CLI reads them under."""
    out = dict(values)
    if task.command or task.agent is None:
        return out
    for wanted, sources in SECRET_ALIASES.get(task.agent, ()):
        found = next((values[name] for name in sources if name in values), None)
        if wanted not in out and found is not None:
            out[wanted] = found
    return out


def needs_network(task: Task) -> bool:
    """Whether the task runs an agent CLI that must reach its model API."""
    return task.command is None and task.agent is not None and PRESETS[task.agent].needs_network


def resolve_image(task: Task, default: str) -> str:
    """The image a task runs in: its own, else its preset's, else the run's default."""
    if task.image:
        return task.image
    if task.agent and task.agent != "shell":
        return PRESETS[task.agent].image
    return default
