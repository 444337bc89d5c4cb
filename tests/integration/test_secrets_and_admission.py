"""Secrets pass by name and never leak into records; runs that cannot fit are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import git
from tests.integration.helpers import agentrt

pytestmark = pytest.mark.docker

SECRET = "sk-test-" + os.urandom(8).hex()



def test_secret_reaches_the_agent_but_never_the_state_logs_or_reports(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(
        '[[tasks]]\nid = "uses-key"\nsecrets = ["AGENTRT_TEST_KEY"]\n'
        'command = ["sh", "-c", "test -n \\"$AGENTRT_TEST_KEY\\" && echo has-key > ok.txt; '
        'echo leaked: $AGENTRT_TEST_KEY"]\n')
    run = agentrt("run", str(task_file), "--repo", str(repo), "--json",
                  env={"AGENTRT_TEST_KEY": SECRET})
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    session = report["sessions"][0]
    assert git(repo, "show", f"{session['head_commit']}:ok.txt") == "has-key\n"
    logs = agentrt("logs", session["id"], "--repo", str(repo), env={"AGENTRT_TEST_KEY": ""})
    assert "leaked: [REDACTED]" in logs.stdout
    html = tmp_path / "r.html"
    agentrt("report", report["run_id"], "--repo", str(repo), "--html", str(html))
    state = repo / ".git" / "agentrt"
    haystacks = [run.stdout, run.stderr, logs.stdout, html.read_text()]
    haystacks += [p.read_bytes().decode(errors="replace") for p in state.rglob("*") if p.is_file()]
    assert all(SECRET not in text for text in haystacks)
    assert "AGENTRT_TEST_KEY" in (state / "state.db").read_bytes().decode(errors="replace")


def test_missing_secret_is_a_usage_error_before_anything_starts(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text('[[tasks]]\nid = "a"\nsecrets = ["AGENTRT_NOT_SET_ANYWHERE"]\n'
                         'command = ["true"]\n')
    run = agentrt("run", str(task_file), "--repo", str(repo))
    assert run.returncode == 2
    assert "task 'a': field secrets: AGENTRT_NOT_SET_ANYWHERE is not set" in run.stderr
    assert "agent/" not in git(repo, "branch")


def test_run_that_cannot_fit_in_the_engine_says_what_fits(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text("[run]\nmax_concurrent_agents = 4\n"
                         "[run.resource_limits]\nmemory_mb = 1000000\n"
                         + "".join(f'[[tasks]]\nid = "t{i}"\ncommand = ["true"]\n'
                                   for i in range(4)))
    run = agentrt("run", str(task_file), "--repo", str(repo))
    assert run.returncode == 2
    assert "at most 0 agents of 1000000 MB fit" in run.stderr
    assert "agentrt colima up --agents 4" in run.stderr
    assert not (repo / ".git" / "agentrt" / "sessions").exists()


def test_images_export_saves_the_exact_image_of_a_session(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text('[[tasks]]\nid = "a"\ncommand = ["true"]\n')
    session = json.loads(agentrt("run", str(task_file), "--repo", str(repo), "--json")
                         .stdout)["sessions"][0]
    archive = tmp_path / "image.tar"
    out = agentrt("images", "export", session["id"], str(archive), "--repo", str(repo))
    assert out.returncode == 0, out.stderr
    import tarfile

    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert session["image_digest"].split(":")[1] in manifest[0]["Config"]
