"""Small rules that keep one fact in one place: command-line overrides are validated like the
task file, the merge strategies and engines reach click from their types, the state database
has one path helper, and an old git is refused when a repository is opened."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import get_args

import pytest
from click.testing import CliRunner

from runtime.cli.main import main
from runtime.config import EngineKind, MergeStrategy, RunConfig
from runtime.errors import ConfigError
from runtime.git import safe_git
from runtime.git.safe_git import MainRepo

ROOT = Path(__file__).resolve().parents[2]


def test_overrides_are_validated_like_the_task_file() -> None:
    config = RunConfig()
    assert config.with_overrides(merge="auto", max_concurrent_agents=3).merge == "auto"
    with pytest.raises(ConfigError, match="field merge"):
        config.with_overrides(merge="sometimes")
    with pytest.raises(ConfigError, match="field max_concurrent_agents"):
        config.with_overrides(max_concurrent_agents=0)
    # The control: model_copy(update=...) takes the same bad values without a word.
    assert config.model_copy(update={"merge": "sometimes"}).merge == "sometimes"


def test_overrides_keep_every_other_value() -> None:
    config = RunConfig.model_validate({"auto_merge": True, "egress_allow": ["api.example.com"],
                                       "resource_limits": {"memory_mb": 300}})
    changed = config.with_overrides(engine="swarm")
    assert changed == config.model_copy(update={"engine": "swarm"})


def test_run_offers_the_strategies_and_engines_of_the_types() -> None:
    help_text = CliRunner().invoke(main, ["run", "--help"], terminal_width=200).output
    merge = re.search(r"--merge \[([^\]]+)\]", help_text)
    engine = re.search(r"--engine \[([^\]]+)\]", help_text)
    assert merge and merge[1].split("|") == list(get_args(MergeStrategy))
    assert engine and engine[1].split("|") == list(get_args(EngineKind))


def test_the_state_database_is_named_in_one_place() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{number}"
                 for path in sorted((ROOT / "runtime").rglob("*.py"))
                 if path.name != "paths.py"
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if '"state.db"' in line]
    assert not offenders, f"use runtime.paths.state_db: {offenders}"


def test_an_old_git_is_refused_when_a_repository_is_opened(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert MainRepo(tmp_path).root == tmp_path.resolve()  # the installed git is new enough
    monkeypatch.setattr(safe_git, "_installed_git_version", lambda: (2, 30, 2))
    with pytest.raises(ConfigError, match=r"git 2\.30\.2 is too old: agentrt needs git >= 2\.38"):
        MainRepo(tmp_path)
