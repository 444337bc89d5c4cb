"""Shared fixtures: real git repositories, and a real Docker engine for `docker` tests.

In CI (``CI=true``) or with ``AGENTRT_REQUIRE_DOCKER=1`` a test that needs Docker *fails* when
the engine is missing; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRE_DOCKER = os.environ.get("CI", "").lower() in ("1", "true", "yes") or bool(
    os.environ.get("AGENTRT_REQUIRE_DOCKER")
)


def git(repo: Path, *args: str) -> str:
    """Run git in a test repository (the tests' own, trusted)."""
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout


def make_repo(path: Path, files: dict[str, str] | None = None) -> Path:
    """A git repository at ``path`` on branch main with one commit of ``files``."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for name, content in (files or {"README.md": "# demo\n", "src/app.py": "print('hi')\n"}).items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A small git repository on branch main."""
    return make_repo(tmp_path / "repo")


@pytest.fixture(scope="session")
def docker_client() -> Iterator[object]:
    """A client of a real Docker engine with agentrt/base:latest built."""
    from runtime.engine.discovery import connect
    from runtime.engine.images import require_image
    from runtime.errors import AgentRuntimeError

    try:
        client = connect()
        require_image(client, "agentrt/base:latest")
    except AgentRuntimeError as exc:  # no engine, or no base image: agentrt's own errors
        message = f"a Docker engine with agentrt/base:latest is required: {exc}"
        if REQUIRE_DOCKER:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    yield client
