"""Where agentrt looks for a Docker engine, and in which order (no Docker needed)."""

from __future__ import annotations

import json
from pathlib import Path

import docker.errors
import pytest
import requests
import requests.exceptions

from runtime.engine import discovery as engine
from runtime.errors import (
    EngineError,
    EngineNotFoundError,
    EngineRefusedError,
    EngineUnreachableError,
)


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def _write_context(home: Path, name: str, host: str, current: bool = True) -> None:
    docker_dir = home / ".docker"
    meta = docker_dir / "contexts" / "meta" / f"hash-of-{name}" / "meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"Name": name, "Endpoints": {"docker": {"Host": host}}}))
    if current:
        (docker_dir / "config.json").write_text(json.dumps({"currentContext": name}))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def default_socket(tmp_path: Path) -> str:
    return str(_touch(tmp_path / "run" / "docker.sock"))


def _urls(env: dict[str, str], home: Path, default_socket: str) -> list[str]:
    return [c.url for c in engine.engine_candidates(env, home, default_socket)]


def test_docker_host_is_the_only_candidate_when_set(home: Path, default_socket: str) -> None:
    _write_context(home, "remote", "tcp://10.0.0.1:2376")
    _touch(home / ".colima" / "agentrt" / "docker.sock")
    candidates = engine.engine_candidates({"DOCKER_HOST": "tcp://h:2375"}, home, default_socket)
    assert [(c.url, c.source) for c in candidates] == [("tcp://h:2375", "DOCKER_HOST")]


def test_current_context_comes_before_colima_and_the_default_socket(
    home: Path, default_socket: str
) -> None:
    _write_context(home, "remote", "tcp://10.0.0.1:2376")
    colima = _touch(home / ".colima" / "default" / "docker.sock")
    assert _urls({}, home, default_socket) == [
        "tcp://10.0.0.1:2376",
        f"unix://{colima}",
        f"unix://{default_socket}",
    ]


def test_docker_context_env_overrides_the_config_file(home: Path, default_socket: str) -> None:
    _write_context(home, "one", "tcp://one:2375")
    _write_context(home, "two", "tcp://two:2375", current=False)
    assert _urls({"DOCKER_CONTEXT": "two"}, home, default_socket)[0] == "tcp://two:2375"


def test_docker_config_env_moves_the_config_directory(tmp_path: Path, default_socket: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    _write_context(elsewhere, "remote", "tcp://r:2375")
    env = {"DOCKER_CONFIG": str(elsewhere / ".docker")}
    assert _urls(env, tmp_path / "empty-home", default_socket)[0] == "tcp://r:2375"


def test_default_context_and_unknown_context_are_ignored(home: Path, default_socket: str) -> None:
    (home / ".docker").mkdir()
    (home / ".docker" / "config.json").write_text(json.dumps({"currentContext": "default"}))
    assert _urls({}, home, default_socket) == [f"unix://{default_socket}"]
    assert _urls({"DOCKER_CONTEXT": "gone"}, home, default_socket) == [f"unix://{default_socket}"]


def test_context_pointing_at_a_missing_socket_is_skipped(home: Path, default_socket: str) -> None:
    _write_context(home, "desktop-linux", f"unix://{home}/.docker/run/docker.sock")
    assert _urls({}, home, default_socket) == [f"unix://{default_socket}"]


def test_colima_profile_agentrt_comes_before_default(home: Path, default_socket: str) -> None:
    default = _touch(home / ".colima" / "default" / "docker.sock")
    agentrt = _touch(home / ".colima" / "agentrt" / "docker.sock")
    candidates = engine.engine_candidates({}, home, default_socket)
    assert [c.url for c in candidates] == [
        f"unix://{agentrt}",
        f"unix://{default}",
        f"unix://{default_socket}",
    ]
    assert [c.source for c in candidates] == ["colima agentrt", "colima default", "default socket"]


def test_colima_home_env_is_searched_before_the_usual_places(
    tmp_path: Path, home: Path, default_socket: str
) -> None:
    usual = _touch(home / ".colima" / "agentrt" / "docker.sock")
    custom = _touch(tmp_path / "colima-home" / "agentrt" / "docker.sock")
    env = {"COLIMA_HOME": str(tmp_path / "colima-home")}
    assert _urls(env, home, default_socket)[:2] == [f"unix://{custom}", f"unix://{usual}"]


def test_xdg_colima_directory_is_found(home: Path, default_socket: str) -> None:
    sock = _touch(home / ".config" / "colima" / "default" / "docker.sock")
    assert _urls({}, home, default_socket)[0] == f"unix://{sock}"


def test_nothing_found_when_no_socket_exists(home: Path, tmp_path: Path) -> None:
    assert engine.engine_candidates({}, home, str(tmp_path / "absent.sock")) == []


def test_unreachable_engine_raises_engine_error_saying_what_to_do(tmp_path: Path) -> None:
    env = {"DOCKER_HOST": f"unix://{tmp_path}/nothing-here.sock"}
    with pytest.raises(EngineError) as caught:
        engine.connect(env=env, home=tmp_path)
    message = str(caught.value)
    assert "nothing-here.sock" in message
    assert "\n" not in message
    assert engine.how_to_start_engine() in message


def test_how_to_start_engine_names_the_platform_tool() -> None:
    assert "systemctl start docker" in engine.how_to_start_engine("linux")
    assert "agentrt colima up" in engine.how_to_start_engine("darwin")
    assert "DOCKER_HOST" in engine.how_to_start_engine("win32")


def _answer(status: int, message: str) -> requests.Response:
    """An engine's HTTP answer with an error, as the docker SDK receives it."""
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps({"message": message}).encode()
    return response


@pytest.mark.parametrize(
    ("error", "kind", "words"),
    [
        (docker.errors.APIError("500 Server Error", _answer(500, "driver failed"),
                                explanation="driver failed"),
         EngineRefusedError, "the engine refused (HTTP 500): driver failed"),
        (docker.errors.APIError("400 Client Error", _answer(400, "invalid mount"),
                                explanation="invalid mount"),
         EngineRefusedError, "the engine refused (HTTP 400): invalid mount"),
        (docker.errors.NotFound("404", _answer(404, "No such container: x"),
                                explanation="No such container: x"),
         EngineNotFoundError, "not found (No such container: x)"),
        (requests.exceptions.ConnectionError("connection refused"),
         EngineUnreachableError, "engine unreachable (connection refused)"),
        (engine.EngineTransportError("read timed out"),
         EngineUnreachableError, "engine unreachable (read timed out)"),
    ],
)
def test_docker_and_transport_errors_are_named_as_they_are(
        error: Exception, kind: type[EngineError], words: str) -> None:
    with (
        pytest.raises(EngineError, match="could not list things") as caught,
        engine.engine_errors("list things"),
    ):
        raise error
    assert caught.value.__cause__ is error
    assert type(caught.value) is kind
    assert words in str(caught.value)
    # Only a failure to reach the engine tells the user to start one.
    assert ("start dockerd" in str(caught.value)) == (kind is EngineUnreachableError)


def test_a_refusal_carries_its_status_code() -> None:
    error = docker.errors.APIError("409", _answer(409, "conflict"), explanation="conflict")
    assert getattr(engine.engine_error("create it", error), "status_code", None) == 409
