"""A session's saved log: the agent's output written to disk as it arrives (secrets redacted,
a flood's middle dropped; its backend follows the output) and read back by ``logs``,
``last_line`` and the usage report.

:class:`SessionLog` is owned by :class:`~runtime.run.session.IsolatedAgentSession` (one each).
"""

from __future__ import annotations

from pathlib import Path

from runtime.backends.base import AgentRun
from runtime.models import SessionResult
from runtime.state.log_keeper import LogKeeper
from runtime.text import strip_ansi


class SessionLog:
    """The log keeper of one session: opened once, written as the output comes, finished when
    the agent ended, read back."""

    def __init__(self, path: Path, secret_values: list[str], result: SessionResult) -> None:
        self.path = path
        self._secrets = secret_values
        self._result = result
        self.keeper: LogKeeper | None = None

    def open(self) -> LogKeeper | None:
        """The saved log: redacted with this process's secrets; first and last megabytes;
        opened once (None when it cannot be written: the result says so)."""
        if self.keeper is not None:
            return self.keeper
        try:
            self.keeper = LogKeeper(self.path, self._secrets)
        except OSError as exc:
            self._result.warnings.append(f"the output could not be saved: {exc}")
        return self.keeper

    def finish(self, agent: AgentRun | None) -> None:
        """Finish the saved log (its backend waits for the rest of the output a while)."""
        if agent is not None:
            agent.end_output()
        keeper = self.keeper
        if keeper is not None:
            keeper.close()
            if keeper.error:
                self._result.warnings.append(f"the output was not saved in full: {keeper.error}")

    def read(self) -> bytes:
        """The saved output so far (secret values redacted; a flood's middle dropped)."""
        try:
            return self.path.read_bytes()
        except OSError:
            return b""

    def last_line(self, width: int = 60) -> str:
        """The agent's latest output line: secrets redacted, control characters dropped."""
        keeper = self.keeper
        if keeper is None:
            return ""
        data = keeper.recent(1024)
        # A terminal's output (an interactive session) is mostly escape sequences: dropped.
        lines = [ln for ln in strip_ansi(data.decode(errors="replace")).splitlines()
                 if ln.strip()]
        text = "".join(ch for ch in (lines[-1] if lines else "") if ch.isprintable())
        return text if len(text) <= width else text[: width - 1] + "…"
