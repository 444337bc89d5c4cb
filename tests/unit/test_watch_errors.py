"""A failing engine call repeats itself twice a second: it is counted, not repeated."""

from __future__ import annotations

import logging

import pytest

from runtime.backends.docker.supervisor import Supervisor, Watch


def _watch() -> Watch:
    return Watch(session_id="s-abc123", container=None, deadline=0.0,  # type: ignore[arg-type]
                 grace_seconds=1)


def test_an_error_seen_500_times_is_one_line_with_its_count() -> None:
    watch = _watch()
    firsts = [watch.note("sample: engine unreachable") for _ in range(500)]
    watch.note("stop (timeout): the engine refused (HTTP 500): boom")
    assert firsts.count(True) == 1
    assert watch.error_lines() == ["sample: engine unreachable (seen 500 times)",
                                   "stop (timeout): the engine refused (HTTP 500): boom"]


def test_the_supervisor_logs_a_repeated_failure_once(caplog: pytest.LogCaptureFixture) -> None:
    watch = _watch()
    supervisor = Supervisor(client=None, run_id="r")  # type: ignore[arg-type]

    def fail() -> None:
        raise RuntimeError("engine unreachable")

    with caplog.at_level(logging.WARNING, logger="runtime.backends.docker.supervisor"):
        for _ in range(100):
            assert not supervisor._guard(watch, "sample", fail)
    assert len([r for r in caplog.records if "engine unreachable" in r.getMessage()]) == 1
    assert watch.error_lines() == ["sample: engine unreachable (seen 100 times)"]
