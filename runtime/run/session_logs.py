"""A session's saved log: the agent's output written to disk as it arrives (secrets redacted,
a flood's middle dropped) and read back by ``logs``, ``last_line`` and the usage report.

:class:`SessionLogs` is a mixin of :class:`~runtime.run.session.IsolatedAgentSession`; the
Swarm session overrides :meth:`SessionLogs._start_log_keeper` to follow its service instead.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from runtime import paths
from runtime.config import Task, secret_values
from runtime.engine.container import AgentContainer, AgentRunner, OutputStream
from runtime.errors import AgentRuntimeError
from runtime.git.safe_git import MainRepo
from runtime.models import SessionResult
from runtime.state.log_keeper import LogKeeper
from runtime.text import strip_ansi

# How long the end of a session waits for its output to be read to the end.
LOG_DRAIN_SECONDS = 120
# The same, when the engine was lost (the stream is what is left of it).
LOST_ENGINE_DRAIN_SECONDS = 2


class SessionLogs:
    """The saved-log half of a session: open, follow, finish and read its output."""

    _log_keeper: LogKeeper | None
    _log_stream: OutputStream | None
    _log_thread: threading.Thread | None

    if TYPE_CHECKING:
        task: Task
        repo: MainRepo
        session_id: str
        result: SessionResult
        container: AgentRunner | None

    @property
    def log_path(self) -> Path:
        """Where the agent's output is kept after its container is gone."""
        return paths.log_path(self.repo.state_dir, self.session_id)

    def _open_log_keeper(self) -> LogKeeper | None:
        """The saved log: redacted with this process's secrets; first and last megabytes."""
        try:
            self._log_keeper = LogKeeper(self.log_path, self._secret_values())
        except OSError as exc:
            self.result.warnings.append(f"the output could not be saved: {exc}")
        return self._log_keeper

    def stand_by(self) -> None:
        """Attach to the created container's output now (a session prepared ahead), so that
        starting it is all that is left."""
        self._start_log_keeper()

    def _start_log_keeper(self) -> None:
        """Attach to the container (before it starts) and write its output to the saved log;
        once."""
        if not isinstance(self.container, AgentContainer) or self._log_keeper is not None:
            return
        keeper = self._open_log_keeper()
        if keeper is None:
            return
        try:
            stream = self._log_stream = self.container.attach_output()
        except AgentRuntimeError as exc:
            keeper.note(f"could not attach to the output: {exc}")
            return

        def pump() -> None:
            try:
                for chunk in stream:
                    keeper.write(chunk)
            except Exception as exc:  # noqa: BLE001 - the engine went away: say so in the log
                keeper.note(f"the output stream broke: {exc}")
            finally:
                stream.close()

        self._log_thread = threading.Thread(target=pump, name=f"agentrt-log-{self.session_id}",
                                            daemon=True)
        self._log_thread.start()

    def _save_logs(self) -> None:
        """Finish the saved log (the stream ends with the container), or save it in one go."""
        if self._log_thread is not None:
            # A container given up with its engine: its stream may never end; do not wait.
            watch = getattr(self, "watch", None)
            gone = watch is not None and watch.engine_gone
            self._log_thread.join(timeout=LOST_ENGINE_DRAIN_SECONDS if gone else LOG_DRAIN_SECONDS)
            if self._log_thread.is_alive() and self._log_keeper is not None:
                self._log_keeper.note("the rest of the output was not read in time")
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
        # A terminal's output (an interactive session) is mostly escape sequences: dropped.
        lines = [ln for ln in strip_ansi(data.decode(errors="replace")).splitlines()
                 if ln.strip()]
        text = "".join(ch for ch in (lines[-1] if lines else "") if ch.isprintable())
        return text if len(text) <= width else text[: width - 1] + "…"

