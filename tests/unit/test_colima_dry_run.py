"""`agentrt colima up --dry-run` needs no engine: it only sizes and renders the profile."""

from __future__ import annotations

from tests.integration.helpers import agentrt


def test_colima_up_dry_run_sizes_the_profile_for_the_agents() -> None:
    out = agentrt("colima", "up", "--agents", "4", "--dry-run")
    assert out.returncode == 0
    assert out.stdout.split() == ["colima", "start", "agentrt", "--cpu", "3", "--memory", "6",
                                  "--disk", "40"]
