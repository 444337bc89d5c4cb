"""The design's process-based pattern, as its sketch writes it: a harness on this host works in
an isolated session's workspace, and its edits come home onto the session's branch when the
``with`` block ends (no ``session.run`` needed).

    python examples/design_sketch.py [REPO]      # REPO: a git repository (default: here)

Only the sketch's placeholders are filled in: ``InnerHarness`` is a tiny harness that edits
files, ``session_id``, ``base_workspace`` and ``task`` are plain values. CI runs this file
(tests/integration/test_design_as_written.py) against a real engine.
"""

from __future__ import annotations

import sys
from pathlib import Path

from runtime import IsolatedAgentSession


class InnerHarness:
    """Stands in for an agent harness running in this process: it edits the files of the
    workspace it is given, on this host."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace

    def run(self, task: str) -> None:
        """Do ``task``: here, note it in NOTES.md (made if missing)."""
        notes = self.workspace / "NOTES.md"
        before = notes.read_text() if notes.exists() else "# Notes\n"
        notes.write_text(f"{before}- {task}\n")


session_id = "fix-parser"
base_workspace = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
task = "Fix the parser's handling of empty input"

with IsolatedAgentSession(session_id, base_workspace) as session:
    InnerHarness(workspace=session.workspace).run(task)

result = session.result
print(session.session_id, session.branch, result.status.value, result.work.value,  # noqa: T201
      result.head_commit)
sys.exit(0 if result.status.value == "succeeded" and result.work.value == "home" else 1)
