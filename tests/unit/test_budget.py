"""A run's budget: the refusal names the budget that is spent."""

from __future__ import annotations

import pytest

from runtime.models import SessionResult, SessionStatus, Usage
from runtime.run.budget import RunBudget, Spent, refusal, tokens_of


def test_no_budget_never_refuses() -> None:
    assert refusal(RunBudget(), Spent(10_000, 1e9, 10**12)) is None


def test_each_spent_budget_is_named() -> None:
    assert "max_sessions is spent: 3 of 3" in (refusal(RunBudget(max_sessions=3), Spent(3)) or "")
    assert refusal(RunBudget(max_sessions=3), Spent(2)) is None
    assert "max_cpu_seconds is spent" in (
        refusal(RunBudget(max_cpu_seconds=5), Spent(1, 5.0)) or "")
    assert refusal(RunBudget(max_cpu_seconds=5), Spent(1, 4.9)) is None
    assert "max_tokens is spent: 120 of 100" in (
        refusal(RunBudget(max_tokens=100), Spent(1, 0, 120)) or "")


def test_tokens_count_only_reported_usage() -> None:
    def result(usage: Usage | None) -> SessionResult:
        return SessionResult(id="a", task_id="a", branch="", status=SessionStatus.SUCCEEDED,
                             usage=usage)

    assert tokens_of([result(None), result(Usage(input_tokens=10, output_tokens=5)),
                      result(Usage(output_tokens=7))]) == 22


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        RunBudget(max_tokens=-1)
