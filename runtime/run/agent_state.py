"""An interactive session's agent CLI, past its first-run questions.

A preset's :attr:`~runtime.presets.Preset.tui_state` files are written into a *fresh*
session's data directory (``/agentrt/db`` on its volume, made by agentrt a moment before, never
yet seen by an agent) before the agent first starts, owned by the agent's uid. A continuation's
data directory holds what an agent wrote (the carried state), so nothing is written there: the
host never opens a path an agent could have written (``docs/security.md``), and the carried
configuration already has its answers. On an engine that does not share agentrt's disk the data
directory is out of reach and the CLI asks its questions in the terminal.
"""

from __future__ import annotations

import os
from pathlib import Path

from runtime.presets import PRESETS
from runtime.task import Task


def seed_tui_state(task: Task, db_dir: Path | None, uid: int, gid: int) -> None:
    """Write ``task``'s preset TUI files under ``db_dir`` (a fresh session's data directory on
    this host), if the task is interactive and has a preset that wants them."""
    if db_dir is None or not task.interactive or task.command or task.agent is None:
        return
    for relative, content in PRESETS[task.agent].tui_state.items():
        path = db_dir / relative
        for parent in reversed(path.relative_to(db_dir).parents[:-1]):
            directory = db_dir / parent
            directory.mkdir(mode=0o700, exist_ok=True)
            if os.geteuid() == 0:
                os.lchown(directory, uid, gid)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, content.encode())
            if os.geteuid() == 0:
                os.fchown(fd, uid, gid)
        finally:
            os.close(fd)
