"""The HTML report: untrusted strings are escaped, the page fetches nothing, the charts draw."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from runtime.cli.html_report import axis_ticks, format_seconds, render_html
from runtime.config import ResourceLimits
from runtime.models import Conflict, Manifest, MergeInfo, RunReport, SessionResult, SessionStatus
from runtime.state.store import Sample

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
EVIL = '<script>alert("x")</script>'


def session(task_id: str, start: float | None, end: float | None,
            status: SessionStatus = SessionStatus.SUCCEEDED, **fields: object) -> SessionResult:
    return SessionResult(
        id=f"{task_id}-abc123", task_id=task_id, branch=f"agent/{task_id}/abc123",
        status=status, started_at=None if start is None else T0 + timedelta(seconds=start),
        finished_at=None if end is None else T0 + timedelta(seconds=end),
        duration_s=None if start is None or end is None else end - start, **fields)


def manifest(prompt: str = "do it", memory_mb: int = 256) -> Manifest:
    return Manifest(image="agentrt/base:latest", image_digest="sha256:" + "ab" * 32,
                    base_commit="c" * 40, task={"id": "t", "prompt": prompt,
                                                "command": ["sh", "-c", "echo hi"]},
                    limits=ResourceLimits(memory_mb=memory_mb, cpu_percent=50),
                    network="none", runtime="runc", database_strategy="per_agent")


def report(*sessions: SessionResult) -> RunReport:
    return RunReport(run_id="r1", repo="/src/app", base_commit="c" * 40, target="main",
                     merge="review", started_at=T0, finished_at=T0 + timedelta(seconds=20),
                     sessions=list(sessions))


def test_script_in_task_id_reason_prompt_branch_and_conflict_is_escaped() -> None:
    evil = session(EVIL, 0, 3, SessionStatus.FAILED, reason=EVIL, exit_code=1,
                   warnings=[EVIL], merge=MergeInfo(status="conflicts",
                                                    conflicts=[Conflict(path=EVIL,
                                                                        with_branch=EVIL)]))
    evil.branch = '"><img src=x onerror=alert(1)>'
    page = render_html(report(evil), {}, {evil.id: manifest(prompt=EVIL)})
    assert "<script" not in page.lower()
    assert "<img" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in page


def test_page_is_self_contained() -> None:
    page = render_html(report(session("a", 0, 4)), {}, {"a-abc123": manifest()})
    assert "http:" not in page and "https:" not in page
    for fetcher in ("<script", "<link", "<img", "<iframe", "@import", "url(", "src="):
        assert fetcher not in page.lower()
    assert not re.search(r"href=\"(?!#)", page)  # only links within the page


def test_timeline_has_one_bar_per_started_session_and_shows_waiting() -> None:
    page = render_html(report(session("first", 0.1, 5), session("queued", 5, 9),
                              session("never", None, None, SessionStatus.SKIPPED,
                                      reason="dependency first failed")), {}, {})
    bars = re.findall(r'<rect class="bar" data-session="([^"]+)"[^>]*fill="([^"]+)"', page)
    assert [b[0] for b in bars] == ["first-abc123", "queued-abc123"]
    assert page.count('class="wait"') == 2  # dashed: the time each waited before its bar
    assert "dependency first failed" in page
    assert "peak 1" in page  # the two ran one after the other
    assert "succeeded" in page and "skipped" in page  # legend


def test_memory_and_cpu_curves_are_drawn_against_the_manifest_limits() -> None:
    s = session("hog", 0, 4, peak_memory_bytes=200 << 20, cpu_seconds=1.5)
    samples = [Sample(session_id=s.id, ts=T0.timestamp() + i, memory_bytes=(50 * i) << 20,
                      cpu_seconds=0.4 * i, disk_bytes=0) for i in range(5)]
    page = render_html(report(s), {s.id: samples}, {s.id: manifest(memory_mb=256)})
    assert page.count("<polyline") == 2
    assert "limit 256 MiB" in page and "limit 50 %" in page
    without = render_html(report(s), {}, {s.id: manifest()})
    assert "<polyline" not in without and "no samples recorded" in without


def test_axis_ticks_and_durations_read_naturally() -> None:
    assert axis_ticks(9) == [0, 2, 4, 6, 8]
    assert axis_ticks(0.5)[-1] == 0.5
    assert len(axis_ticks(4000)) <= 9
    assert [format_seconds(v) for v in (0, 0.4, 2, 12, 125, 3720)] == \
        ["0s", "0.4s", "2s", "12s", "2m05s", "1h02m"]
