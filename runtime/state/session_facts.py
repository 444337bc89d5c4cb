"""What a live session and recovery both rely on: the marker a session writes into its
directory (:class:`SessionMarker`, read by gc, repair, traces and doctor), the start and finish
times in the engine's record of its container, and the import policy its work is checked
against when it is brought home."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from runtime.config import RunConfig, secret_values
from runtime.git.bundle import ImportPolicy

SESSION_FILE = "session.json"


def engine_times(state: Mapping[str, Any]) -> tuple[datetime | None, datetime | None]:
    """A container's start and finish times from its engine ``State`` (None when unset)."""
    return _engine_time(state.get("StartedAt")), _engine_time(state.get("FinishedAt"))


def _engine_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value or value.startswith("0001-"):
        return None
    text = value.replace("Z", "+00:00")
    whole, _, rest = text.partition(".")
    if rest:
        digits = "".join(itertools.takewhile(str.isdigit, rest))
        text = f"{whole}.{digits[:6].ljust(6, '0')}{rest[len(digits):]}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


#: How many times its ``disk_mb`` a session's work may take once checked out.
CHECKOUT_FACTOR = 2


def import_policy(config: RunConfig, secret_names: list[str],
                  disk_mb: int | None = None) -> ImportPolicy:
    """The bundle import policy of a run, with the values of the task's secrets; a checkout
    of the work may write at most :data:`CHECKOUT_FACTOR` times the session's ``disk_mb``
    (default: the run's): a soft limit's overshoot (it is measured, not enforced by the
    kernel) never refuses honest work, while one blob at many paths, or a sparse file, many
    times the volume, still is."""
    return ImportPolicy(
        max_import_bytes=config.max_import_mb * 1024 * 1024,
        max_file_bytes=config.max_file_mb * 1024 * 1024,
        secrets=secret_values(secret_names),
        max_checkout_bytes=CHECKOUT_FACTOR * (disk_mb or config.resource_limits.disk_mb)
        * 1024 * 1024,
    )


@dataclass
class SessionMarker:
    """What the session directory says about its session (written before the agent starts)."""

    session_id: str
    run_id: str
    branch: str
    owner_pid: int | None
    owner_start_time: float | None
    keep: bool = False
    base_commit: str = ""
    uid: int = 1000
    gid: int = 1000
    checked_out: bool = False
    work_kept: bool = False
    engine_volume: str = ""  # the named volume on an engine that does not share our disk
    node_id: str = ""  # engine = "swarm": the node holding the volume
    volume_root: str = ""  # engine = "swarm": the volume's mount point on that node

    def write(self, session_dir: Path) -> None:
        """Store the marker in ``session_dir``."""
        (session_dir / SESSION_FILE).write_text(json.dumps(self.__dict__))

    @classmethod
    def read(cls, session_dir: Path) -> SessionMarker | None:
        """The marker of ``session_dir``, or None if missing or unreadable."""
        with contextlib.suppress(OSError, ValueError, TypeError):
            return cls(**json.loads((session_dir / SESSION_FILE).read_text()))
        return None
