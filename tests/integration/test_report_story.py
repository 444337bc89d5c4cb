"""`agentrt report --html` tells the story of a real run with a conflict and merges: what each
agent changed and committed, its last lines of output, every number beside its limit, whom a
conflict clashed with and the commands that resolve it, and the order the merges landed in.
Read by parsing the page and in headless Chromium."""

from __future__ import annotations

import json
import re
import shlex
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import git
from tests.integration.helpers import agentrt
from tests.integration.test_html_in_browser import chromium, render  # noqa: F401 - fixture

pytestmark = pytest.mark.docker

TASKS = """
[run]
merge = "auto"
max_concurrent_agents = 4

[run.resource_limits]
memory_mb = 256
time_seconds = 120
disk_mb = 64

[[tasks]]
id = "usage"
command = ["sh", "-c", "printf '# demo\\\\nUsage: run it\\\\n' > README.md && git commit -qam 'readme: usage' && echo wrote usage"]

[[tasks]]
id = "license"
command = ["sh", "-c", "sleep 3; echo MIT > LICENSE; echo added a license"]

[[tasks]]
id = "tagline"
command = ["sh", "-c", "sleep 6; printf '# demo\\\\nA tagline\\\\n' > README.md && git commit -qam 'readme: tagline' && for i in $(seq 1 30); do echo line $i; done"]
"""


class Sections(HTMLParser):
    """The visible text of each ``<section id=…>`` of the page, and of each list item in it."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.items: dict[str, list[str]] = {}
        self._stack: list[str | None] = []
        self._li: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self._stack.append(dict(attrs).get("id"))
        if tag == "li" and self._current():
            self._li = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "section" and self._stack:
            self._stack.pop()
        if tag == "li" and self._li is not None and (current := self._current()):
            self.items.setdefault(current, []).append(" ".join("".join(self._li).split()))
            self._li = None

    def handle_data(self, data: str) -> None:
        current = self._current()
        if current:
            self.text[current] = self.text.get(current, "") + data
            if self._li is not None:
                self._li.append(data)

    def _current(self) -> str | None:
        return next((s for s in reversed(self._stack) if s), None)


def check_story(dom: str, repo: Path, run_id: str, ids: dict[str, str],
                branches: dict[str, str]) -> None:
    page = Sections()
    page.feed(dom)
    usage, license_, tagline = (page.text[f"s-{ids[t]}"] for t in ("usage", "license",
                                                                      "tagline"))
    # What each agent changed and committed, from its branch in the repository.
    assert "README.md" in usage and "+1 −0" in usage and "readme: usage" in usage
    assert "LICENSE" in license_ and "snapshot of uncommitted work" in license_
    assert "readme: tagline" in tagline
    # The last 20 lines of output, and not more.
    assert "line 30" in tagline and "line 11" in tagline and "line 10\n" not in tagline
    assert "Last 20 lines of output" in tagline and "added a license" in license_
    # Whom the conflict clashed with, and the exact commands that resolve it.
    [conflict] = [i for i in page.items[f"s-{ids['tagline']}"] if i.startswith("README.md")]
    assert f"with main after it took session usage {ids['usage']}" in conflict, conflict
    quoted = shlex.quote(str(repo))
    for command in (f"cd {quoted}", f"git checkout main && git merge {branches['tagline']}",
                    "git add -- README.md && git commit",
                    f"git checkout {branches['tagline']} && git merge main",
                    f"agentrt merge {run_id} --strategy auto"):
        assert command in tagline, command
    # Where main ended up, after which merges, in what order.
    merges = page.text["merges"]
    steps = page.items["merges"]
    assert [s.split()[2] for s in steps if s.split()[1] == "session"] == ["usage", "license"]
    head = git(repo, "rev-parse", "main").strip()
    assert f"main ended at {head[:12]} after these merges. It is still there." in \
        " ".join(merges.split())
    assert [s.split()[0] for s in steps] == [
        git(repo, "rev-parse", "--short=12", "main~1").strip(), head[:12]]


def test_report_tells_what_each_agent_did_whom_a_conflict_hit_and_how_merges_landed(
    chromium: str, docker_client: object, repo: Path, tmp_path: Path  # noqa: F811
) -> None:
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(TASKS)
    run = agentrt("run", str(tasks), "--repo", str(repo), "--json")
    assert run.returncode == 3, run.stderr  # tagline conflicts; its work stays on its branch
    report = json.loads(run.stdout)
    ids = {s["task_id"]: s["id"] for s in report["sessions"]}
    branches = {s["task_id"]: s["branch"] for s in report["sessions"]}
    merge = {s["task_id"]: s["merge"]["status"] for s in report["sessions"]}
    assert merge == {"usage": "merged", "license": "merged", "tagline": "conflicts"}, merge

    page = tmp_path / "page.html"
    out = agentrt("report", report["run_id"], "--html", str(page), "--repo", str(repo))
    assert out.returncode == 0, out.stderr
    html = page.read_text()
    check_story(html, repo, report["run_id"], ids, branches)

    # Limits beside every measured number of the table: time, memory, cpu, disk.
    table = html[html.index("<h2>Sessions</h2>"):html.index('id="merges"')]
    for limit in (r"/ 2m<", r"/ 256 MiB<", r" · \d+ % / 50 %<", r"/ 64 MiB<"):
        assert len(re.findall(limit, table)) == 3, limit
    assert "README.md with main (after usage)" in table
    assert html.count("class=\"chart-title\">Disk · ") == 3  # a disk chart per session

    seen = render(chromium, page, tmp_path / "chromium")
    check_story(seen.dom, repo, report["run_id"], ids, branches)
    assert seen.console == [] and seen.page_requests == []
    assert re.search(r"<pre class=\"resolve\">", seen.dom)
