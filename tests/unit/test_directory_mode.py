"""Directory mode on a folder that is no git repository: a private repository in agentrt's
state directory, merges written back into the folder, refused where the folder changed
underneath (real git; no Docker)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from runtime.errors import ConfigError
from runtime.git.directory_mode import CHANGED_IN_FOLDER, open_folder, open_repo, private_dir
from runtime.git.safe_git import MainRepo
from runtime.models import SessionResult, SessionStatus
from runtime.run.merging import merge_agent_results
from tests.conftest import make_repo


@pytest.fixture
def state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "state"
    monkeypatch.setenv("AGENTRT_STATE_HOME", str(home))
    return home


def make_folder(path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


def private_git(repo: MainRepo, *args: str, input: str | None = None,
                env: dict[str, str] | None = None) -> str:
    return subprocess.run(
        ["git", f"--git-dir={repo.git_dir}", *args], input=input, capture_output=True,
        text=True, check=True,
        env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
             "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", **(env or {})},
    ).stdout.strip()


def agent_branch(repo: MainRepo, name: str, files: dict[str, str | None]) -> SessionResult:
    """What a session leaves: a branch off main in the private repository, succeeded."""
    index = {"GIT_INDEX_FILE": str(repo.git_dir / f"test-index-{name}")}
    private_git(repo, "read-tree", "main", env=index)
    for path, text in files.items():
        if text is None:
            private_git(repo, "update-index", "--index-info", input=f"0 {'0' * 40}\t{path}\n",
                        env=index)
            continue
        blob = private_git(repo, "hash-object", "-w", "--stdin", input=text)
        private_git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}",
                    env=index)
    tree = private_git(repo, "write-tree", env=index)
    commit = private_git(repo, "commit-tree", tree, "-p", "main", "-m", name)
    branch = f"agent/{name}/abc123"
    private_git(repo, "update-ref", f"refs/heads/{branch}", commit)
    return SessionResult(id=f"{name}-abc123", task_id=name, branch=branch,
                         status=SessionStatus.SUCCEEDED)


def test_a_folder_is_kept_in_a_private_repository_and_never_gets_a_git_dir(
        tmp_path: Path, state_home: Path) -> None:
    folder = make_folder(tmp_path / "project", {"a.txt": "a\n", "sub/b.txt": "b\n",
                                                "build.log": "x\n", ".gitignore": "*.log\n"})
    repo = open_folder(folder)
    assert not (folder / ".git").exists()
    assert repo.folder == folder.resolve() and repo.root == folder.resolve()
    assert repo.git_dir == private_dir(folder.resolve()) / "repo.git"
    assert repo.git_dir.is_relative_to(state_home)
    assert (repo.git_dir.parent / "folder").read_text().strip() == str(folder.resolve())
    assert private_git(repo, "ls-tree", "-r", "--name-only", "main").splitlines() == \
        [".gitignore", "a.txt", "sub/b.txt"]  # the folder's own ignore rules hold
    first = repo.branch_head("main")
    assert open_folder(folder).branch_head("main") == first  # unchanged: no new snapshot
    (folder / "a.txt").write_text("a2\n")
    again = open_folder(folder)
    assert again.branch_head("main") != first
    assert private_git(again, "show", "main:a.txt") == "a2"
    # Other verbs (report, merge, revert) find the private repository from the folder alone.
    assert MainRepo(folder).git_dir == repo.git_dir


def test_the_strategy_must_fit_the_path(tmp_path: Path, state_home: Path) -> None:
    folder = make_folder(tmp_path / "plain", {"a.txt": "a\n"})
    with pytest.raises(ConfigError, match='isolation_strategy = "directory"'):
        open_repo(folder, "git_worktree")
    git_repo = make_repo(tmp_path / "repo")
    with pytest.raises(ConfigError, match="inside one"):
        open_repo(git_repo, "directory")
    with pytest.raises(ConfigError, match="inside one"):
        open_repo(git_repo / "src", "directory")
    with pytest.raises(ConfigError, match="not a git repository"):
        MainRepo(folder)  # never opened in directory mode: no private repository to use


def test_auto_merge_writes_changed_files_into_the_folder_and_keeps_other_edits(
        tmp_path: Path, state_home: Path) -> None:
    folder = make_folder(tmp_path / "project", {"a.txt": "a\n", "b.txt": "b\n", "c.txt": "c\n",
                                                "gone.txt": "bye\n"})
    repo = open_folder(folder)
    one = agent_branch(repo, "one", {"a.txt": "A\n", "new/deep.txt": "deep\n",
                                     "gone.txt": None})
    two = agent_branch(repo, "two", {"b.txt": "B\n"})
    (folder / "c.txt").write_text("c edited by hand\n")  # untouched by agents: kept
    merge_agent_results([one, two], "auto", repo)
    assert [one.merge.status, two.merge.status] == ["merged", "merged"]
    assert (folder / "a.txt").read_text() == "A\n"
    assert (folder / "b.txt").read_text() == "B\n"
    assert (folder / "new" / "deep.txt").read_text() == "deep\n"
    assert not (folder / "gone.txt").exists()
    assert (folder / "c.txt").read_text() == "c edited by hand\n"
    assert not (folder / ".git").exists()
    assert not list(folder.rglob(".agentrt-*"))  # no temporary files left


def test_a_merge_is_refused_where_the_folder_changed_underneath_in_the_same_file(
        tmp_path: Path, state_home: Path) -> None:
    folder = make_folder(tmp_path / "project", {"a.txt": "a\n", "b.txt": "b\n"})
    repo = open_folder(folder)
    clash = agent_branch(repo, "clash", {"a.txt": "agent\n", "b.txt": "agent b\n"})
    fine = agent_branch(repo, "fine", {"new.txt": "n\n"})
    main_before = repo.branch_head("main")
    (folder / "a.txt").write_text("the user's own edit\n")
    merge_agent_results([clash, fine], "auto", repo)
    assert clash.merge.status == "conflicts"
    assert [(c.path, c.kind) for c in clash.merge.conflicts] == [("a.txt", CHANGED_IN_FOLDER)]
    assert (folder / "a.txt").read_text() == "the user's own edit\n"
    assert (folder / "b.txt").read_text() == "b\n"  # nothing of the refused session written
    assert fine.merge.status == "merged" and (folder / "new.txt").read_text() == "n\n"
    # main moved only by the session that landed
    assert private_git(repo, "rev-parse", "main^1") == main_before
    assert private_git(repo, "show", "main:a.txt") == "a"


def test_a_folder_symlink_is_never_written_through(tmp_path: Path, state_home: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = make_folder(tmp_path / "project", {"a.txt": "a\n"})
    repo = open_folder(folder)
    escape = agent_branch(repo, "escape", {"link/evil.txt": "x\n"})
    (folder / "link").symlink_to(outside)
    merge_agent_results([escape], "auto", repo)
    assert escape.merge.status == "conflicts"
    assert not (outside / "evil.txt").exists()


def test_a_revert_in_directory_mode_writes_the_old_files_back(
        tmp_path: Path, state_home: Path) -> None:
    from runtime import revert_session
    from runtime.state.store import Store

    folder = make_folder(tmp_path / "project", {"a.txt": "a\n"})
    repo = open_folder(folder)
    session = agent_branch(repo, "one", {"a.txt": "A\n", "added.txt": "new\n"})
    with Store(repo.state_dir / "state.db") as store:
        store.create_run("r1", str(folder), str(repo.branch_head("main")), "main", "auto", "{}",
                         None, None, None)
        store.upsert_session(session, "r1")
    merge_agent_results([session], "auto", repo)
    assert (folder / "a.txt").read_text() == "A\n"
    (done,) = revert_session(session.id, folder)  # the folder names its private repository
    assert (folder / "a.txt").read_text() == "a\n"
    assert not (folder / "added.txt").exists()
    assert private_git(repo, "rev-parse", "main^") == session.merge.merge_commit
    assert done.revert_commit == repo.branch_head("main")
