"""A folder that is no git repository, run through the CLI with two agents: the folder gets no
.git, the merged files are written into it, and a later merge is refused (exit 3) where the
folder changed underneath in the same file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.helpers import agentrt

TASKS = """
[run]
isolation_strategy = "directory"
merge = "{merge}"
max_concurrent_agents = 2
conflict_radar_seconds = 0

[run.resource_limits]
memory_mb = 256
disk_mb = 128
time_seconds = 120

[[tasks]]
id = "edit-module"
command = ["sh", "-c", "echo 'VALUE = -1' > src/pkg00/mod0000.py"]

[[tasks]]
id = "add-notes"
command = ["sh", "-c", "echo notes > NOTES.md && git add NOTES.md && git commit -qm notes"]
"""


def make_folder(path: Path, files: int = 2000) -> Path:
    for number in range(files):
        module = path / "src" / f"pkg{number // 100:02d}" / f"mod{number:04d}.py"
        module.parent.mkdir(parents=True, exist_ok=True)
        module.write_text(f"VALUE = {number}\n")
    (path / "README.md").write_text("# a folder\n")
    return path


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.docker
def test_two_agents_on_a_folder_of_2000_files_merge_into_the_folder(
        tmp_path: Path, docker_client: object) -> None:
    folder = make_folder(tmp_path / "folder")
    before = snapshot(folder)
    env = {"AGENTRT_STATE_HOME": str(tmp_path / "state")}
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(TASKS.format(merge="auto"))
    run = agentrt("run", str(tasks), "--repo", str(folder), "--json", env=env)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert [s["merge"]["status"] for s in report["sessions"]] == ["merged", "merged"]
    assert not (folder / ".git").exists()
    after = snapshot(folder)
    assert after.pop("src/pkg00/mod0000.py") == "VALUE = -1\n"
    assert after.pop("NOTES.md") == "notes\n"
    before.pop("src/pkg00/mod0000.py")
    assert after == before  # the 1,999 other files and the README as they were
    private = list((tmp_path / "state" / "dirs").glob("*/repo.git"))
    assert len(private) == 1
    assert not docker_client.containers.list(  # type: ignore[attr-defined]
        all=True, filters={"label": f"agentrt.repo={folder}"})
    # report and revert take the folder as --repo
    shown = agentrt("report", "latest", "--repo", str(folder), "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    reverted = agentrt("revert", report["run_id"], "--repo", str(folder), env=env)
    assert reverted.returncode == 0, reverted.stderr
    assert (folder / "src/pkg00/mod0000.py").read_text() == "VALUE = 0\n"
    assert not (folder / "NOTES.md").exists()


@pytest.mark.docker
def test_a_merge_is_refused_where_the_folder_changed_in_the_same_file_since_the_run(
        tmp_path: Path, docker_client: object) -> None:
    folder = make_folder(tmp_path / "folder", files=200)
    env = {"AGENTRT_STATE_HOME": str(tmp_path / "state")}
    tasks = tmp_path / "tasks.toml"
    tasks.write_text(TASKS.format(merge="review"))
    run = agentrt("run", str(tasks), "--repo", str(folder), "--json", env=env)
    assert run.returncode == 0, run.stderr
    run_id = json.loads(run.stdout)["run_id"]
    # Edited by the user after the snapshot the run started from; an untouched file too.
    (folder / "src/pkg00/mod0000.py").write_text("VALUE = 'mine'\n")
    (folder / "README.md").write_text("# my own readme\n")
    merged = agentrt("merge", run_id, "--strategy", "auto", "--repo", str(folder), "--json",
                     env=env)
    assert merged.returncode == 3, merged.stderr
    sessions = {s["task_id"]: s["merge"] for s in json.loads(merged.stdout)["sessions"]}
    assert sessions["edit-module"]["status"] == "conflicts"
    assert [c["path"] for c in sessions["edit-module"]["conflicts"]] == ["src/pkg00/mod0000.py"]
    assert [c["kind"] for c in sessions["edit-module"]["conflicts"]] == ["changed in folder"]
    assert sessions["add-notes"]["status"] == "merged"
    assert (folder / "src/pkg00/mod0000.py").read_text() == "VALUE = 'mine'\n"
    assert (folder / "README.md").read_text() == "# my own readme\n"
    assert (folder / "NOTES.md").read_text() == "notes\n"
    assert not (folder / ".git").exists()
