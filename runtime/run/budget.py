"""A run's budget: what a lead (an agent handing work to agents, or a script calling
:meth:`~runtime.run.coordinator.AgentCoordinator.submit`) may spend in one run.

Three ceilings, each optional: sessions started (``max_sessions``), CPU seconds used by the
run's sessions (``max_cpu_seconds``: finished ones as reported, running ones as measured now),
and model tokens (``max_tokens``: input + output, counted only where an agent reported its
usage). A task is refused, naming the budget, once a ceiling is reached; sessions already
running are never stopped by it (their own ``resource_limits`` bound them).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from runtime.models import SessionResult


@dataclass(frozen=True)
class RunBudget:
    """Ceilings for one run; None: no ceiling."""

    max_sessions: int | None = None
    max_cpu_seconds: float | None = None
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_cpu_seconds", "max_tokens"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True)
class Spent:
    """What a run has used so far."""

    sessions: int = 0
    cpu_seconds: float = 0.0
    tokens: int = 0


def tokens_of(results: Iterable[SessionResult]) -> int:
    """Input + output tokens the sessions reported (unreported usage counts as 0). Pure."""
    total = 0
    for result in results:
        usage = result.usage
        if usage is not None:
            total += (usage.input_tokens or 0) + (usage.output_tokens or 0)
    return total


def refusal(budget: RunBudget, spent: Spent) -> str | None:
    """Why one more session may not start (the budget spent, by name), or None. Pure."""
    if budget.max_sessions is not None and spent.sessions >= budget.max_sessions:
        return (f"budget max_sessions is spent: {spent.sessions} of {budget.max_sessions} "
                "sessions started in this run; wait for results and merge, or start a new run")
    if budget.max_cpu_seconds is not None and spent.cpu_seconds >= budget.max_cpu_seconds:
        return (f"budget max_cpu_seconds is spent: {spent.cpu_seconds:.1f} of "
                f"{budget.max_cpu_seconds:g} CPU seconds used in this run")
    if budget.max_tokens is not None and spent.tokens >= budget.max_tokens:
        return (f"budget max_tokens is spent: {spent.tokens} of {budget.max_tokens} tokens "
                "reported in this run")
    return None
