"""The HTML report: untrusted strings are escaped, the page fetches nothing, the charts draw."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from runtime.cli.html_format import axis_ticks, format_seconds
from runtime.cli.html_report import render_html
from runtime.cli.report_work import Commit, FileChange, SessionWork, TargetStory
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
    assert page.count("<polyline") == 3  # memory, cpu, disk
    assert "limit 256 MiB" in page and "limit 50 %" in page and "limit 5120 MiB" in page
    without = render_html(report(s), {}, {s.id: manifest()})
    assert "<polyline" not in without and "no samples recorded" in without


def test_axis_ticks_and_durations_read_naturally() -> None:
    assert axis_ticks(9) == [0, 2, 4, 6, 8]
    assert axis_ticks(0.5)[-1] == 0.5
    assert len(axis_ticks(4000)) <= 9
    assert [format_seconds(v) for v in (0, 0.4, 2, 12, 125, 3720)] == \
        ["0s", "0.4s", "2s", "12s", "2m05s", "1h02m"]


def test_a_session_oom_killed_in_under_a_second_shows_its_peak_not_an_empty_chart() -> None:
    s = session("hog", 0, 0.4, SessionStatus.OOM_KILLED, peak_memory_bytes=255 << 20,
                reason="out of memory at memory_mb=256")
    one = [Sample(session_id=s.id, ts=T0.timestamp() + 0.3, memory_bytes=240 << 20,
                  cpu_seconds=0.3, disk_bytes=4096)]
    for samples, why in ((one, "one sample: too short for a curve"), ([], "no samples recorded")):
        page = render_html(report(s), {s.id: samples}, {s.id: manifest(memory_mb=256)})
        memory = page[page.index("Memory · peak"):page.index("CPU, % of one core")]
        assert "<polyline" not in memory
        assert '<rect class="peak"' in memory and f"peak 255 MiB ({why})" in memory


def story_report() -> tuple[RunReport, dict[str, SessionWork], TargetStory]:
    usage = session("usage", 0, 1, merge=MergeInfo(status="merged", merge_commit="a" * 40))
    lic = session("license", 0, 2, merge=MergeInfo(status="merged", merge_commit="b" * 40))
    tag = session("tagline", 0, 3, merge=MergeInfo(status="conflicts", conflicts=[
        Conflict(path="README.md", ours_lines=[(2, 2)])]))
    pair = session("pair", 0, 3, merge=MergeInfo(status="conflicts", conflicts=[
        Conflict(path="src/app.py", with_branch=lic.branch)]))
    run = report(usage, lic, tag, pair)
    run.merge = "auto"
    works = {
        usage.id: SessionWork(files=[FileChange("README.md", 1, 0)],
                              commits=[Commit("c" * 40, "readme: usage")],
                              output=[f"line {i}" for i in range(11, 31)]),
        lic.id: SessionWork(files=[FileChange("LICENSE", 1, 0), FileChange("logo.png", None, None),
                                   FileChange("new.py", 3, 2, old_path="old.py")],
                            more_files=4),
        tag.id: SessionWork(files=[FileChange(EVIL, 2, 1)],
                            commits=[Commit("d" * 40, EVIL)], output=[EVIL, "\x1b[2Jdone"]),
    }
    return run, works, TargetStory([lic.id, usage.id], "b" * 40)


def test_each_session_shows_its_files_commits_and_last_lines_escaped() -> None:
    run, works, story = story_report()
    page = render_html(run, {}, {}, works, story)
    assert "<script" not in page.lower()
    assert "line 11\nline 12" in page and "Last 20 lines of output" in page
    assert "readme: usage" in page and "cccccccccc" in page
    assert "binary" in page and "(from <code>old.py</code>)" in page and "and 4 more" in page
    assert "Changed files <span class=\"muted\">7 · +4 −2</span>" in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "\\x1b[2Jdone" in page and "\x1b" not in page


def test_conflicts_name_their_partner_and_the_commands_that_resolve_them() -> None:
    run, works, story = story_report()
    page = render_html(run, {}, {}, works, story)
    tagline = page[page.index('id="s-tagline-abc123"'):page.index('id="s-pair-abc123"')]
    assert "with <code>main</code> after it took session <a href=\"#s-usage-abc123\">usage" \
        in tagline
    for command in ("cd /src/app", "git checkout main &amp;&amp; git merge agent/tagline/abc123",
                    "git add -- README.md &amp;&amp; git commit",
                    "git checkout agent/tagline/abc123 &amp;&amp; git merge main",
                    "agentrt merge r1 --strategy auto"):
        assert command in tagline, command
    pair = page[page.index('id="s-pair-abc123"'):]
    assert "with session <a href=\"#s-license-abc123\">license</a>" in pair
    assert "(<code>agent/license/abc123</code>)" in pair
    table = page[page.index("<h2>Sessions</h2>"):page.index('id="merges"')]
    assert "README.md with main (after usage)" in table and "src/app.py with license" in table


def test_merges_are_listed_in_the_order_they_landed_and_where_the_target_ended() -> None:
    run, works, story = story_report()
    page = render_html(run, {}, {}, works, story)
    merges = page[page.index('id="merges"'):page.index('id="s-usage-abc123"')]
    assert merges.index("bbbbbbbbbbbb") < merges.index("aaaaaaaaaaaa")  # the story's order
    assert "ended at <code>aaaaaaaaaaaa</code> after these merges" in merges
    assert "It is now at <code>bbbbbbbbbbbb</code> (moved since)" in merges
    assert "merge 1 of 2 into main" in page[page.index('id="s-license-abc123"'):]


def test_every_measured_number_in_the_table_stands_beside_its_limit() -> None:
    s = session("a", 0, 4, peak_memory_bytes=200 << 20, cpu_seconds=1.0,
                disk_used_bytes=3 << 20)
    page = render_html(report(s), {}, {s.id: manifest(memory_mb=256)})
    table = page[page.index("<h2>Sessions</h2>"):]
    for cell in ("4s / 1h00m", "200 MiB / 256 MiB", "1.00s · 25 % / 50 %", "3.0 MiB / 5120 MiB"):
        assert f'<td class="num">{cell}</td>' in table, cell


def test_memory_curve_ends_at_the_kernels_peak_when_no_sample_saw_it() -> None:
    from runtime.cli.html_charts import memory_series

    samples = [Sample(session_id="s", ts=100.0 + t, memory_bytes=5 << 20, cpu_seconds=0.0,
                      disk_bytes=0) for t in (0.0, 0.5, 1.0)]
    spiked = memory_series(samples, 100.0, 1.4, peak=128 << 20)
    assert spiked[-1] == (1.4, float(128 << 20)) and len(spiked) == 4
    # A peak the samples already show adds nothing.
    assert memory_series(samples, 100.0, 1.4, peak=5 << 20) == [(t, float(5 << 20))
                                                               for t in (0.0, 0.5, 1.0)]
