"""`agentrt report --html` of a real run, rendered by headless Chromium: what a reader sees.

The page is drawn by a real browser: a screenshot is taken, the rendered DOM has one timeline bar
per session, the console stays silent, and the network log shows no request made by the page.
A control page proves that the console and network checks do catch what they look for.

Chromium comes from Debian's ``chromium`` package (``scripts/setup`` installs it as root);
``AGENTRT_CHROMIUM`` names another binary. Missing, the test fails in CI (``CI=true`` or
``AGENTRT_REQUIRE_DOCKER``) and is skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REQUIRE_DOCKER
from tests.integration.helpers import agentrt, run_tasks, sh

pytestmark = pytest.mark.docker

WIDTH, HEIGHT = 1200, 1600
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def chromium() -> str:
    """The headless browser's binary; fails in CI when there is none, else skips."""
    override = os.environ.get("AGENTRT_CHROMIUM")
    found = override if override else next(
        (path for name in ("chromium", "chromium-browser", "google-chrome")
         if (path := shutil.which(name))), None)
    if found and os.access(found, os.X_OK):
        return found
    message = (f"headless Chromium is required to render the HTML report "
               f"({'AGENTRT_CHROMIUM=' + override + ' is not executable' if override else 'no chromium on PATH'}): "
               "`apt-get install -y --no-install-recommends chromium` (scripts/setup does it as "
               "root on Debian/Ubuntu), or set AGENTRT_CHROMIUM to a Chromium/Chrome binary")
    if REQUIRE_DOCKER:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass
class Rendered:
    """What one headless Chromium run of a page produced."""

    dom: str
    screenshot: Path
    console: list[str]  # console lines that mention the page, or an uncaught error
    page_requests: list[str]  # URLs the page (not the browser itself) asked the network for


def render(chromium: str, page: Path, work: Path, width: int = WIDTH) -> Rendered:
    """Load ``page`` once in headless Chromium: dump its DOM, screenshot it, log console and net."""
    work.mkdir()
    url = page.resolve().as_uri()
    screenshot, netlog = work / "page.png", work / "net.json"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={work / 'profile'}",
         # Nothing resolves, so even the browser's own update pings stay on this machine;
         # the net log still records every request that was attempted.
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--log-net-log={netlog}",
         "--enable-logging=stderr", "--v=0",
         f"--screenshot={screenshot}", f"--window-size={width},{HEIGHT}", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = [line for line in proc.stderr.splitlines()
               if (":CONSOLE" in line and url in line) or "Uncaught" in line]
    return Rendered(proc.stdout, screenshot, console, page_requests(netlog))


def page_requests(netlog: Path) -> list[str]:
    """URLs of network requests started on behalf of a ``file://`` page.

    The browser's own requests (update checks, account pings) carry the initiator
    "not an origin" and a non-file network isolation key; the page's carry the page's.
    """
    log: dict[str, Any] = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in log["events"]:
        params = event.get("params", {})
        if event["type"] != start_job or "url" not in params:
            continue
        if params.get("initiator") != "not an origin" or \
                "file://" in params.get("network_isolation_key", ""):
            urls.append(params["url"])
    return urls


