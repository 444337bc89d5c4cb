"""Hostile file names and output from real agents reach the user's terminal as plain text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.helpers import agentrt

pytestmark = pytest.mark.docker

# Both agents write the same hostile names with different content, so review reports them as
# conflicts in the summary; they also print an escape sequence and a forged progress line.
HOSTILE_TASKS = """
[run]
max_concurrent_agents = 2
merge = "review"
conflict_radar_seconds = 0
[run.resource_limits]
memory_mb = 128
disk_mb = 32
[[tasks]]
id = "left"
command = ["sh", "-c", '''
mkdir -p 'a[' '[bold red]' && echo left > 'a[/b]' && echo left > '[bold red]/x'
echo left > "$(printf 'osc\\033]0;pwned\\007')" && echo left > "$(printf 'clear\\033[2J')"
printf 'out \\033]0;pwned\\007\\n12:00:00 forged succeeded\\n'
''']
[[tasks]]
id = "right"
command = ["sh", "-c", '''
mkdir -p 'a[' '[bold red]' && echo right > 'a[/b]' && echo right > '[bold red]/x'
echo right > "$(printf 'osc\\033]0;pwned\\007')" && echo right > "$(printf 'clear\\033[2J')"
''']
"""
_RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")


def test_conflicting_hostile_file_names_exit_3_and_report_prints_them_as_text(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(HOSTILE_TASKS)
    run = agentrt("run", str(task_file), "--repo", str(repo))
    assert "Traceback" not in run.stderr and "MarkupError" not in run.stderr, run.stderr
    assert run.returncode == 3, run.stderr
    for output in (run.stdout, run.stderr):
        assert not _RAW.search(output), f"raw control characters in {output!r}"
    assert "a[/b]" in run.stdout and "[bold red]/x" in run.stdout

    run_id = re.search(r"agentrt report (\S+)[ `]", run.stderr)
    assert run_id, run.stderr
    for _ in range(2):  # the stored run prints again, every time
        shown = agentrt("report", run_id.group(1), "--repo", str(repo))
        assert shown.returncode == 0, shown.stderr
        assert "Traceback" not in shown.stderr
        assert not _RAW.search(shown.stdout), shown.stdout
        assert "a[/b]" in shown.stdout and "[bold red]/x" in shown.stdout
        assert "conflicts" in shown.stdout
