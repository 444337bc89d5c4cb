"""IsolatedAgentSession as a context manager: soft disk limits, half-made sessions undone."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import ResourceLimits, RunConfig, Task
from runtime.errors import VolumeError
from runtime.models import SessionStatus
from runtime.run.session import IsolatedAgentSession
from tests.conftest import git

pytestmark = pytest.mark.docker

CONFIG = RunConfig(resource_limits=ResourceLimits(memory_mb=128, disk_mb=20, time_seconds=60))


def test_soft_disk_limit_stops_a_filler_as_disk_full(repo: Path, docker_client: object) -> None:
    filler = Task(id="filler", command=["sh", "-c", "echo start > s.txt; "
                                                    "for i in $(seq 1 60); do "
                                                    "dd if=/dev/zero of=f$i bs=1M count=1 "
                                                    "2>/dev/null; sleep 0.1; done"])
    with IsolatedAgentSession(filler, CONFIG, repo=repo, client=docker_client,  # type: ignore[arg-type]
                              disk_mode="soft", stop_grace_seconds=1) as session:
        result = session.run()
    assert result.disk_limit_mode == "soft"
    assert result.status is SessionStatus.DISK_FULL, result.reason
    assert git(repo, "show", f"{result.head_commit}:s.txt") == "start\n"


def test_a_volume_that_cannot_be_made_leaves_no_branch_or_directory(
    repo: Path, docker_client: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runtime.backends.docker.trees

    def broken(*args: object, **kwargs: object) -> None:
        raise VolumeError("mount: bad loop image")

    monkeypatch.setattr(runtime.backends.docker.trees, "create_volume", broken)
    session = IsolatedAgentSession(Task(id="a", command=["true"]), CONFIG, repo=repo,
                                   client=docker_client)  # type: ignore[arg-type]
    with pytest.raises(VolumeError), session:
        pass
    assert git(repo, "branch", "--list", "agent/*") == ""
    assert not session.session_dir.exists()


def test_session_as_context_manager_cleans_up_even_when_the_body_raises(
    repo: Path, docker_client: object
) -> None:
    session = IsolatedAgentSession(Task(id="b", command=["sh", "-c", "echo x > x.txt"]), CONFIG,
                                   repo=repo, client=docker_client)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError), session:
        session.run()
        raise RuntimeError("caller bug")
    assert not session.session_dir.exists()
    assert git(repo, "show", f"{session.branch}:x.txt") == "x\n"
