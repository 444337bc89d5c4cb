"""Where volumes live: AGENTRT_VOLUMES_DIR, then [run] volumes_dir, then the state directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.config import RunConfig
from runtime.engine.volumes import (
    VOLUMES_DIR_ENV,
    known_volume_roots,
    resolve_volumes_root,
    volumes_root,
)
from runtime.errors import ConfigError

STATE = Path("/srv/code/shop/.git/agentrt")


def test_without_a_choice_volumes_live_in_the_state_directory() -> None:
    assert resolve_volumes_root(STATE, None, None) == STATE
    assert resolve_volumes_root(STATE, None, "") == STATE


def test_the_environment_wins_over_the_task_file() -> None:
    from_env = resolve_volumes_root(STATE, Path("/data/from-config"), "/data/from-env")
    assert from_env.parent == Path("/data/from-env")
    from_config = resolve_volumes_root(STATE, Path("/data/from-config"), None)
    assert from_config.parent == Path("/data/from-config")


def test_each_repository_gets_its_own_directory_under_a_shared_volumes_dir() -> None:
    one = resolve_volumes_root(STATE, Path("/data"), None)
    other = resolve_volumes_root(Path("/srv/other/shop/.git/agentrt"), Path("/data"), None)
    assert one.name.startswith("shop-") and other.name.startswith("shop-")
    assert one != other
    assert resolve_volumes_root(STATE, Path("/data"), None) == one  # stable


def test_a_relative_volumes_dir_is_refused_naming_where_it_came_from() -> None:
    with pytest.raises(ConfigError, match=r"\[run\] volumes_dir: vols"):
        resolve_volumes_root(STATE, Path("vols"), None)
    with pytest.raises(ConfigError, match=VOLUMES_DIR_ENV):
        resolve_volumes_root(STATE, None, "vols")


def test_the_task_file_accepts_volumes_dir() -> None:
    assert RunConfig.model_validate({"volumes_dir": "/data/v"}).volumes_dir == Path("/data/v")
    assert RunConfig().volumes_dir is None


def test_chosen_roots_are_remembered_for_gc(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VOLUMES_DIR_ENV, raising=False)
    state = tmp_path / "repo" / ".git" / "agentrt"
    assert volumes_root(state, None) == state
    assert known_volume_roots(state) == [state]
    chosen = volumes_root(state, tmp_path / "vols")
    volumes_root(state, tmp_path / "vols")
    assert known_volume_roots(state) == [state, chosen]
    monkeypatch.setenv(VOLUMES_DIR_ENV, str(tmp_path / "other"))
    from_env = resolve_volumes_root(state, None, str(tmp_path / "other"))
    assert known_volume_roots(state) == [state, chosen, from_env]
