"""AgentCoordinator: many tasks, at most ``max_concurrent`` containers, dependencies, cancel.

Each task runs in its own thread inside an :class:`IsolatedAgentSession`; a slot is held from
the session's start until its result is final (work home), so running containers never exceed
the limit; the thread then releases the session's resources while the slot is filled again.
Tasks waiting for a slot are prepared ahead (:mod:`runtime.run.warm_pool`). A task with ``deps``
starts from the base with its dependencies' branches merged in (a conflict skips it).
Per-task failures never stop the run; :meth:`cancel` stops everything and keeps the work.

A live run takes more tasks while it goes (:meth:`AgentCoordinator.submit`, or `agentrt add`
from another process through the state database, :mod:`runtime.run.added_tasks`), under the
same checks, limit, dependency rules, radar and merge. A run started with ``keep_open`` (or
:meth:`AgentCoordinator.start`) stays open after its tasks end until :meth:`close`; otherwise
it takes tasks until its last task ends. See docs/python-api.md and docs/mcp.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, get_args

from runtime import paths
from runtime.backends.recovery import reconcile_on_start
from runtime.backends.registry import open_backend
from runtime.config import RunConfig, Task, with_default_agent
from runtime.engine.egress import RunEgress
from runtime.engine.labels import LABEL_OWNER_PID, LABEL_OWNER_START, LABEL_REPO
from runtime.engine.types import EngineClient
from runtime.errors import AgentRuntimeError, ConfigError
from runtime.git.directory_mode import open_repo
from runtime.git.object_store import remove_run_stores
from runtime.git.safe_git import MainRepo
from runtime.git.workspace import DependencyConflictError, new_session_id
from runtime.models import LiveStat, RunReport, SessionResult, SessionStatus, settle_merge, utcnow
from runtime.run.added_tasks import take_requests
from runtime.run.api_args import as_max_concurrent, as_repo, as_run_config, as_tasks
from runtime.run.budget import RunBudget, Spent, refusal, tokens_of
from runtime.run.continuation import Continuation
from runtime.run.dep_notes import remove_dep_notes
from runtime.run.environments import EnvImage
from runtime.run.identity import new_run_id
from runtime.run.live_run import LiveSessions
from runtime.run.network_preflight import uses_allowlist
from runtime.run.preflight import check_run
from runtime.run.run_sessions import RunSessions
from runtime.run.scheduler import DagScheduler, TaskState
from runtime.run.session import IsolatedAgentSession
from runtime.run.session_end import STOP_REQUESTED
from runtime.state.liveness import process_start_time
from runtime.state.run_record import record_final_report
from runtime.state.store import Store
from runtime.task import AgentPreset

if TYPE_CHECKING:
    from runtime.backends.base import Backend

log = logging.getLogger(__name__)

Listener = Callable[[str, SessionResult], None]
#: What the scheduling loop hears: a session's end, a task added, or a wake-up (None).
Message = tuple[str, SessionResult] | Task | None
#: Seconds between two looks at the state database for requests of other processes
#: (`agentrt stop RUN`, `agentrt add RUN`).
REQUEST_POLL_S = 1.0

_OUTCOME = {
    SessionStatus.SUCCEEDED: TaskState.SUCCEEDED,
    SessionStatus.CANCELLED: TaskState.CANCELLED,
    SessionStatus.SKIPPED: TaskState.SKIPPED,
}


class AgentCoordinator:
    """Runs tasks as isolated sessions with a concurrency limit and a dependency DAG."""

    def __init__(
        self,
        max_concurrent: int | None = None,
        *,
        config: RunConfig | Mapping[str, Any] | None = None,
        repo: str | os.PathLike[str] | MainRepo = ".",
        client: EngineClient | None = None,
        stop_grace_seconds: int = 10,
        listener: Listener | None = None,
        default_agent: AgentPreset | None = None,
        budget: RunBudget | None = None,
    ) -> None:
        base = as_run_config(config)
        max_concurrent = as_max_concurrent(max_concurrent)
        if max_concurrent is not None:
            base = base.model_copy(update={"max_concurrent_agents": max_concurrent})
        if default_agent is not None and default_agent not in get_args(AgentPreset):
            raise ConfigError(f"default_agent must be one of {', '.join(get_args(AgentPreset))}"
                              f", not {default_agent!r}")
        self.config = base
        # Runs prompts that name no command or agent; None: the config's [run] agent.
        self.default_agent: AgentPreset | None = default_agent or base.agent
        where = as_repo(repo)
        self.repo = where if isinstance(where, MainRepo) else open_repo(
            where, base.isolation_strategy)
        self.stop_grace_seconds = stop_grace_seconds
        self.run_id = new_run_id()
        self._client = client
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        # Its live sessions, their stats and the radar; the listener hears every change.
        self.live = LiveSessions(self.repo, self.config, listener)
        # Where the run's sessions run (runtime/backends/): opened when the run starts.
        self.backend: Backend | None = None
        self._checked: tuple[list[str], str] | None = None
        self.store: Store | None = None
        self.egress: RunEgress | None = None
        self._seeded = False
        # The run's sessions, made alike (made when the run starts).
        self._sessions: RunSessions | None = None
        # `agentrt continue` (runtime/run/continuation.py): task id → the session it continues.
        self.continuations: dict[str, Continuation] = {}
        # Environments (docs/environments.md): built in preflight; build_log shows the steps.
        self.build_log: Callable[[str], None] | None = None
        self._env_images: dict[str, EnvImage] = {}
        # The live run (submit/close): every task by id in order, guarded by _lock.
        self.budget = budget or RunBudget()
        self._inbox: queue.Queue[Message] = queue.Queue()
        self._tasks: dict[str, Task] = {}
        self._results: dict[str, SessionResult] = {}
        self._task_base: dict[str, str] = {}
        self._accepting = False
        self._keep_open = False
        self._closed = threading.Event()
        self._opened = threading.Event()
        self._added_seen = 0
        self._stop_seen = 0
        self._base_commit = ""
        self._runner: threading.Thread | None = None
        self._outcome: RunReport | BaseException | None = None

    @property
    def listener(self) -> Listener | None:
        """Told of every change of a session (``starting``, ``running``, ``finished``, ...)."""
        return self.live.listener

    @listener.setter
    def listener(self, listener: Listener | None) -> None:
        self.live.listener = listener

    def live_stats(self) -> dict[str, LiveStat]:
        """What each running session uses now, against its limits (for the live view)."""
        return self.live.stats()

    def live_sessions(self) -> list[IsolatedAgentSession]:
        """The sessions running now."""
        return self.live.sessions()

    @property
    def client(self) -> EngineClient:
        """The Docker client."""
        if self._client is None:
            from runtime.engine.discovery import get_client

            self._client = get_client()
        return self._client

    # -- preflight ---------------------------------------------------------------------------

    def preflight(self, tasks: Sequence[Task]) -> str:
        """Check everything possible before anything is created; return the base commit.

        Raises ConfigError. :meth:`run_agents` calls it unless it already passed for the same
        tasks (the CLI calls it first, to report bad input before the live view starts).
        """
        base_commit, self._env_images = check_run(lambda: self.client, self.repo, self.config,
                                                  tasks, self.build_log)
        self._checked = ([t.id for t in tasks], base_commit)
        return base_commit

    # -- running -----------------------------------------------------------------------------

    def cancel(self, force: bool = False) -> None:
        """Stop all sessions (SIGTERM, grace, SIGKILL; at once if ``force``), keep their work.

        The listener hears ``stopping`` for each running session; ``finished`` follows."""
        self._cancelled.set()
        for session in self.live.sessions():
            if force:
                session.stop_grace_seconds = 0
            threading.Thread(target=session.cancel, daemon=True).start()
            if session.result.status is SessionStatus.RUNNING:
                self.live.notify("stopping", session.result)  # the view shows it while grace runs

    # -- a live run: tasks added while it goes ------------------------------------------------

    def start(self, tasks: Sequence[Task | Mapping[str, Any] | str] = ()) -> str:
        """Start the run in a background thread, open for :meth:`submit` until :meth:`close`;
        return the run id once it takes tasks. Raises the preflight's error (nothing started)."""
        if self._runner is not None:
            raise ConfigError("this coordinator has already started a run")
        given = as_tasks(tasks, self.default_agent) if tasks else []
        if given:
            self.preflight(given)

        def body() -> None:
            try:
                self._outcome = self.run_agents(given, keep_open=True)
            except BaseException as exc:  # noqa: BLE001 - handed to close()
                self._outcome = exc
            finally:
                self._opened.set()

        self._runner = threading.Thread(target=body, name="agentrt-run", daemon=True)
        self._runner.start()
        self._opened.wait()
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        return self.run_id

    def close(self, timeout: float | None = None) -> RunReport:
        """Take no more tasks; wait for every task to end (up to ``timeout`` seconds) and
        return the run's report (merged per ``config.merge``). Idempotent."""
        with self._lock:
            self._closed.set()
        self._inbox.put(None)
        if self._runner is None:
            raise ConfigError("the run was not started with start()")
        self._runner.join(timeout)
        if self._runner.is_alive():
            raise TimeoutError(f"run {self.run_id}: sessions still running after {timeout}s")
        if isinstance(self._outcome, BaseException):
            raise self._outcome
        if self._outcome is None:  # pragma: no cover - the thread always sets it
            raise AgentRuntimeError("the run ended without a report")
        return self._outcome

    def submit(self, task: Task | Mapping[str, Any] | str) -> str:
        """Add a task to the live run; return its id. Thread-safe.

        The task passes the same checks as the run's own (preflight, admission; its
        dependencies must be tasks of the run, finished or not) and the run's budget; it
        starts from ``[run] base`` as it is now (so work merged meanwhile is in it), with its
        dependencies' branches merged in, when a slot is free and they succeeded. ConfigError
        names what is wrong (nothing is added); also when the run is not taking tasks."""
        new = with_default_agent(as_tasks([task], self.default_agent), self.default_agent)[0]
        with self._lock:
            if not self._accepting or self._closed.is_set() or self._cancelled.is_set():
                raise ConfigError(f"run {self.run_id} is not taking tasks (not started, "
                                  "closed or stopped); start a new run")
            if new.id in self._tasks or new.id in self._task_base:
                raise ConfigError(f"task {new.id!r}: field id: the run already has a task of "
                                  "that id; choose another")
            known = list(self._tasks.values())
            taken = len(self._tasks) + sum(1 for b in self._task_base.values() if not b)
            self._task_base[new.id] = ""  # reserved while it is checked
        try:
            spent = self.spent()
            why = refusal(self.budget, Spent(taken, spent.cpu_seconds, spent.tokens))
            if why is not None:
                raise ConfigError(why)
            base, envs = check_run(lambda: self.client, self.repo, self.config, [new],
                                   self.build_log, known=known)
        except BaseException:
            with self._lock:
                self._task_base.pop(new.id, None)
            raise
        with self._lock:
            if not self._accepting:
                self._task_base.pop(new.id, None)
                raise ConfigError(f"run {self.run_id} ended while task {new.id!r} was checked")
            self._task_base[new.id] = base
            self._env_images.update(envs)
            self._tasks[new.id] = new
            self._inbox.put(new)
        return new.id

    @property
    def taking_tasks(self) -> bool:
        """True while :meth:`submit` may add tasks (started, not closed nor cancelled)."""
        with self._lock:
            return self._accepting and not self._closed.is_set() and not self._cancelled.is_set()

    def task_states(self) -> dict[str, SessionResult | None]:
        """Every task of the run in order: its latest result (None: waiting for a slot or
        its dependencies). A result is final only once its work is home."""
        with self._lock:
            live = {s.task.id: s.result for s in self.live.sessions()}
            found = {t: self._results.get(t) or live.get(t) for t in self._tasks}
        for task_id, result in found.items():
            if task_id not in self._results and result is not None and result.status.is_final:
                # Ended, its work still coming home: final only once the run hears it.
                found[task_id] = result.model_copy(update={"status": SessionStatus.RUNNING})
        return found

    def spent(self) -> Spent:
        """What the run used so far: sessions (tasks taken, waiting ones included), CPU
        seconds (finished sessions as reported, running ones as measured now), tokens."""
        with self._lock:
            finished = list(self._results.values())
            live = self.live.sessions()
            taken = len(self._tasks) + sum(1 for b in self._task_base.values() if not b)
        cpu = sum(r.cpu_seconds for r in finished)
        for session in live:
            stat = session.stats()
            if stat is not None:
                cpu += stat.cpu_seconds
        return Spent(sessions=taken, cpu_seconds=cpu, tokens=tokens_of(finished))

    def run_agents(self, tasks: Sequence[Task | Mapping[str, Any] | str], *,
                   keep_open: bool = False) -> RunReport:
        """Run every task; return the report (merge per ``config.merge``).

        Each task is a :class:`Task`, a dict of Task keys, or a prompt string (a task with an
        id made from the prompt and ``agent=default_agent``; see docs/python-api.md). A task
        with neither a command nor an agent, when there is no default agent, is refused
        (ConfigError naming it) before anything starts. Tasks :meth:`submit`-ted meanwhile join
        the run; with ``keep_open`` the run waits for more after its tasks end, until
        :meth:`close` (or :meth:`cancel`)."""
        checked: list[Task] = with_default_agent(
            as_tasks(tasks, self.default_agent), self.default_agent) if tasks else []
        tasks = checked
        self._keep_open = keep_open
        if self._checked is not None and self._checked[0] == [t.id for t in tasks]:
            base_commit = self._checked[1]
        else:
            base_commit = self.preflight(tasks)
        target = self.config.target or self.repo.current_branch()
        report = RunReport(run_id=self.run_id, repo=str(self.repo.root), base_commit=base_commit,
                           target=target, merge=self.config.merge, started_at=utcnow())
        by_id = self._tasks
        by_id.update({t.id: t for t in tasks})
        # Several sessions share one checkout of their base: the run's seed image.
        self._seeded = len(tasks) > 1 or keep_open
        self._base_commit = base_commit
        results = self._results
        scheduler = DagScheduler({t.id: t.deps for t in tasks}, self.config.max_concurrent_agents)
        done = self._inbox
        threads: list[threading.Thread] = []
        self.store = Store(paths.state_db(self.repo.state_dir))
        self.store.create_run(
            self.run_id, str(self.repo.root), base_commit, target, self.config.merge,
            self.config.model_dump_json(), os.getpid(), process_start_time(os.getpid()),
            socket.gethostname(),
        )
        recovered = reconcile_on_start(self.repo, self.client)
        if recovered.saved_branches:
            report.warnings.append(
                "recovered work of dead sessions onto "
                + ", ".join(sorted(recovered.saved_branches)))
        if uses_allowlist(self.config, tasks):
            self.egress = RunEgress(self.client, self.run_id, labels={
                LABEL_REPO: str(self.repo.root), LABEL_OWNER_PID: str(os.getpid()),
                LABEL_OWNER_START: str(process_start_time(os.getpid()) or "")})
        try:
            self.backend = open_backend(self.config, self.client, self.run_id, self.repo)
            sessions = self._sessions = RunSessions(
                self.config, self.repo, self.run_id, self.client, self.backend,
                store=self.store, egress=self.egress, stop_grace_seconds=self.stop_grace_seconds,
                env_images=self._env_images, seeded=self._seeded, base_commit=base_commit,
                task_base=self._task_base, continuations=self.continuations)
            sessions.start_pool(by_id, base_commit, results)
            with self.live.radar(report):
                try:
                    self._schedule(scheduler, by_id, base_commit, results, done, threads)
                except BaseException:
                    # Ctrl-C in the Python API: stop every session, and wait for them while
                    # the backend still sees their agents end.
                    self.cancel()
                    for thread in threads:
                        thread.join()
                    raise
        finally:
            # A slot is free at a final result; its thread then releases; the run waits for it.
            for thread in threads:
                thread.join()
            if self._sessions is not None and self._sessions.pool is not None:
                self._sessions.pool.drain()
            remove_dep_notes(self.repo, self.run_id)
            remove_run_stores(self.repo, self.run_id)
            backend, self.backend = self.backend, None
            for what, part in (("backend", backend), ("egress proxy", self.egress)):
                if part is None:
                    continue
                try:
                    part.close()
                except AgentRuntimeError as exc:
                    report.warnings.append(f"{what}: not removed ({exc}); `agentrt gc` "
                                           "removes it")
            if self.config.database_strategy == "shared":
                from runtime.databases.postgres import stop_shared_server

                stop_shared_server(self.run_id, self.client)
        report.sessions = [results[t] for t in by_id if t in results]
        settle_merge(report.sessions)  # work off its branch is not_merged, whatever happens next
        report.interrupted = self._cancelled.is_set()
        if self.config.merge != "none" and not report.interrupted:
            if target:
                self._merge(report, target, by_id)
            elif self.config.merge == "auto":
                from runtime.git.merge import auto_merge_blocker

                report.merge_refused = auto_merge_blocker(self.repo, None) or \
                    "no branch to merge into"
                report.warnings.append(f"merge: {report.merge_refused}")
        report.finished_at = utcnow()
        self._save_report(report)
        return report

    def _schedule(self, scheduler: DagScheduler, by_id: dict[str, Task], base_commit: str,
                  results: dict[str, SessionResult], done: queue.Queue[Message],
                  threads: list[threading.Thread]) -> None:
        """Start tasks as slots free up (one thread each) until every task has an outcome
        and the run takes no more (closed, stopped, or not ``keep_open``)."""
        with self._lock:
            self._accepting = True
        self._opened.set()
        while not self._over(scheduler, done):
            if self._cancelled.is_set():
                for task_id in scheduler.cancel_waiting():
                    results[task_id] = self._placeholder(by_id[task_id],
                                                         SessionStatus.CANCELLED,
                                                         "run cancelled before it started")
            for task_id in scheduler.next_ready():
                thread = threading.Thread(
                    target=self._run_task,
                    args=(by_id[task_id], self._task_base.get(task_id) or base_commit,
                          results, done),
                    name=f"agentrt-task-{task_id}", daemon=True,
                )
                thread.start()
                threads.append(thread)
            pool = self._sessions.pool if self._sessions is not None else None
            if pool is not None:
                pool.fill(scheduler.upcoming(pool.size))
            if scheduler.running == 0 and not scheduler.done:
                continue
            try:
                message = done.get(timeout=REQUEST_POLL_S)
            except queue.Empty:
                message = None
            if self._run_stop_requested():
                self.cancel()
            self._take_requests()
            if message is None:
                continue
            if isinstance(message, Task):
                reason = scheduler.add(message.id, message.deps)
                if reason is not None:
                    results[message.id] = self._placeholder(message, SessionStatus.SKIPPED,
                                                            reason)
                continue
            task_id, result = message
            with self._lock:
                results[task_id] = result
            outcome = _OUTCOME.get(result.status, TaskState.FAILED)
            for skipped in scheduler.finish(task_id, outcome):
                results[skipped] = self._placeholder(
                    by_id[skipped], SessionStatus.SKIPPED, scheduler.skip_reason[skipped])

    def _over(self, scheduler: DagScheduler, inbox: queue.Queue[Message]) -> bool:
        """True when the loop may end: nothing waits or runs, nothing is queued, and the run
        takes no more tasks (from then on :meth:`submit` refuses)."""
        with self._lock:
            if not scheduler.done or not inbox.empty():
                return False
            if self._keep_open and not self._closed.is_set() and not self._cancelled.is_set():
                return False
            self._accepting = False
            return True

    def _take_requests(self) -> None:
        """Submit the tasks `agentrt add` recorded for this run (runtime/run/added_tasks.py)."""
        if self.store is not None:
            self._added_seen = take_requests(self.store, self.run_id, self._added_seen,
                                             self.submit)

    def _save_report(self, report: RunReport) -> None:
        """Store the final report (:func:`runtime.state.run_record.record_final_report`: a
        database that failed during the run is a warning and exit 1, never an error)."""
        if self.store is not None:
            record_final_report(self.store, report)

    def _run_stop_requested(self) -> bool:
        """True once `agentrt stop RUN` asked this run to stop (from another process)."""
        if self.store is None or self._cancelled.is_set():
            return False
        try:
            events = self.store.events(run_id=self.run_id, after_id=self._stop_seen)
        except AgentRuntimeError:
            return False
        # Asked about once a second: read only the events not read yet.
        self._stop_seen = max([self._stop_seen, *(e.id for e in events)])
        return any(e.kind == STOP_REQUESTED and e.session_id is None for e in events)

    def _set_up_failed(self, result: SessionResult, exc: Exception) -> SessionResult:
        """Finalise the row of a session whose set-up raised ``exc``: ``skipped`` when its
        dependencies' branches conflict, else ``crashed``, with the reason."""
        result.status = SessionStatus.SKIPPED if isinstance(exc, DependencyConflictError) \
            else SessionStatus.CRASHED
        result.reason = str(exc) if isinstance(exc, AgentRuntimeError) else \
            f"internal error while setting the session up: {exc}"
        result.finished_at = utcnow()
        if self.store is not None:
            with contextlib.suppress(AgentRuntimeError):  # saved again with the report
                self.store.upsert_session(result, self.run_id)
        return result

    def _placeholder(self, task: Task, status: SessionStatus, reason: str) -> SessionResult:
        session_id, _ = new_session_id(task.id)
        result = SessionResult(id=session_id, task_id=task.id, branch="", status=status,
                               reason=reason)
        if self.store is not None:
            with contextlib.suppress(AgentRuntimeError):  # saved again with the report
                self.store.upsert_session(result, self.run_id)
        self.live.notify("finished", result)
        return result

    def _run_task(self, task: Task, base_commit: str, results: dict[str, SessionResult],
                  done: queue.Queue[tuple[str, SessionResult]]) -> None:
        """Thread body: run one task; the scheduler hears how it ended exactly once: as soon
        as its result is final (before its resources are released), or when it fails."""
        result = SessionResult(id=task.id, task_id=task.id, branch="",
                               status=SessionStatus.CRASHED, reason="internal error")
        told = threading.Event()

        def tell(final: SessionResult) -> None:
            if not told.is_set():
                told.set()
                done.put((task.id, final))

        try:
            result = self._run_session(task, base_commit, results, tell)
        except DependencyConflictError as exc:
            result = self._placeholder(task, SessionStatus.SKIPPED, str(exc))
        except AgentRuntimeError as exc:
            result = self._placeholder(task, SessionStatus.CRASHED, str(exc))
        except Exception as exc:  # one task's bug never stops the run
            log.exception("task %s crashed", task.id)
            result.reason = f"internal error: {exc}"
        finally:
            tell(result)

    def _run_session(self, task: Task, base_commit: str, results: dict[str, SessionResult],
                     tell: Callable[[SessionResult], None]) -> SessionResult:
        sessions = self._sessions
        if sessions is None:
            raise AgentRuntimeError("the run's sessions are not open")
        session = sessions.ahead(task.id)
        if session is None:
            # Admission: the backend places the session, waiting for room (a Swarm node).
            placement = sessions.backend.place(task, self.config.limits_for(task),
                                               self._cancelled)
            if placement is None:
                return self._placeholder(task, SessionStatus.CANCELLED,
                                         "run cancelled before it started")
            try:
                session = sessions.new_session(task, base_commit, results, self.store,
                                               placement=placement)
            except BaseException:
                sessions.backend.release(placement)
                raise
        self.live.add(task.id, session)
        notified = False
        try:
            self.live.notify("starting", session.result)
            try:
                entered = contextlib.ExitStack()
                entered.enter_context(session)
            except Exception as exc:  # noqa: BLE001 - one task's set-up never stops the run
                # Set-up failed: the session's own row (recorded as it prepared) says so; no
                # placeholder under a new id, so `ps` never shows the task twice.
                if not isinstance(exc, AgentRuntimeError):
                    log.exception("task %s: set-up failed", task.id)
                return self._set_up_failed(session.result, exc)
            with entered:
                if self._cancelled.is_set():
                    session.cancel()
                self.live.notify("running", session.result)
                session.run()
                notified = session.result.status.is_final
                if notified:
                    # Work home, result final: the slot is free while the session releases.
                    self.live.notify("finished", session.result)
                    tell(session.result)
        finally:
            self.live.remove(task.id)
        if not notified:
            self.live.notify("finished", session.result)
        return session.result

    def _merge(self, report: RunReport, target: str, tasks: Mapping[str, Task]) -> None:
        from runtime.run.merge_gate import MergeGate
        from runtime.run.merging import merge_agent_results, merge_order

        gate = None
        if self.config.merge == "auto" and any(self.config.gate_for(t) for t in tasks.values()):
            gate = MergeGate(self.repo, self.config, tasks, client=self.client,
                             stop_grace_seconds=self.stop_grace_seconds,
                             on_gating=lambda result: self.live.notify("gating", result))
        try:
            merge_agent_results(merge_order(report.sessions), self.config.merge, repo=self.repo,
                                target=target, run_id=self.run_id, gate=gate)
        except AgentRuntimeError as exc:
            report.warnings.append(f"merge: {exc}")
            if self.config.merge == "auto":
                report.merge_refused = str(exc)
        if self.config.merge == "auto" and self.config.delete_merged_branches:
            from runtime.git.session_work import delete_branch

            for session in report.sessions:
                if session.merge.status == "merged" and session.branch:
                    try:
                        delete_branch(self.repo, session.branch)
                    except AgentRuntimeError as exc:
                        report.warnings.append(f"branch {session.branch} not deleted: {exc}")
