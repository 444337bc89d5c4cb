"""The run's final record, and saying so loudly when the state database could not keep it.

A run writes its rows as it goes; the database can fail under it (a write refused, the file
truncated or garbled by something else: SQLite in WAL mode keeps accepting writes into its log
while the main file is gone, so no error need surface). :func:`record_final_report`, at the
end of a run:

1. turns every write that failed during the run (the store counts them) into a run warning and
   ``state_error`` (the run exits 1);
2. writes the final rows, then opens the database afresh, as the next ``agentrt`` command will,
   and reads the run back: a database that cannot be opened or lost the run is
   ``state_error`` too;
3. when the record did not take, writes the report as JSON beside the database,
   ``<state dir>/reports/<run id>.json`` (else in the system's temporary directory), and says
   where in a warning, so the account of each session's work outlives the terminal.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from runtime.errors import AgentRuntimeError
from runtime.models import RunReport
from runtime.state.store import Store

log = logging.getLogger(__name__)

REPAIR = "`agentrt ps` and `agentrt report` may be wrong (`agentrt gc --repair-state`)"


def record_final_report(store: Store, report: RunReport) -> None:
    """Store ``report`` as the run's final record (see the module docstring); never raises
    for the database's sake: the report is still returned and printed."""
    failed = list(store.write_failures)
    if failed:
        report.state_error = f"{len(failed)} write(s) failed during the run: {failed[0]}"
        report.warnings.append(f"state database: {report.state_error}; {REPAIR}")
    status = "interrupted" if report.interrupted else "finished"
    try:
        store.finish_run(report.run_id, status, warnings=report.warnings)
        for session in report.sessions:
            store.upsert_session(session, report.run_id)
        with Store(store.path) as fresh:  # what the next command will find
            fresh.find_run(report.run_id)
    except AgentRuntimeError as exc:
        report.state_error = report.state_error or f"the final record was not kept: {exc}"
        where = save_side_report(store.path.parent, report)
        report.warnings.append(f"state database: this report was not saved: {exc}; "
                               + (f"it is in {where}" if where else REPAIR))
        log.error("state database: %s", exc)


def save_side_report(state_dir: Path, report: RunReport) -> Path | None:
    """Write ``report`` as JSON next to the state database (else in the temporary directory);
    the path written, or None when neither place could take it."""
    text = report.model_dump_json(indent=2)
    for folder in (state_dir / "reports", Path(tempfile.gettempdir()) / "agentrt-reports"):
        path = folder / f"{report.run_id}.json"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            log.warning("cannot write the run's report to %s: %s", path, exc)
            continue
        return path
    return None
