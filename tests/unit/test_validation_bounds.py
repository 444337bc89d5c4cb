"""Every number a user writes is a strict integer within a documented bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runtime import limits
from runtime.cli.main import main
from runtime.config import parse_task_file
from runtime.errors import ConfigError

TASK = {"id": "a", "command": ["true"]}
LIMITS = {
    "memory_mb": limits.MAX_MEMORY_MB,
    "cpu_percent": limits.MAX_CPU_PERCENT,
    "time_seconds": limits.MAX_TIME_SECONDS,
    "disk_mb": limits.MAX_DISK_MB,
    "pids": limits.MAX_PIDS,
}
RUN_NUMBERS = {
    "max_concurrent_agents": (1, limits.MAX_CONCURRENT_AGENTS),
    "conflict_radar_seconds": (0, limits.MAX_RADAR_SECONDS),
}


def parse(run: dict[str, Any] | None = None, task: dict[str, Any] | None = None) -> Any:
    return parse_task_file({"run": run or {}, "tasks": [{**TASK, **(task or {})}]})


@pytest.mark.parametrize(("field", "high"), LIMITS.items())
def test_each_limit_accepts_its_bound_and_refuses_past_it(field: str, high: int) -> None:
    assert getattr(parse({"resource_limits": {field: high}}).run.resource_limits, field) == high
    assert parse(task={"resource_limits": {field: 1}}).tasks[0].resource_limits.model_dump()[
        field] == 1
    for where in ("run", "task"):
        for bad in (high + 1, 0, -1, 10**20):
            limits = {"resource_limits": {field: bad}}
            with pytest.raises(ConfigError, match=f"resource_limits.{field}"):
                parse(limits if where == "run" else None, limits if where == "task" else None)


@pytest.mark.parametrize("field", [*LIMITS, *RUN_NUMBERS])
@pytest.mark.parametrize("value", ["512", 512.0, True, "1e3", None])
def test_numbers_are_strict_integers(field: str, value: object) -> None:
    run = {field: value} if field in RUN_NUMBERS else {"resource_limits": {field: value}}
    with pytest.raises(ConfigError, match=field):
        parse(run)


@pytest.mark.parametrize(("field", "bounds"), RUN_NUMBERS.items())
def test_run_numbers_have_bounds(field: str, bounds: tuple[int, int]) -> None:
    low, high = bounds
    assert getattr(parse({field: low}).run, field) == low
    assert getattr(parse({field: high}).run, field) == high
    for bad in (low - 1, high + 1):
        with pytest.raises(ConfigError, match=field):
            parse({field: bad})


@pytest.mark.parametrize(("where", "field", "value"), [
    ("task", "env", {"X": "a\0b"}),
    ("task", "prompt", "do\0it"),
    ("task", "image", "img\0:latest"),
    ("run", "base", "HEAD\0"),
    ("run", "image", "img\0"),
    ("run", "database_url", "postgresql://a\0@h/db"),
    ("run", "target", "main\0"),
])
def test_nul_bytes_are_refused_at_load(where: str, field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"field {field}"):
        parse({field: value} if where == "run" else None,
              {field: value} if where == "task" else None)


@pytest.mark.parametrize("target", ["-x", "a..b", "@", "main.lock", "a b", "x~1", "a:b", "",
                                    "refs/heads/../x", "a@{1}"])
def test_invalid_targets_are_refused_at_load(target: str) -> None:
    with pytest.raises(ConfigError, match="field target"):
        parse({"target": target})


@pytest.mark.parametrize("target", ["main", "feature/x", "release-1.2", "agent/a/123abc"])
def test_valid_targets_load(target: str) -> None:
    assert parse({"target": target}).run.target == target


def test_defaults_are_within_bounds() -> None:
    parsed = parse()
    assert parsed.run.resource_limits.pids == 512
    assert parsed.run.max_concurrent_agents == 5


def test_max_concurrent_flag_is_bounded_too(tmp_path: Path, repo: Path) -> None:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text('[[tasks]]\nid = "a"\ncommand = ["true"]\n')
    result = CliRunner().invoke(main, ["run", str(task_file), "--repo", str(repo),
                                       "--max-concurrent", str(limits.MAX_CONCURRENT_AGENTS + 1)])
    assert result.exit_code == 2
    assert "--max-concurrent" in result.output
    assert not (repo / ".git" / "agentrt").exists()


def test_operations_doc_lists_every_bound() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    section = doc.split("## Limits and their bounds", 1)[1].split("\n## ", 1)[0]
    for field, high in {**LIMITS, **{k: v[1] for k, v in RUN_NUMBERS.items()}}.items():
        assert f"`{field}`" in section and f"{high:,}" in section, field