class Bars(HTMLParser):
    """Collects the timeline's bars (``<rect class="bar" data-session=…>``) and every URL-ish
    attribute of the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.sessions: list[str] = []
        self.links: list[str] = []
        self.in_timeline = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "svg" and "timeline" in values.get("class", "").split():
            self.in_timeline += 1
        if tag == "rect" and "bar" in values.get("class", "").split():
            assert self.in_timeline, "a bar outside the timeline"
            self.sessions.append(values["data-session"])
        self.links += [v for k, v in values.items() if k in ("src", "href", "xlink:href",
                                                             "srcset", "action", "data")]

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg" and self.in_timeline:
            self.in_timeline -= 1


def test_checks_catch_a_console_error_and_a_fetch_on_a_control_page(
    chromium: str, tmp_path: Path
) -> None:
    probe = tmp_path / "probe.html"
    probe.write_text('<!DOCTYPE html><img src="http://agentrt-probe.invalid/x.png">'
                     "<script>undefinedFunction()</script>")
    seen = render(chromium, probe, tmp_path / "probe")
    assert seen.page_requests == ["http://agentrt-probe.invalid/x.png"]
    assert any("Uncaught ReferenceError" in line for line in seen.console), seen.console


def test_html_report_renders_in_chromium_with_one_bar_per_session_and_no_fetches(
    chromium: str, docker_client: object, repo: Path, tmp_path: Path
) -> None:
    # Three sessions, two at a time: the third waits (a dashed lead-in), one fails (red).
    # The prompt would log to the console if the page let it run as a script.
    report = run_tasks(repo, [
        sh("alpha", "sleep 2; echo a > a.txt",
           prompt="<script>console.error('prompt ran')</script> alpha"),
        sh("beta", "sleep 1; echo oops >&2; exit 3"),
        sh("gamma", "sleep 1; echo g > g.txt"),
    ], max_concurrent_agents=2)
    sessions = {s.id: s for s in report.sessions}
    assert sorted(s.status.value for s in report.sessions) == ["failed", "succeeded", "succeeded"]

    page = tmp_path / "page.html"
    out = agentrt("report", report.run_id, "--html", str(page), "--repo", str(repo))
    assert out.returncode == 0, out.stderr

    seen = render(chromium, page, tmp_path / "chromium")

    # The screenshot: a real PNG of the window's size, with more than a blank page in it.
    data = seen.screenshot.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert data[12:16] == b"IHDR"
    assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == \
        (WIDTH, HEIGHT)
    assert len(data) > 10 * 1024, f"screenshot is only {len(data)} bytes"

    # The rendered DOM: one bar per session, each session's card, the escaped prompt as text.
    parsed = Bars()
    parsed.feed(seen.dom)
    assert sorted(parsed.sessions) == sorted(sessions), parsed.sessions
    for session_id in sessions:
        assert f'id="s-{session_id}"' in seen.dom
    assert "&lt;script&gt;console.error('prompt ran')&lt;/script&gt; alpha" in seen.dom
    assert "<script" not in seen.dom.lower()

    # Nothing fetched: no external reference in the DOM, no request in the net log, no console.
    external = [link for link in parsed.links
                if re.match(r"\s*([a-z][a-z0-9+.-]*:|//)", link, re.I)
                and not link.strip().startswith(("#", "data:"))]
    assert external == [], external
    assert "url(" not in seen.dom.lower() and "@import" not in seen.dom.lower()
    assert seen.page_requests == [], seen.page_requests
    assert seen.console == [], seen.console


# Measured by the browser after layout, written into the DOM for --dump-dom to carry out.
MEASURE = """<script>
const table = document.querySelector("table.sessions");
const card = table.closest(".card");
const oom = document.querySelector("#s-" + CSS.escape(document.body.dataset.oom));
const svg = oom.querySelector(".charts svg");
const ys = svg.querySelector("polyline.curve").getAttribute("points").trim().split(/\\s+/)
  .map(p => parseFloat(p.split(",")[1]));
const limit = parseFloat(svg.querySelector("line.limit").getAttribute("y1"));
const print = [...document.styleSheets[0].cssRules].some(r => r.media &&
  r.media.mediaText === "print" && /max-height: none/.test(r.cssText));
document.body.dataset.measured = JSON.stringify({tableWidth: table.scrollWidth,
  cardWidth: card.clientWidth, curveTop: Math.min(...ys), limitY: limit, print: print});
</script>"""


def test_report_fits_1280_px_draws_the_oom_spike_and_prints_whole_boxes(
    chromium: str, docker_client: object, repo: Path, tmp_path: Path
) -> None:
    # Idle for two seconds (flat samples near a few MiB), then one allocation past the limit:
    # no half-second sample sees it, the kernel's peak does.
    # Two sessions that clash on a deep path: the merge column lists it (a long code cell).
    deep = "src/" + "/".join(["a-really-rather-long-directory-name"] * 4) + "/module.py"
    report = run_tasks(repo, [
        sh("a-rather-long-task-id-for-the-table-x", f"mkdir -p $(dirname {deep}); echo x > {deep}"),
        sh("another-long-task-id-that-clashes-too", f"mkdir -p $(dirname {deep}); echo y > {deep}"),
        sh("memory-hog", "sleep 2; python3 -c 'x = bytearray(300 * 1024 * 1024)'",
           resource_limits={"memory_mb": 64}),
    ], merge="review", max_concurrent_agents=3)
    hog = next(s for s in report.sessions if s.task_id == "memory-hog")
    assert hog.status.value == "oom_killed", hog
    page = tmp_path / "page.html"
    out = agentrt("report", report.run_id, "--html", str(page), "--repo", str(repo))
    assert out.returncode == 0, out.stderr
    html = page.read_text()
    assert hog.reason and f'<div class="why">{hog.reason}</div>' in html  # the row says why
    probe = tmp_path / "measured.html"
    probe.write_text(html.replace("<body", f'<body data-oom="{hog.id}"', 1)
                     .replace("</body>", MEASURE + "</body>"))
    seen = render(chromium, probe, tmp_path / "chromium", width=1280)
    match = re.search(r'data-measured="([^"]+)"', seen.dom)
    assert match, "the measuring script did not run"
    measured = json.loads(match.group(1).replace("&quot;", '"'))
    assert measured["tableWidth"] <= measured["cardWidth"], measured
    # The curve reaches the limit line (SVG y grows downwards): the OOM is a spike to it.
    assert measured["curveTop"] <= measured["limitY"] + 1, measured
    assert measured["print"], "no print rule lets output boxes expand"
