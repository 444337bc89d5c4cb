"""Reads of a *running* session's tree, made inside its own container (``docker exec``).

The conflict radar and ``agentrt diff`` of a live session need to know what the agent changed
while it works. The host never opens the agent's tree: the question is asked inside the
session's container, as the agent's uid, with ``/`` as the working directory (never a directory
the agent controls), a private index on the container's own ``/tmp`` and agentrt's safe git
settings. Whatever comes back (paths, diff text) is the agent's to choose: callers treat it as
untrusted text and sanitise it before any terminal shows it.
"""

from __future__ import annotations

import shlex

from runtime.engine.container import AgentContainer
from runtime.presets import STATE_EXCLUDES

EXEC_TIMEOUT_SECONDS = 20
MAX_OUTPUT = 8 * 1024 * 1024

# The agent CLIs' own state (runtime.presets.STATE_EXCLUDES) is left out, as the harvest does.
_PREPARE = """
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null HOME=/tmp GIT_TERMINAL_PROMPT=0
export GIT_OPTIONAL_LOCKS=0 LC_ALL=C GIT_INDEX_FILE=/tmp/.agentrt-live.index
printf '%s\\n' @STATE_EXCLUDES@ > /tmp/.agentrt-live.exclude
g() {
  git -c core.hooksPath=/dev/null -c core.fsmonitor=false -c core.untrackedCache=false \\
      -c core.excludesFile=/tmp/.agentrt-live.exclude \\
      -c core.pager=cat -c diff.external= -c submodule.recurse=false -c gc.auto=0 \\
      -c advice.addEmbeddedRepo=false --git-dir=/workspace/.git --work-tree=/workspace "$@"
}
g read-tree "$1" && g add -A -N --ignore-errors -- . >/dev/null 2>&1
""".replace("@STATE_EXCLUDES@", " ".join(shlex.quote(p) for p in STATE_EXCLUDES))


def _exec(container: AgentContainer, user: str, script: str, base: str) -> bytes:
    """Run ``script`` (sh, ``$1`` = base) in the live container; its stdout, capped."""
    command = ["timeout", str(EXEC_TIMEOUT_SECONDS), "sh", "-c",
               f"{script} | head -c {MAX_OUTPUT}", "agentrt-live", base]
    return container.exec_output(command, user)


def changed_paths(container: AgentContainer, user: str, base: str) -> set[str]:
    """Paths the live session changed against ``base`` (committed or not; untrusted text)."""
    script = _PREPARE + 'g diff --name-only -z --no-renames --no-ext-diff "$1" --'
    data = _exec(container, user, script, base)
    return {p for p in data.decode(errors="replace").split("\0") if p}


def live_diff(container: AgentContainer, user: str, base: str, stat: bool = False) -> bytes:
    """``git diff <base>`` of the live session's working tree, new files included."""
    flags = "--stat" if stat else ""
    script = _PREPARE + f'g diff --no-ext-diff --no-textconv --no-color {flags} "$1" --'
    return _exec(container, user, script, base)
