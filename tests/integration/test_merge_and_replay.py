"""Bringing work home from the CLI: review, auto merge, conflicts (exit 3) and replay."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import git
from tests.integration.helpers import agentrt

pytestmark = pytest.mark.docker

CONFLICTING = """
[run]
max_concurrent_agents = 2
[run.resource_limits]
memory_mb = 128
disk_mb = 32
[[tasks]]
id = "readme-a"
command = ["sh", "-c", "sleep 1; echo 'version A' > README.md"]
[[tasks]]
id = "readme-b"
command = ["sh", "-c", "echo 'version B' > README.md"]
[[tasks]]
id = "new-file"
command = ["sh", "-c", "echo fresh > NEW.md"]
"""



def test_review_reports_conflicts_file_by_file_then_auto_merge_keeps_the_loser(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(CONFLICTING)
    main_before = git(repo, "rev-parse", "main").strip()
    run = agentrt("run", str(task_file), "--repo", str(repo), "--json")
    # Each branch alone merges into main, but the two README writers clash with each other:
    # review reports that (exit 3) and merges nothing.
    assert run.returncode == 3, run.stderr
    report = json.loads(run.stdout)
    sessions = {s["task_id"]: s for s in report["sessions"]}
    # The pairwise check names the clash between the two README writers.
    pair = [c for c in sessions["readme-a"]["merge"]["conflicts"] if c.get("with_branch")]
    assert pair and pair[0]["path"] == "README.md"
    assert git(repo, "rev-parse", "main").strip() == main_before

    merged = agentrt("merge", report["run_id"], "--strategy", "auto", "--repo", str(repo),
                     "--json")
    assert merged.returncode == 3, merged.stderr
    after = {s["task_id"]: s for s in json.loads(merged.stdout)["sessions"]}
    statuses = sorted(after[t]["merge"]["status"] for t in ("readme-a", "readme-b"))
    assert statuses == ["conflicts", "merged"]
    assert after["new-file"]["merge"]["status"] == "merged"
    loser = next(s for s in after.values() if s["merge"]["status"] == "conflicts")
    assert loser["merge"]["conflicts"][0]["path"] == "README.md"
    assert git(repo, "rev-parse", loser["branch"]).strip() == loser["head_commit"]
    # main moved by merge commits only; the checked-out clean tree followed; no merge state.
    assert (repo / "NEW.md").read_text() == "fresh\n"
    assert git(repo, "status", "--porcelain") == ""
    assert not (repo / ".git" / "MERGE_HEAD").exists()
    assert "<<<<<<<" not in (repo / "README.md").read_text()
    stored = json.loads(agentrt("report", report["run_id"], "--json", "--repo", str(repo)).stdout)
    assert stored["merge"] == "auto"
    assert {s["task_id"]: s["merge"]["status"] for s in stored["sessions"]} == {
        t: s["merge"]["status"] for t, s in after.items()}
    subjects = git(repo, "log", "--format=%s", f"{main_before}..main", "--first-parent")
    assert all(line.startswith("agentrt: merge session") for line in subjects.splitlines())


def test_replay_runs_the_same_task_from_the_recorded_digest_and_base(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(
        "[run.resource_limits]\nmemory_mb = 96\ndisk_mb = 24\npids = 50\n"
        '[[tasks]]\nid = "det"\nprompt = "deterministic"\n'
        'command = ["sh", "-c", "echo $AGENT_TASK > out.txt; sort README.md > sorted.txt"]\n')
    first = json.loads(agentrt("run", str(task_file), "--repo", str(repo), "--json").stdout)
    original = first["sessions"][0]
    git(repo, "commit", "--allow-empty", "-qm", "main moves on")
    replay = agentrt("replay", original["id"][:8], "--repo", str(repo), "--json")
    assert replay.returncode == 0, replay.stderr
    again = json.loads(replay.stdout)["sessions"][0]
    assert again["id"] != original["id"]
    assert again["base_commit"] == original["base_commit"]
    assert again["image_digest"] == original["image_digest"]
    tree = "{}^{{tree}}"
    assert git(repo, "rev-parse", tree.format(again["head_commit"])) == git(
        repo, "rev-parse", tree.format(original["head_commit"]))


def test_replay_with_its_image_gone_says_how_to_get_it_back(
    docker_client: object, repo: Path, tmp_path: Path
) -> None:
    import io
    import secrets

    tag = f"agentrt/replay-test:{secrets.token_hex(4)}"
    recipe = f"FROM agentrt/base:latest\nLABEL agentrt.test={tag}\n".encode()
    image, _ = docker_client.images.build(fileobj=io.BytesIO(recipe), tag=tag, rm=True)  # type: ignore[attr-defined]
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(f'[run]\nimage = "{tag}"\n[[tasks]]\nid = "a"\ncommand = ["true"]\n')
    first = agentrt("run", str(task_file), "--repo", str(repo), "--json")
    session = json.loads(first.stdout)["sessions"][0]
    assert session["image_digest"] == image.id
    docker_client.images.remove(image.id, force=True)  # type: ignore[attr-defined]
    replay = agentrt("replay", session["id"], "--repo", str(repo))
    assert replay.returncode == 2
    assert image.id in replay.stderr
    assert f"`docker pull {tag}`" in replay.stderr and "docker load" in replay.stderr
    assert "Traceback" not in replay.stderr
