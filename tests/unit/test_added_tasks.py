"""`agentrt add`: what is checked before anything is written, and the owner's answers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runtime.cli.mcp_cmd import read_added_tasks
from runtime.config import Task
from runtime.errors import ConfigError
from runtime.run.added_tasks import (
    TASK_ADDED,
    added_since,
    answer,
    request_tasks,
    take_requests,
    wait_for_answers,
)
from runtime.state.liveness import process_start_time
from runtime.state.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "state.db")
    store.create_run("r1", "/repo", "abc", "main", "none", "{}", os.getpid(),
                     process_start_time(os.getpid()), "host")
    return store


def added(store: Store) -> int:
    return sum(1 for e in store.events(run_id="r1") if e.kind == TASK_ADDED)


def test_a_file_with_run_settings_or_a_bad_field_is_refused_by_name(tmp_path: Path) -> None:
    with_run = tmp_path / "a.toml"
    with_run.write_text('[run]\nmerge = "auto"\n[[tasks]]\nid = "x"\ncommand = ["true"]\n')
    with pytest.raises(ConfigError, match="field run"):
        read_added_tasks(with_run)
    typo = tmp_path / "b.toml"
    typo.write_text('[[tasks]]\nid = "x"\ncomand = ["true"]\n')
    with pytest.raises(ConfigError, match=r"b.toml: task 'x': field comand: unknown key"):
        read_added_tasks(typo)
    with pytest.raises(ConfigError, match="not found"):
        read_added_tasks(tmp_path / "missing.toml")


def test_bad_requests_write_nothing(store: Store) -> None:
    with pytest.raises(ConfigError, match="field deps: unknown task 'ghost'"):
        request_tasks(store, "r1", [Task(id="a", command=["true"], deps=["ghost"])])
    request_tasks(store, "r1", [Task(id="a", command=["true"])])
    with pytest.raises(ConfigError, match="field id: the run already has"):
        request_tasks(store, "r1", [Task(id="a", command=["true"])])
    assert added(store) == 1
    # A dependency on a task of the run (added earlier) or of the same file is fine.
    request_tasks(store, "r1", [Task(id="b", command=["true"], deps=["a"]),
                                Task(id="c", command=["true"], deps=["b"])])
    assert added(store) == 3


def test_a_finished_run_takes_no_tasks(store: Store) -> None:
    store.finish_run("r1", "finished")
    with pytest.raises(ConfigError, match="not live"):
        request_tasks(store, "r1", [Task(id="a", command=["true"])])
    assert added(store) == 0


def test_the_owner_submits_each_request_and_answers_it(store: Store) -> None:
    requests = request_tasks(store, "r1", [Task(id="good", command=["true"]),
                                           Task(id="bad", command=["true"])])
    taken: list[str] = []

    def submit(task: Task) -> None:
        if task.id == "bad":
            raise ConfigError("budget max_sessions is spent: 1 of 1")
        taken.append(task.id)

    seen = take_requests(store, "r1", 0, submit)
    assert seen >= max(requests)
    got = wait_for_answers(store, "r1", requests, timeout=10)
    assert got[requests[0]].error is None and got[requests[0]].task_id == "good"
    assert "max_sessions" in (got[requests[1]].error or "")
    assert taken == ["good"]
    assert added_since(store, "r1", seen)[0] == []  # nothing is taken twice


def test_an_unanswered_request_is_missing_after_the_wait(store: Store) -> None:
    [request] = request_tasks(store, "r1", [Task(id="a", command=["true"])])
    assert wait_for_answers(store, "r1", [request], timeout=0.3) == {}
    answer(store, "r1", request, "a", None)
    assert wait_for_answers(store, "r1", [request], timeout=1)[request].error is None
    found, last = added_since(store, "r1", 0)
    assert [t for _, t in found] == [Task(id="a", command=["true"])]
    assert last > request  # the answer's event was read too: the next look starts after it
    assert added_since(store, "r1", last) == ([], last)
