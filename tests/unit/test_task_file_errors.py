"""Every bad input gets exit 2, one clear line naming file, task and field, and nothing made."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from runtime.cli.main import main
from runtime.config import find_cycle, load_task_file

GOOD_TASK = '[[tasks]]\nid = "a"\ncommand = ["true"]\n'


def run_cli(tmp_path: Path, text: str, repo: Path, *extra: str) -> tuple[int, str]:
    task_file = tmp_path / "tasks.toml"
    task_file.write_text(text)
    result = CliRunner().invoke(main, ["run", str(task_file), "--repo", str(repo), *extra])
    return result.exit_code, result.output


CASES = [
    ("syntax", "[run\nmax_concurrent_agents = 1\n", ["TOML syntax error", "line 1"]),
    ("unknown run key", "[run]\nmax_agents = 3\n" + GOOD_TASK, ["[run]", "max_agents", "unknown key"]),
    ("unknown task key", '[[tasks]]\nid = "a"\ncommand = ["true"]\npromt = "x"\n',
     ["task 'a'", "promt", "unknown key"]),
    ("wrong type", "[run]\nmax_concurrent_agents = \"five\"\n" + GOOD_TASK,
     ["max_concurrent_agents", "integer"]),
    ("zero limit", "[run.resource_limits]\nmemory_mb = 0\n" + GOOD_TASK,
     ["resource_limits.memory_mb", "greater than 0"]),
    ("negative task limit",
     '[[tasks]]\nid = "a"\ncommand = ["true"]\nresource_limits = { pids = -1 }\n',
     ["task 'a'", "resource_limits.pids", "greater than 0"]),
    ("path traversal id", '[[tasks]]\nid = "../x"\ncommand = ["true"]\n',
     ["task '../x'", "field id", "not a valid task id"]),
    ("uppercase id", '[[tasks]]\nid = "Parser"\ncommand = ["true"]\n', ["field id"]),
    ("too long id", f'[[tasks]]\nid = "{"a" * 41}"\ncommand = ["true"]\n', ["field id"]),
    ("duplicate id", GOOD_TASK + GOOD_TASK, ["task 'a'", "duplicate task id"]),
    ("unknown dep", '[[tasks]]\nid = "a"\ncommand = ["true"]\ndeps = ["b"]\n',
     ["task 'a'", "field deps", "unknown task 'b'"]),
    ("cycle",
     '[[tasks]]\nid = "a"\ncommand = ["true"]\ndeps = ["b"]\n'
     '[[tasks]]\nid = "b"\ncommand = ["true"]\ndeps = ["a"]\n',
     ["dependency cycle", "a -> b -> a"]),
    ("unknown merge strategy", "[run]\nmerge = \"yolo\"\n" + GOOD_TASK, ["[run]", "field merge"]),
    ("no command", '[[tasks]]\nid = "a"\n', ["task 'a'", "field command"]),
    ("no tasks", "[run]\nmax_concurrent_agents = 1\n", ["field tasks"]),
    ("bad env name", '[[tasks]]\nid = "a"\ncommand = ["true"]\nenv = { "1X" = "y" }\n',
     ["task 'a'", "field env"]),
    ("pids past int64", "[run.resource_limits]\npids = 100000000000000000000\n" + GOOD_TASK,
     ["[run]", "resource_limits.pids", "less than or equal to 4194304"]),
    ("memory as a string", '[run.resource_limits]\nmemory_mb = "512"\n' + GOOD_TASK,
     ["[run]", "resource_limits.memory_mb", "valid integer"]),
    ("time as a float",
     '[[tasks]]\nid = "a"\ncommand = ["true"]\nresource_limits = { time_seconds = 60.0 }\n',
     ["task 'a'", "resource_limits.time_seconds", "valid integer"]),
    ("absurd time", "[run.resource_limits]\ntime_seconds = 999999999\n" + GOOD_TASK,
     ["[run]", "resource_limits.time_seconds", "less than or equal to 604800"]),
    ("NUL in an env value",
     '[[tasks]]\nid = "a"\ncommand = ["true"]\nenv = { X = "a\\u0000b" }\n',
     ["task 'a'", "field env", "NUL"]),
    ("NUL in the prompt", '[[tasks]]\nid = "a"\ncommand = ["true"]\nprompt = "a\\u0000b"\n',
     ["task 'a'", "field prompt", "NUL"]),
    ("target starting with a dash", '[run]\ntarget = "-x"\n' + GOOD_TASK,
     ["[run]", "field target", "invalid branch name '-x'"]),
    ("target that is a range", '[run]\ntarget = "a..b"\n' + GOOD_TASK,
     ["[run]", "field target", "invalid branch name 'a..b'"]),
    ("too many agents", "[run]\nmax_concurrent_agents = 100000\n" + GOOD_TASK,
     ["[run]", "field max_concurrent_agents", "less than or equal to"]),
]


@pytest.mark.parametrize(("name", "text", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_task_file_exits_2_with_a_clear_message(
    tmp_path: Path, repo: Path, name: str, text: str, expected: list[str]
) -> None:
    code, output = run_cli(tmp_path, text, repo)
    assert code == 2, output
    assert "tasks.toml" in output
    for fragment in expected:
        assert fragment in output, f"{fragment!r} missing from {output!r}"
    assert "Traceback" not in output
    assert not (repo / ".git" / "agentrt").exists(), "nothing may be created on bad input"


def test_missing_task_file_exits_2(tmp_path: Path, repo: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(tmp_path / "nope.toml"), "--repo", str(repo)])
    assert result.exit_code == 2
    assert "nope.toml" in result.output and "not found" in result.output


def test_repo_that_is_not_git_exits_2(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    code, output = run_cli(tmp_path, GOOD_TASK, plain)
    assert code == 2
    assert "not a git repository" in output
    assert not (plain / ".git").exists()


def test_missing_repo_directory_exits_2(tmp_path: Path) -> None:
    code, output = run_cli(tmp_path, GOOD_TASK, tmp_path / "missing")
    assert code == 2
    assert "not a directory" in output


def test_secret_values_need_a_name_not_a_value(tmp_path: Path, repo: Path) -> None:
    code, output = run_cli(
        tmp_path, '[[tasks]]\nid = "a"\ncommand = ["true"]\nsecrets = ["sk-abc=1"]\n', repo)
    assert code == 2
    assert "field secrets" in output


def test_good_file_parses_with_defaults_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(
        "[run]\nmax_concurrent_agents = 2\n[run.resource_limits]\nmemory_mb = 256\n"
        '[[tasks]]\nid = "a"\ncommand = ["true"]\nresource_limits = { cpu_percent = 200 }\n'
    )
    parsed = load_task_file(path)
    limits = parsed.run.limits_for(parsed.tasks[0])
    assert (limits.memory_mb, limits.cpu_percent, limits.pids) == (256, 200, 512)
    assert parsed.run.max_concurrent_agents == 2


def test_find_cycle_names_the_loop() -> None:
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a"]}) is None
