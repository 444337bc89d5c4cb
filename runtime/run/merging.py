"""Merging from the run's side: the public ``merge_agent_results``, the one merge order, and
merging a finished run from the state store (the git work itself is :mod:`runtime.git.merge`).

``agentrt run`` (through the coordinator) and ``agentrt merge RUN`` both merge in the order
:func:`merge_order` gives, so a run merged later lands exactly as it would have at its end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from runtime import paths
from runtime.config import MergeStrategy
from runtime.errors import AgentRuntimeError, ConfigError, NotFoundError
from runtime.git.merge import Gate, merge_branches, resolve_target
from runtime.git.safe_git import MainRepo
from runtime.models import RunReport, SessionResult, SessionStatus
from runtime.state.store import Store

log = logging.getLogger(__name__)


def merge_order(sessions: Sequence[SessionResult]) -> list[SessionResult]:
    """Sessions in the order their branches are merged: by finish time, unfinished last. Pure.

    A dependency always finishes before its dependents start, so this order respects the DAG.
    """
    never = datetime.max.replace(tzinfo=None)

    def key(session: SessionResult) -> tuple[bool, datetime]:
        finished = session.finished_at
        return (finished is None, finished.replace(tzinfo=None) if finished else never)

    return sorted(sessions, key=key)


def merge_run(repo: MainRepo, store: Store, run_id: str, strategy: MergeStrategy,
              target: str | None = None, *, gate: bool = True) -> RunReport:
    """Merge (``auto``) or check (``review``) a recorded run's branches; store the outcome.

    An automatic merge honours the run's recorded ``merge_gate`` (and its tasks' own);
    ``gate=False`` lands without running it and records each gate as ``skipped``."""
    run = store.latest_run() if run_id == "latest" else store.find_run(run_id)
    if run is None:
        raise NotFoundError("no runs recorded yet")
    report = store.run_report(run.id)
    into = target or report.target
    if not into:
        raise ConfigError("no target branch: pass --target")
    merge_agent_results(merge_order(report.sessions), strategy, repo=repo, target=into,
                        run_id=run.id,
                        gate=recorded_gate(repo, store, run.id, skip=not gate)
                        if strategy == "auto" else None)
    # merge_agent_results recorded each session's outcome; the run's strategy is written
    # here too, for a run none of whose sessions had anything to merge.
    store.set_run_merge(run.id, strategy, into)
    report.merge = strategy
    report.target = into
    return report


def merge_sessions(repo: MainRepo, store: Store, session_ids: Sequence[str],
                   strategy: MergeStrategy, target: str | None = None, *,
                   gate: bool = True) -> RunReport:
    """Merge (``auto``) or check (``review``) the named sessions only, in merge order, with the
    same safety as a run's merge (and its recorded gate); store each outcome.

    The sessions may belong to different runs; each is merged into ``target``, else its run's
    target. The report holds just these sessions (under the first one's run)."""
    rows = [store.get_session(sid) for sid in dict.fromkeys(session_ids)]
    if not rows:
        raise ConfigError("name at least one session")
    runs = {row.run_id: store.find_run(row.run_id) for row in rows}
    merged: list[SessionResult] = []
    for run_id, run in runs.items():
        results = merge_order([row.result for row in rows if row.run_id == run_id])
        into = target or run.target
        if not into:
            raise ConfigError(f"run {run_id} has no target branch: pass --target")
        # merge_agent_results records each outcome in the state database.
        merge_agent_results(results, strategy, repo=repo, target=into, run_id=run_id,
                            gate=recorded_gate(repo, store, run_id, skip=not gate)
                            if strategy == "auto" else None)
        merged.extend(results)
    report = store.run_report(rows[0].run_id)
    report.sessions = merged
    report.merge = strategy
    report.target = target or report.target
    return report


def merge_agent_results(
    sessions_or_results: MergeInput,
    strategy: MergeStrategy = "review",
    repo: MainRepo | str | Path | None = None,
    *,
    target: str | None = None,
    run_id: str = "",
    gate: Gate | None = None,
) -> list[SessionResult]:
    """Fill ``session.merge`` for every succeeded session; return their results.

    ``sessions_or_results`` is a list of :class:`SessionResult` objects and/or
    :class:`~runtime.run.session.IsolatedAgentSession` objects (their ``result`` is used), or a
    :class:`RunReport` (its sessions). ``repo`` defaults to the sessions' repository (or the
    report's); it must be given for bare results. ``run_id`` (for the merge commits' messages)
    defaults to the report's or the sessions' run.

    Whatever the strategy, a session whose work is not on its branch (``work`` kept, refused
    or lost), or whose branch no longer carries its ``head_commit``, is ``not_merged`` with
    the reason (``merge.reason``) and never merged: a branch left at its base is contained in
    the target, but that says nothing of where the session's work is.

    * ``none``: nothing is checked; every other ``merge.status`` stays ``not_attempted``.
    * ``review``: each branch is checked against ``target`` (``clean`` or ``conflicts``) and
      against every other succeeded branch; nothing is merged. Conflicts with another branch
      carry ``with_branch``; conflicts with the target have ``with_branch=None``. A session is
      ``conflicts`` if it has either kind, since the two branches cannot both merge cleanly.
    * ``auto``: branches are merged one at a time in the order given (the caller puts
      dependencies first, then finish time), each checked against the target as it is after the
      previous merges. A clean one becomes a merge commit (``merged``, ``merge_commit`` set); a
      branch the target already contains is ``merged`` with no new commit; a conflicting one is
      left on its branch as ``conflicts``. In directory mode the merged files are written into
      the folder, and a session whose files changed in the folder meanwhile is ``conflicts``.
      With a ``gate`` (:class:`~runtime.run.merge_gate.MergeGate`), each clean merge lands
      only if the gate passes on it (else ``gate_failed``, the target unmoved).

    Sessions recorded in the repository's state database get their outcome recorded there (so
    ``agentrt report`` shows it), and their run the strategy and target.

    ``target`` defaults to the branch checked out in the repository. Sessions that did not
    succeed are left untouched. Raises :class:`MergeError` if git fails, a branch or the target
    does not exist, or (auto) the target is checked out with uncommitted tracked changes or in
    a linked worktree; in those cases nothing is changed. Merges that landed before an error
    stay, and their sessions say so. :class:`ConfigError` if ``target`` is no valid branch
    name, an argument is of the wrong kind, or the repository cannot be inferred.
    """
    results, inferred, inferred_run = _inputs(sessions_or_results)
    if repo is None and inferred is None:
        raise ConfigError("merge_agent_results: pass repo= (SessionResult objects do not say "
                          "which repository they belong to; sessions and reports do)")
    if repo is not None and not isinstance(repo, MainRepo | str | os.PathLike):
        raise ConfigError(f"repo must be a path or a MainRepo, not {type(repo).__name__}")
    main = repo if isinstance(repo, MainRepo) else (
        MainRepo(repo) if repo is not None else inferred)
    if main is None:  # pragma: no cover - ruled out above
        raise ConfigError("merge_agent_results: no repository")
    if strategy not in ("review", "auto"):
        merge_branches(results, strategy, main, target)  # "none", or refused by name
        return results
    target = resolve_target(main, target)
    todo = [s for s in results if s.status == SessionStatus.SUCCEEDED or s.work.off_branch]
    try:
        merge_branches(results, strategy, main, target, run_id or inferred_run,
                       landed=lambda landed: record_outcomes(main, [landed], strategy, target),
                       gate=gate)
    finally:
        if todo:
            record_outcomes(main, todo, strategy, target)
    return results


MergeInput = RunReport | Sequence[object]


def recorded_gate(repo: MainRepo, store: Store, run_id: str, *,
                  skip: bool = False) -> Gate | None:
    """The merge gate of a recorded run (its config and its sessions' tasks), or None when
    neither the run nor any task has one."""
    from runtime.config import RunConfig, Task
    from runtime.run.merge_gate import MergeGate

    config = RunConfig.model_validate_json(store.find_run(run_id).config_json)
    tasks = {row.task_id: Task.model_validate(row.manifest.task)
             for row in store.list_sessions(run_id=run_id) if row.manifest is not None}
    if not config.merge_gate and not any(t.merge_gate for t in tasks.values()):
        return None
    return MergeGate(repo, config, tasks, skip=skip)


def _inputs(value: object) -> tuple[list[SessionResult], MainRepo | None, str]:
    """The results in ``value``, and the repository and run they name (if any)."""
    if isinstance(value, RunReport):
        return list(value.sessions), MainRepo(value.repo), value.run_id
    if isinstance(value, str | bytes | SessionResult) or not isinstance(value, Sequence):
        raise ConfigError("merge_agent_results takes a list of sessions or SessionResult "
                          f"objects, or a RunReport, not {type(value).__name__}")
    results: list[SessionResult] = []
    repos: dict[Path, MainRepo] = {}
    runs: set[str] = set()
    for index, item in enumerate(value):
        if isinstance(item, SessionResult):
            results.append(item)
            continue
        result, repo = getattr(item, "result", None), getattr(item, "repo", None)
        if not isinstance(result, SessionResult) or not isinstance(repo, MainRepo):
            raise ConfigError(f"sessions_or_results[{index}] must be an IsolatedAgentSession "
                              f"or a SessionResult, not {type(item).__name__}")
        results.append(result)
        repos.setdefault(repo.git_dir, repo)
        runs.add(str(getattr(item, "run_id", "")))
    if len(repos) > 1:
        raise ConfigError("merge_agent_results: the sessions belong to different repositories: "
                          + ", ".join(sorted(str(r.root) for r in repos.values())))
    return results, next(iter(repos.values()), None), runs.pop() if len(runs) == 1 else ""


def record_outcomes(repo: MainRepo, results: list[SessionResult], strategy: str,
                    target: str) -> None:
    """Write the merge outcome of every session the state database knows; best effort (a
    merge that landed is never undone because its record could not be written)."""
    path = paths.state_db(repo.state_dir)
    if not path.exists():
        return
    from runtime.state.store import Store

    try:
        with Store(path) as store:
            runs: set[str] = set()
            for result in results:
                try:
                    row = store.get_session(result.id)
                except NotFoundError:
                    continue
                store.upsert_session(result, row.run_id)
                runs.add(row.run_id)
            for run in sorted(runs):
                store.set_run_merge(run, strategy, target)
    except AgentRuntimeError as exc:
        log.warning("merge outcome not recorded in %s: %s", path, exc)
