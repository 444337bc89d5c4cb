"""wait_until: returns the first truthy answer, times out with one error, lets errors through."""

from __future__ import annotations

import time

import pytest

from runtime.errors import AgentRuntimeError, WaitTimeoutError
from runtime.waiting import wait_until


def test_returns_the_first_truthy_answer() -> None:
    answers = iter([None, 0, "", "ready"])
    assert wait_until(lambda: next(answers), timeout=5, what="x", sleep=lambda _: None) == "ready"


def test_times_out_naming_what_it_waited_for() -> None:
    calls = []
    with pytest.raises(WaitTimeoutError) as caught:
        wait_until(lambda: calls.append(1), timeout=0.05, what="the proxy to start",
                   interval=0.01)
    assert "the proxy to start" in str(caught.value)
    assert isinstance(caught.value, AgentRuntimeError) and isinstance(caught.value, TimeoutError)
    assert len(calls) >= 2


def test_a_predicate_error_ends_the_wait_unchanged() -> None:
    def boom() -> bool:
        raise KeyError("gone")

    with pytest.raises(KeyError):
        wait_until(boom, timeout=5, what="x")


def test_the_pause_grows_up_to_the_maximum() -> None:
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        time.sleep(seconds)

    with pytest.raises(WaitTimeoutError):
        wait_until(lambda: False, timeout=0.2, what="x", interval=0.01, max_interval=0.04,
                   sleep=pause)
    assert pauses[0] == pytest.approx(0.01) and max(pauses) == pytest.approx(0.04)


def test_a_wait_may_give_its_own_cadence() -> None:
    pauses: list[float] = []
    answers = iter([None, None, None, "done"])

    def pause(elapsed: float) -> float:
        return 0.01 if elapsed < 0.015 else 0.02

    assert wait_until(lambda: next(answers), timeout=5, what="x", pause=pause,
                      sleep=lambda s: (pauses.append(s), time.sleep(s))[1]) == "done"
    assert pauses[0] == 0.01 and pauses[-1] == 0.02
