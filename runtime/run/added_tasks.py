"""`agentrt add RUN TASK_FILE`: tasks handed to a live run from another process.

The request travels through the state database, like ``agentrt stop`` does: one
``task_added`` event per task, its message the task as JSON. The process owning the run reads
new events as it schedules (:func:`added_since`), submits each task to its coordinator with the
same checks as :meth:`~runtime.run.coordinator.AgentCoordinator.submit`, and answers with a
``task_accepted`` or ``task_refused`` event naming the request (:func:`answer`), which
``agentrt add`` waits for (:func:`wait_for_answers`).

Everything that can be checked without the owner is checked before anything is written: the
run exists and its owner is alive, the tasks are valid, their ids are new to the run and their
dependencies are tasks of the run or of the same file.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError
from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from runtime.config import Task, validate_tasks
from runtime.errors import AgentRuntimeError, ConfigError
from runtime.state.liveness import owner_alive
from runtime.state.store import Store

TASK_ADDED = "task_added"
TASK_ACCEPTED = "task_accepted"
TASK_REFUSED = "task_refused"

#: Seconds ``agentrt add`` waits for the owner's answer by default.
ANSWER_WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class Answer:
    """The owner's answer to one added task: ``error`` is None when it was accepted."""

    request: int
    task_id: str
    error: str | None


def request_tasks(store: Store, run_id: str, tasks: Sequence[Task],
                  source: str = "tasks") -> list[int]:
    """Ask the live run ``run_id`` to take ``tasks``; return the request (event) ids.

    ConfigError (nothing written) if the run is not live, an id is already in the run, or a
    dependency is neither in the run nor among ``tasks``. NotFoundError if no run matches."""
    run = store.find_run(run_id)
    if run.status != "running" or run.owner_pid is None or not owner_alive(
            run.owner_pid, run.owner_start_time):
        raise ConfigError(f"run {run.id} is not live ({run.status}); tasks can be added only "
                          "while the process that owns the run is running")
    in_run = {row.task_id for row in store.list_sessions(run_id=run.id)}
    in_run |= {json.loads(e.message).get("id", "") for e in store.events(run_id=run.id)
               if e.kind == TASK_ADDED}
    for task in tasks:
        if task.id in in_run:
            raise ConfigError(f"{source}: task {task.id!r}: field id: the run already has a "
                              "task of that id; choose another")
    # The run's tasks are valid already: they stand in as dependency-free placeholders.
    known = [Task(id=t, command=["true"]) for t in sorted(in_run)]
    validate_tasks([*known, *tasks], source)
    return [store.add_event(run.id, TASK_ADDED, task.model_dump_json(exclude_defaults=True))
            for task in tasks]


def added_since(store: Store, run_id: str,
                after_id: int) -> tuple[list[tuple[int, Task | str]], int]:
    """The tasks added to ``run_id`` by events after ``after_id``: (event id, the task or why
    its request cannot be read), in order; and the last event id read (to start from next)."""
    found: list[tuple[int, Task | str]] = []
    for event in store.events(run_id=run_id, after_id=after_id):
        after_id = max(after_id, event.id)
        if event.kind != TASK_ADDED:
            continue
        try:
            found.append((event.id, Task.model_validate_json(event.message)))
        except ValidationError as exc:
            found.append((event.id, f"the request is not a valid task: {exc.errors()[0]['msg']}"))
    return found, after_id


def answer(store: Store, run_id: str, request: int, task_id: str, error: str | None) -> None:
    """Record the owner's answer to request ``request``."""
    kind = TASK_REFUSED if error else TASK_ACCEPTED
    store.add_event(run_id, kind, json.dumps({"request": request, "task": task_id,
                                              "error": error}))


def answers(store: Store, run_id: str, requests: Sequence[int]) -> dict[int, Answer]:
    """The answers recorded so far to ``requests``, by request id."""
    wanted = set(requests)
    found: dict[int, Answer] = {}
    for event in store.events(run_id=run_id, after_id=min(wanted, default=0)):
        if event.kind not in (TASK_ACCEPTED, TASK_REFUSED):
            continue
        data = json.loads(event.message)
        if data.get("request") in wanted:
            found[data["request"]] = Answer(data["request"], data.get("task", ""),
                                            data.get("error"))
    return found


def wait_for_answers(store: Store, run_id: str, requests: Sequence[int],
                     timeout: float = ANSWER_WAIT_SECONDS) -> dict[int, Answer]:
    """The owner's answers, waiting up to ``timeout`` seconds for all of them; those not
    answered by then are missing from the result."""
    retrying = Retrying(retry=retry_if_result(lambda got: len(got) < len(set(requests))),
                        stop=stop_after_delay(timeout), wait=wait_fixed(0.2))
    try:
        return retrying(answers, store, run_id, requests)
    except RetryError as exc:
        last: dict[int, Answer] = exc.last_attempt.result()
        return last


def take_requests(store: Store, run_id: str, after_id: int,
                  submit: Callable[[Task], object]) -> int:
    """The owner's side: hand each task added after ``after_id`` to ``submit`` (in a thread of
    its own: a check can build an environment) and record its answer; return the last
    event id read. A store that cannot be read now is read again next time."""
    try:
        requests, last = added_since(store, run_id, after_id)
    except AgentRuntimeError:
        return after_id

    def take(event_id: int, task: Task | str) -> None:
        error = task if isinstance(task, str) else None
        if isinstance(task, Task):
            try:
                submit(task)
            except AgentRuntimeError as exc:
                error = str(exc)
        with contextlib.suppress(AgentRuntimeError):
            answer(store, run_id, event_id, "" if isinstance(task, str) else task.id, error)

    for event_id, task in requests:
        threading.Thread(target=take, args=(event_id, task), name=f"agentrt-add-{event_id}",
                         daemon=True).start()
    return last
