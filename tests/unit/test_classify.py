"""The exit classifier, table-driven: every status, and every precedence rule between facts."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from runtime.config import ResourceLimits
from runtime.models import SessionStatus
from runtime.state.classify import (
    PRECEDENCE,
    EndFacts,
    classify,
    own_deadline_ended,
    recorded_facts,
)

LIMITS = ResourceLimits(memory_mb=256, time_seconds=60, disk_mb=32)
S = SessionStatus

# One row per way of ending: the facts, then the status and the reason it must give.
CASES: list[tuple[str, EndFacts, SessionStatus, str | None]] = [
    ("cancelled", EndFacts(cancelled=True, exit_code=143), S.CANCELLED, "stopped on request"),
    ("timed_out", EndFacts(timed_out=True, exit_code=137, stopping=True), S.TIMED_OUT,
     "ran past time_seconds=60"),
    ("disk_exceeded", EndFacts(disk_exceeded=True, exit_code=143), S.DISK_FULL,
     "used more than disk_mb=32"),
    ("owner_lost", EndFacts(owner_lost=True, exit_code=143, stopping=True), S.CRASHED,
     "the agentrt process owning this session died; gc stopped its container"),
    ("engine_lost", EndFacts(engine_lost=True), S.CRASHED,
     "engine lost: the Docker engine restarted or stopped answering during the session"),
    ("node_lost", EndFacts(node_lost=True), S.CRASHED,
     "node lost: the Swarm node running the session went down or stopped answering"),
    ("vanished", EndFacts(vanished=True), S.CRASHED, "container vanished"),
    ("oom", EndFacts(oom=True, exit_code=137), S.OOM_KILLED, "out of memory at memory_mb=256"),
    ("exit 0", EndFacts(exit_code=0), S.SUCCEEDED, None),
    ("volume_full", EndFacts(volume_full=True, exit_code=1), S.DISK_FULL,
     "volume full at disk_mb=32"),
    ("external_kill", EndFacts(exit_code=137), S.CRASHED,
     "container was killed from outside agentrt"),
    ("engine_error", EndFacts(exit_code=127, engine_error="exec: no such file"), S.CRASHED,
     "exec: no such file"),
    ("exit code", EndFacts(exit_code=3), S.FAILED, "exit code 3"),
]


@pytest.mark.parametrize(("name", "facts", "status", "reason"), CASES, ids=[c[0] for c in CASES])
def test_each_way_of_ending_has_its_status_and_reason(
    name: str, facts: EndFacts, status: SessionStatus, reason: str | None
) -> None:
    assert classify(facts, LIMITS) == (status, reason)


def test_every_terminal_status_a_session_can_end_in_is_covered() -> None:
    reachable = {status for _, _, status, _ in CASES}
    # Set by the scheduler or the warm pool, not an exit.
    not_from_an_exit = {S.PREPARED, S.PENDING, S.RUNNING, S.SKIPPED}
    assert reachable == set(SessionStatus) - not_from_an_exit


def test_the_table_follows_the_documented_precedence() -> None:
    assert [c[0] for c in CASES] == list(PRECEDENCE)


@pytest.mark.parametrize(("higher", "lower"), list(itertools.combinations(range(len(CASES)), 2)))
def test_when_two_facts_are_seen_the_higher_one_decides(higher: int, lower: int) -> None:
    # Both rows' facts at once; where both set an exit code, the higher row's is kept.
    merged = {**_seen(CASES[lower][1]), **_seen(CASES[higher][1])}
    status, reason = classify(EndFacts(**merged), LIMITS)
    expected = CASES[higher]
    assert (status, reason) == (expected[2], expected[3]), (CASES[higher][0], CASES[lower][0])


def _seen(facts: EndFacts) -> dict[str, object]:
    """The fields of ``facts`` that are set (not their defaults)."""
    default = EndFacts()
    return {k: v for k, v in facts.__dict__.items() if v != getattr(default, k)}


def test_an_agentrt_stop_is_never_mistaken_for_an_outside_kill() -> None:
    assert classify(EndFacts(exit_code=137, stopping=True), LIMITS) == (S.FAILED, "exit code 137")


def test_a_watch_records_facts_under_its_lock_and_never_forgets_one() -> None:
    import threading

    from runtime.backends.docker.supervisor import Watch

    watch = Watch(session_id="s", container=None, deadline=0.0, grace_seconds=1)  # type: ignore[arg-type]
    threads = [threading.Thread(target=watch.record, kwargs={"oom_seen": True}),
               threading.Thread(target=watch.record, kwargs={"timed_out": True, "exit_code": 137}),
               threading.Thread(target=watch.record, kwargs={"exit_code": 0})]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    watch.record(oom_seen=False)  # a later "not seen" never clears a fact
    assert watch.oom_seen and watch.timed_out
    assert watch.exit_code in (0, 137)  # the first report with a code wins, once
    watch.record(exit_code=1)
    assert watch.exit_code in (0, 137)
    with pytest.raises(AttributeError):
        watch.record(typo=True)


# --- the stop that did or did not reach the engine, and the engine's own record ------------

def test_a_deadline_stop_that_never_reached_a_lost_engine_is_engine_lost_not_timed_out() -> None:
    facts = EndFacts(timed_out=True, stop_failed=True, engine_lost=True, stopping=True)
    assert classify(facts, LIMITS) == (
        S.CRASHED, "engine lost: the Docker engine restarted or stopped answering during the "
                   "session")
    # The control: the same deadline whose stop was delivered is a time-out.
    assert classify(EndFacts(timed_out=True, engine_lost=True), LIMITS)[0] is S.TIMED_OUT


def test_the_containers_own_deadline_is_a_time_out_even_when_agentrts_stop_failed() -> None:
    facts = EndFacts(timed_out=True, stop_failed=True, own_deadline=True, exit_code=124)
    assert classify(facts, LIMITS) == (S.TIMED_OUT, "ran past time_seconds=60")


START = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("finished_after", "stop_sent_after", "stop_failed", "own"), [
    (60.2, None, False, True),    # agentrt never sent a stop (it was gone or paused)
    (60.2, 65.0, False, True),    # it ended before agentrt's late stop (SIGSTOP/SIGCONT)
    (60.2, 59.9, False, False),   # agentrt's stop ended it
    (60.2, 59.9, True, True),     # agentrt's stop never reached the engine
    (30.0, None, False, False),   # ended early: not a deadline at all
])
def test_own_deadline_is_read_from_the_finish_time_against_agentrts_stop(
        finished_after: float, stop_sent_after: float | None, stop_failed: bool,
        own: bool) -> None:
    finished = START + timedelta(seconds=finished_after)
    sent = None if stop_sent_after is None else (START + timedelta(seconds=stop_sent_after)
                                                 ).timestamp()
    # 137: the SIGKILL a grace later, which either side may have sent.
    assert own_deadline_ended(137, START, finished, 60, sent, stop_failed) is own
    # 124 is timeout(1)'s own: whenever agentrt's stop was sent, the container's deadline won
    # (a supervisor paused between deciding to stop and asking the engine).
    assert own_deadline_ended(124, START, finished, 60, sent, stop_failed) is (finished_after > 59)


def _state(code: int, seconds: float, oom: bool = False) -> dict[str, object]:
    finished = START + timedelta(seconds=seconds)
    return {"ExitCode": code, "OOMKilled": oom, "Error": "",
            "StartedAt": START.isoformat().replace("+00:00", "Z"),
            "FinishedAt": finished.isoformat().replace("+00:00", "Z")}


@pytest.mark.parametrize(("state", "by_gc", "status"), [
    (_state(0, 5), False, S.SUCCEEDED),           # exited 0 after its owner died
    (_state(3, 5), False, S.FAILED),
    (_state(137, 5, oom=True), False, S.OOM_KILLED),
    (_state(124, 60.1), False, S.TIMED_OUT),      # its own deadline
    (_state(137, 5), False, S.CRASHED),           # killed from outside
    (_state(143, 5), True, S.CRASHED),            # gc had to stop it
])
def test_gc_classifies_an_orphan_from_the_engines_record(
        state: dict[str, object], by_gc: bool, status: SessionStatus) -> None:
    assert classify(recorded_facts(state, 60, stopped_by_gc=by_gc), LIMITS)[0] is status
