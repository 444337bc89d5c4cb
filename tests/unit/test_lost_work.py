"""A kept volume that no longer exists is reported lost once, then no longer offered for a retry
(a real state database and repository; no engine needed)."""

from __future__ import annotations

from pathlib import Path

from runtime.backends.recovery import collect_garbage
from runtime.git.safe_git import MainRepo
from runtime.models import MergeInfo, SessionResult, SessionStatus, WorkState
from runtime.state.store import Store
from tests.merge_helpers import make_repo


def _kept_session(repo: MainRepo, volume: Path) -> None:
    result = SessionResult(id="w-abc123", task_id="w", branch="agent/w/abc123",
                           status=SessionStatus.SUCCEEDED, work=WorkState.KEPT,
                           merge=MergeInfo(status="not_merged", reason="work kept"),
                           warnings=["work not brought home yet: disk full; the volume is kept: "
                                     "run `agentrt recover w-abc123` (or `agentrt gc`) to retry"])
    with Store(repo.state_dir / "state.db") as store:
        store.create_run("r1", str(repo.root), "b" * 40, "main", "auto", "{}", None, None, None)
        store.upsert_session(result, "r1", volume_path=str(volume))


def test_a_kept_volume_removed_outside_agentrt_is_lost_once(tmp_path: Path) -> None:
    repo = MainRepo(make_repo(tmp_path))
    volume = repo.state_dir / "sessions" / "w-abc123"
    _kept_session(repo, volume)  # its directory never existed or was deleted

    first = collect_garbage(repo, None)
    assert list(first.lost_work) == ["w-abc123"]
    assert str(volume) in first.lost_work["w-abc123"]
    assert not first.errors
    with Store(repo.state_dir / "state.db") as store:
        [row] = store.list_sessions()
    assert row.result.work is WorkState.LOST
    assert row.result.merge.status == "not_merged" and "lost" in str(row.result.merge.reason)
    assert not any("agentrt recover" in w for w in row.result.warnings), row.result.warnings

    second = collect_garbage(repo, None)
    assert second.lost_work == {} and not second.errors


def test_a_kept_volume_still_on_disk_is_not_lost(tmp_path: Path) -> None:
    repo = MainRepo(make_repo(tmp_path))
    volume = repo.state_dir / "sessions" / "w-abc123"
    volume.mkdir(parents=True)
    _kept_session(repo, volume)
    report = collect_garbage(repo, None)
    assert report.lost_work == {}
    with Store(repo.state_dir / "state.db") as store:
        [row] = store.list_sessions()
    assert row.result.work is WorkState.KEPT
