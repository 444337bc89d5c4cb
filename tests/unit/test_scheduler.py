"""The DAG scheduler against random DAGs and random outcomes (a fake backend, no Docker)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.run.scheduler import DagScheduler, TaskState


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    n = draw(st.integers(min_value=1, max_value=15))
    names = [f"t{i}" for i in range(n)]
    deps: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        deps[name] = sorted(draw(st.sets(st.sampled_from(names[:i]), max_size=3))) if i else []
    order = draw(st.permutations(names))
    return {name: deps[name] for name in order}


def ancestors_failed(deps: dict[str, list[str]], task: str, failed: set[str]) -> bool:
    stack = list(deps[task])
    while stack:
        dep = stack.pop()
        if dep in failed:
            return True
        stack.extend(deps[dep])
    return False


@given(deps=dags(), limit=st.integers(min_value=1, max_value=5), seed=st.integers(0, 10**6))
@settings(max_examples=300, deadline=None)
def test_random_dags_respect_order_limit_and_skip_exactly_dependents_of_failures(
    deps: dict[str, list[str]], limit: int, seed: int
) -> None:
    rng = random.Random(seed)
    outcome = {t: rng.choice([TaskState.SUCCEEDED] * 3 + [TaskState.FAILED]) for t in deps}
    scheduler = DagScheduler(deps, limit)
    running: list[str] = []
    finished_order: list[str] = []
    steps = 0
    while not scheduler.done:
        steps += 1
        assert steps < 1000, "deadlock"
        started = scheduler.next_ready()
        for task in started:
            assert all(scheduler.state[d] is TaskState.SUCCEEDED for d in deps[task])
            assert all(d in finished_order for d in deps[task])
        running += started
        assert len(running) <= limit
        assert running, "nothing running but not done: deadlock"
        task = running.pop(rng.randrange(len(running)))
        finished_order.append(task)
        scheduler.finish(task, outcome[task])
    failed = {t for t in deps if outcome[t] is TaskState.FAILED
              and scheduler.state[t] is TaskState.FAILED}
    for task, state in scheduler.state.items():
        if state is TaskState.SKIPPED:
            assert ancestors_failed(deps, task, failed)
        else:
            assert not ancestors_failed(deps, task, failed)
            assert state is outcome[task]


def test_free_slots_are_filled_immediately_and_in_file_order() -> None:
    scheduler = DagScheduler({"a": [], "b": [], "c": [], "d": ["a"]}, 2)
    assert scheduler.next_ready() == ["a", "b"]
    assert scheduler.next_ready() == []
    scheduler.finish("a", TaskState.SUCCEEDED)
    assert scheduler.next_ready() == ["c"]
    scheduler.finish("b", TaskState.SUCCEEDED)
    assert scheduler.next_ready() == ["d"]


def test_cancel_waiting_marks_unstarted_tasks() -> None:
    scheduler = DagScheduler({"a": [], "b": ["a"]}, 1)
    scheduler.next_ready()
    assert scheduler.cancel_waiting() == ["b"]
    scheduler.finish("a", TaskState.CANCELLED)
    assert scheduler.done


def test_finishing_a_task_that_is_not_running_is_an_error() -> None:
    scheduler = DagScheduler({"a": []}, 1)
    with pytest.raises(ValueError):
        scheduler.finish("a", TaskState.SUCCEEDED)


def test_upcoming_names_what_starts_next_without_starting_it() -> None:
    scheduler = DagScheduler({"a": [], "b": [], "c": ["a"], "d": [], "e": []}, 1)
    assert scheduler.next_ready() == ["a"]
    # c waits for a; b, d, e could start: the first two in file order, none marked running.
    assert scheduler.upcoming(2) == ["b", "d"]
    assert scheduler.upcoming(0) == []
    assert scheduler.running == 1
    scheduler.finish("a", TaskState.SUCCEEDED)
    assert scheduler.upcoming(5) == ["b", "c", "d", "e"]
    assert scheduler.next_ready() == ["b"]
    assert scheduler.upcoming(5) == ["c", "d", "e"]


@given(deps=dags(), limit=st.integers(min_value=1, max_value=5), ahead=st.integers(0, 5),
       seed=st.integers(0, 10**6))
@settings(max_examples=200, deadline=None)
def test_upcoming_is_always_the_head_of_what_next_ready_would_start(
        deps: dict[str, list[str]], limit: int, ahead: int, seed: int) -> None:
    rng = random.Random(seed)
    scheduler = DagScheduler(deps, limit)
    while not scheduler.done:
        peek = scheduler.upcoming(ahead)
        started = scheduler.next_ready()
        # Whatever was peeked and got a slot started in the same order, first.
        assert started[:len(peek)] == peek[:len(started)]
        running = [t for t, s in scheduler.state.items() if s is TaskState.RUNNING]
        if not running:
            break
        task = rng.choice(running)
        scheduler.finish(task, rng.choice([TaskState.SUCCEEDED, TaskState.FAILED]))


def test_added_tasks_wait_for_a_free_slot() -> None:
    scheduler = DagScheduler({}, 2)
    assert scheduler.done and scheduler.next_ready() == []
    for task in ("a", "b", "c"):
        assert scheduler.add(task, []) is None
    assert scheduler.next_ready() == ["a", "b"]
    assert scheduler.next_ready() == []  # two running: c waits
    scheduler.finish("a", TaskState.SUCCEEDED)
    assert scheduler.next_ready() == ["c"]
    assert scheduler.running == 2


def test_added_task_waits_for_a_running_dependency_and_starts_after_a_finished_one() -> None:
    scheduler = DagScheduler({"a": [], "b": []}, 3)
    assert scheduler.next_ready() == ["a", "b"]
    scheduler.finish("a", TaskState.SUCCEEDED)
    assert scheduler.add("after-a", ["a"]) is None
    assert scheduler.add("after-b", ["b"]) is None
    assert scheduler.next_ready() == ["after-a"]  # b still running
    scheduler.finish("b", TaskState.SUCCEEDED)
    assert scheduler.next_ready() == ["after-b"]


def test_added_task_on_a_failed_dependency_is_skipped_at_once_and_so_are_its_dependents() -> None:
    scheduler = DagScheduler({"a": []}, 1)
    scheduler.next_ready()
    scheduler.finish("a", TaskState.FAILED)
    assert scheduler.add("b", ["a"]) == "dependency 'a' failed"
    assert scheduler.state["b"] is TaskState.SKIPPED
    assert scheduler.add("c", ["b"]) == "dependency 'b' skipped"
    assert scheduler.done


def test_added_task_whose_waiting_dependency_fails_later_is_skipped() -> None:
    scheduler = DagScheduler({"a": []}, 1)
    scheduler.next_ready()
    assert scheduler.add("b", ["a"]) is None
    assert scheduler.finish("a", TaskState.FAILED) == ["b"]


def test_adding_a_known_id_or_an_unknown_dependency_is_refused() -> None:
    scheduler = DagScheduler({"a": []}, 1)
    with pytest.raises(ValueError, match="already"):
        scheduler.add("a", [])
    with pytest.raises(ValueError, match="unknown dependency 'x'"):
        scheduler.add("b", ["x"])
    assert "b" not in scheduler.state
