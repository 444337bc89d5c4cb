"""A session's saved log: the agent's output written to disk as it arrives (secrets redacted,
a flood's middle dropped; its backend follows the output) and read back by ``logs``,
``last_line`` and the usage report.

:class:`SessionLogs` is a mixin of :class:`~runtime.run.session.IsolatedAgentSession`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from runtime import paths
from runtime.backends.base import AgentRun, Backend
from runtime.config import Task, secret_values
from runtime.engine.container import AgentRunner
from runtime.git.safe_git import MainRepo
from runtime.models import SessionResult
from runtime.state.log_keeper import LogKeeper


class SessionLogs:
    """The saved-log half of a session: open, follow, finish and read its output."""

    _log_keeper: LogKeeper | None

    if TYPE_CHECKING:
        task: Task
        repo: MainRepo
        session_id: str
        result: SessionResult
        container: AgentRunner | None
        agent: AgentRun | None

        @property
        def backend(self) -> Backend: ...

    @property
    def log_path(self) -> Path:
        """Where the agent's output is kept after its container is gone."""
        return paths.log_path(self.repo.state_dir, self.session_id)

    def _open_log_keeper(self) -> LogKeeper | None:
        """The saved log: redacted with this process's secrets; first and last megabytes;
        opened once."""
        if self._log_keeper is not None:
            return self._log_keeper
        try:
            self._log_keeper = LogKeeper(self.log_path, self._secret_values())
        except OSError as exc:
            self.result.warnings.append(f"the output could not be saved: {exc}")
        return self._log_keeper

    def stand_by(self) -> None:
        """Attach to the created agent's output now (a session prepared ahead), so that
        starting it is all that is left."""
        keeper = self._open_log_keeper()
        if keeper is not None and self.container is not None:
            self.backend.stand_by(self.container, keeper)

    def _save_logs(self) -> None:
        """Finish the saved log (its backend waits for the rest of the output a while)."""
        if self.agent is not None:
            self.agent.end_output()
        keeper = self._log_keeper
        if keeper is not None:
            keeper.close()
            if keeper.error:
                self.result.warnings.append(f"the output was not saved in full: {keeper.error}")

    def _secret_values(self) -> list[str]:
        return list(secret_values(self.task.secrets).values())

    def logs(self) -> bytes:
        """The saved output so far (secret values redacted; a flood's middle dropped)."""
        try:
            return self.log_path.read_bytes()
        except OSError:
            return b""

    def last_line(self, width: int = 60) -> str:
        """The agent's latest output line: secrets redacted, control characters dropped."""
        keeper = self._log_keeper
        if keeper is None:
            return ""
        data = keeper.recent(1024)
        lines = [ln for ln in data.decode(errors="replace").splitlines() if ln.strip()]
        text = "".join(ch for ch in (lines[-1] if lines else "") if ch.isprintable())
        return text if len(text) <= width else text[: width - 1] + "…"

