"""Engine errors are named as they are, from a real engine: its refusal (status code and its own
words), a missing object, and no engine at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.engine.discovery import connect, engine_errors
from runtime.errors import EngineNotFoundError, EngineRefusedError, EngineUnreachableError

pytestmark = pytest.mark.docker


def test_a_request_the_engine_refuses_is_a_refusal_with_its_words(docker_client: object) -> None:
    with pytest.raises(EngineRefusedError) as caught, engine_errors("create the container"):
        docker_client.api.create_container(  # type: ignore[attr-defined]
            "agentrt/base:latest", ["true"], host_config={"Memory": 1024})
    message = str(caught.value)
    assert caught.value.status_code == 400, message
    assert "the engine refused (HTTP 400)" in message and "memory" in message.lower(), message
    assert "unreachable" not in message and "dockerd" not in message


def test_a_missing_container_is_not_found(docker_client: object) -> None:
    with pytest.raises(EngineNotFoundError, match="not found .*no-such-container"), \
            engine_errors("inspect the container"):
        docker_client.api.inspect_container("no-such-container")  # type: ignore[attr-defined]


def test_no_engine_at_all_is_unreachable(tmp_path: Path) -> None:
    with pytest.raises(EngineUnreachableError, match="start dockerd"):
        connect(env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock"}, home=tmp_path)
