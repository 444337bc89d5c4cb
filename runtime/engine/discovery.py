"""Finding, reaching and describing the Docker engine.

:func:`connect` looks for an engine in the order a user would expect:

1. ``DOCKER_HOST`` (with ``DOCKER_TLS_VERIFY`` / ``DOCKER_CERT_PATH``); when set it is the only
   candidate, because a user who names an engine does not want a different one;
2. the current docker context (``DOCKER_CONTEXT``, else ``currentContext`` in
   ``~/.docker/config.json``; endpoints in ``~/.docker/contexts/meta/*/meta.json``);
3. Colima's sockets: profile ``agentrt`` first, then ``default``, under ``$COLIMA_HOME``,
   ``~/.colima`` and ``~/.config/colima``;
4. ``/var/run/docker.sock``.

Unix sockets that do not exist are skipped; the first candidate that answers a ping wins.
:func:`get_client` shares one client per process. Every ``docker.errors`` (and transport) error
raised here, or inside :func:`engine_errors`, surfaces as :class:`~runtime.errors.EngineError`.

The clients made here raise :class:`EngineTransportError` for a transport failure (refused,
reset, read timeout) instead of the bare ``requests`` exception: it is both a
``docker.errors.DockerException`` and a ``requests.exceptions.RequestException``, so code that
guards engine calls with either (as recovery does) also catches a hung or vanished engine.
``AGENTRT_ENGINE_TIMEOUT`` (seconds, default 120) bounds every call to the engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import docker
import docker.errors
import requests.exceptions

from runtime.errors import (
    EngineError,
    EngineNotFoundError,
    EngineRefusedError,
    EngineUnreachableError,
)

DEFAULT_SOCKET = "/var/run/docker.sock"
CLIENT_TIMEOUT_S = 120
PING_TIMEOUT_S = 10
TIMEOUT_ENV = "AGENTRT_ENGINE_TIMEOUT"
COLIMA_PROFILES = ("agentrt", "default")

_client: docker.DockerClient | None = None
_client_lock = threading.Lock()
_endpoints: weakref.WeakKeyDictionary[Any, Endpoint] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Endpoint:
    """Where an engine may be: its URL and where agentrt learned of it."""

    url: str
    source: str  # "DOCKER_HOST", "context <name>", "colima <profile>", "default socket"

    @property
    def socket_path(self) -> Path | None:
        """The filesystem path of a ``unix://`` endpoint, else None."""
        if self.url.startswith("unix://"):
            return Path(self.url.removeprefix("unix://"))
        return None


class EngineTransportError(
    docker.errors.DockerException, requests.exceptions.RequestException  # type: ignore[misc]
):
    """The engine could not be reached or did not answer in time (a transport failure)."""


class _TranslatingAPIClient(docker.APIClient):  # type: ignore[misc]
    def send(self, request: Any, **kwargs: Any) -> Any:
        try:
            return super().send(request, **kwargs)
        except requests.exceptions.RequestException as exc:
            if isinstance(exc, EngineTransportError):
                raise
            raise EngineTransportError(_short(exc)) from exc


class _Client(docker.DockerClient):  # type: ignore[misc]
    """A DockerClient whose transport failures are :class:`EngineTransportError`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.api = _TranslatingAPIClient(*args, **kwargs)


def client_timeout(env: Mapping[str, str]) -> int:
    """Seconds any one engine call may take: ``AGENTRT_ENGINE_TIMEOUT``, else 120."""
    with contextlib.suppress(ValueError):
        value = int(env.get(TIMEOUT_ENV, ""))
        if value > 0:
            return value
    return CLIENT_TIMEOUT_S


def _docker_config_dir(env: Mapping[str, str], home: Path) -> Path:
    return Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else home / ".docker"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def context_endpoint(env: Mapping[str, str], home: Path) -> Endpoint | None:
    """The docker endpoint of the current (non-default) docker context, if one is set."""
    config_dir = _docker_config_dir(env, home)
    name = env.get("DOCKER_CONTEXT") or _read_json(config_dir / "config.json").get("currentContext")
    if not isinstance(name, str) or not name or name == "default":
        return None
    meta_dir = config_dir / "contexts" / "meta"
    # The directory name is sha256(name); matching on "Name" avoids depending on that detail.
    for meta_file in sorted(meta_dir.glob("*/meta.json")):
        meta = _read_json(meta_file)
        if meta.get("Name") != name:
            continue
        host = meta.get("Endpoints", {}).get("docker", {}).get("Host")
        if isinstance(host, str) and host:
            return Endpoint(host, f"context {name}")
    return None


def colima_homes(env: Mapping[str, str], home: Path) -> list[Path]:
    """Directories Colima may keep its profiles in, most specific first."""
    homes: list[Path] = []
    if env.get("COLIMA_HOME"):
        homes.append(Path(env["COLIMA_HOME"]).expanduser())
    homes.append(home / ".colima")
    if env.get("XDG_CONFIG_HOME"):
        homes.append(Path(env["XDG_CONFIG_HOME"]) / "colima")
    homes.append(home / ".config" / "colima")
    return list(dict.fromkeys(homes))


def engine_candidates(
    env: Mapping[str, str], home: Path, default_socket: str = DEFAULT_SOCKET
) -> list[Endpoint]:
    """Every endpoint worth trying, in order; unix sockets that do not exist are left out.

    Pure apart from reading files under ``home`` (and ``DOCKER_CONFIG``/``COLIMA_HOME``).
    """
    if env.get("DOCKER_HOST"):
        return [Endpoint(env["DOCKER_HOST"], "DOCKER_HOST")]
    candidates: list[Endpoint] = []
    context = context_endpoint(env, home)
    if context is not None:
        candidates.append(context)
    for profile in COLIMA_PROFILES:
        for colima_home in colima_homes(env, home):
            sock = colima_home / profile / "docker.sock"
            candidates.append(Endpoint(f"unix://{sock}", f"colima {profile}"))
    candidates.append(Endpoint(f"unix://{default_socket}", "default socket"))
    seen: set[str] = set()
    found: list[Endpoint] = []
    for c in candidates:
        path = c.socket_path
        if c.url not in seen and (path is None or path.exists()):
            seen.add(c.url)
            found.append(c)
    return found


def how_to_start_engine(platform: str = sys.platform) -> str:
    """One line telling the user how to get an engine running on this platform."""
    if platform == "darwin":
        return "start one with `agentrt colima up` (needs Colima: `brew install colima docker`)"
    if platform.startswith("linux"):
        return (
            "start dockerd (`sudo systemctl start docker`) or run `sudo scripts/ensure-docker`, "
            "or set DOCKER_HOST"
        )
    return "start a Docker engine and set DOCKER_HOST to reach it"


def _client_for(
    endpoint: Endpoint, env: Mapping[str, str], timeout: int, version: str | None = None
) -> docker.DockerClient:
    kwargs: dict[str, Any] = {"base_url": endpoint.url}
    if endpoint.source == "DOCKER_HOST":
        kwargs = dict(docker.utils.kwargs_from_env(environment=dict(env)))
    if endpoint.url.startswith("ssh://"):
        kwargs["use_ssh_client"] = True
    return _Client(timeout=timeout, version=version, **kwargs)


def _try_endpoint(endpoint: Endpoint, env: Mapping[str, str]) -> docker.DockerClient:
    """A client for ``endpoint`` with the long timeout, after a ping with a short one."""
    # The short-timeout probe keeps a dead TCP engine from stalling discovery for minutes;
    # its negotiated API version lets the real client skip a second round trip.
    timeout = client_timeout(env)
    probe = _client_for(endpoint, env, min(PING_TIMEOUT_S, timeout))
    try:
        probe.ping()
        version = probe.api.api_version
    finally:
        probe.close()
    return _client_for(endpoint, env, timeout, version=str(version))


def connect(env: Mapping[str, str] | None = None, home: Path | None = None) -> docker.DockerClient:
    """A new client for the first reachable engine (see the module docstring for the order).

    Raises EngineError, naming what was tried and how to start an engine, if none answers.
    """
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    candidates = engine_candidates(env, home)
    failures: list[str] = []
    for endpoint in candidates:
        try:
            client = _try_endpoint(endpoint, env)
        except (
            docker.errors.DockerException,
            requests.exceptions.RequestException,
            OSError,
        ) as exc:
            failures.append(f"{endpoint.url} ({endpoint.source}): {_short(exc)}")
            continue
        _endpoints[client] = endpoint
        return client
    tried = "; ".join(failures) if failures else f"no socket found (looked for {DEFAULT_SOCKET})"
    raise EngineUnreachableError(f"no Docker engine reachable [{tried}]: {how_to_start_engine()}")


def endpoint_of(client: docker.DockerClient) -> Endpoint | None:
    """The endpoint :func:`connect` reached ``client`` through, if it made it."""
    return _endpoints.get(client)


def get_client() -> docker.DockerClient:
    """The process-wide shared client, connected on first use (thread-safe)."""
    global _client
    if _client is None:
        with _client_lock:
            if _client is None:
                _client = connect()
    return _client


def reset_client() -> None:
    """Close and forget the shared client, so the next :func:`get_client` reconnects."""
    global _client
    with _client_lock:
        if _client is not None:
            with contextlib.suppress(Exception):
                _client.close()
        _client = None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def engine_error(action: str, exc: BaseException) -> EngineError:
    """The one mapping of a docker or transport error to agentrt's engine errors. Pure.

    ``action`` completes the sentence "could not ...". Order matters: ``docker.errors.APIError``
    is also a ``requests`` exception (``HTTPError``), yet it is an answer from the engine, not a
    failure to reach it.

    * the engine has no such object (HTTP 404): :class:`EngineNotFoundError`;
    * any other answer with an error (HTTP 4xx/5xx): :class:`EngineRefusedError` with the
      status code and the engine's own message;
    * no answer (socket missing, connection refused or reset, time-out):
      :class:`EngineUnreachableError`, with how to start an engine;
    * anything else the docker SDK raises: :class:`EngineError`.
    """
    if isinstance(exc, docker.errors.NotFound):
        return EngineNotFoundError(f"could not {action}: not found ({_explanation(exc)})")
    if isinstance(exc, docker.errors.APIError):
        status = exc.status_code
        code = f"HTTP {status}" if status else "an error"
        return EngineRefusedError(
            f"could not {action}: the engine refused ({code}): {_explanation(exc)}", status)
    if isinstance(exc, requests.exceptions.RequestException | ConnectionError | TimeoutError):
        return EngineUnreachableError(
            f"could not {action}: engine unreachable ({_short(exc)}); {how_to_start_engine()}")
    return EngineError(f"could not {action}: {_short(exc)}")


def _explanation(exc: docker.errors.APIError) -> str:
    """The engine's own message of an API error (its JSON ``message``), on one line."""
    text = exc.explanation
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return _short(Exception(text)) if text else _short(exc)


@contextlib.contextmanager
def engine_errors(action: str) -> Iterator[None]:
    """Turn docker and transport errors raised inside the block into EngineError (see
    :func:`engine_error` for which one).

    ``action`` completes the sentence "could not ...", e.g. ``"list images"``.
    """
    try:
        yield
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise engine_error(action, exc) from exc


def engine_info(client: docker.DockerClient) -> dict[str, Any]:
    """The engine's ``docker info`` document."""
    with engine_errors("read the engine's info"):
        return cast(dict[str, Any], client.info())


def engine_resources(client: docker.DockerClient) -> tuple[int, int]:
    """What the engine can hand out: (CPUs, memory in bytes)."""
    info = engine_info(client)
    return int(info.get("NCPU", 0)), int(info.get("MemTotal", 0))


def cgroup_version(client: docker.DockerClient) -> int:
    """The engine host's cgroup version, 1 or 2 (engines too old to say use v1)."""
    return int(engine_info(client).get("CgroupVersion") or 1)


def registered_runtimes(client: docker.DockerClient) -> set[str]:
    """Names of the OCI runtimes the engine knows, e.g. ``{"runc", "runsc"}``."""
    runtimes = engine_info(client).get("Runtimes") or {}
    return set(runtimes)


def runtime_args(client: docker.DockerClient, name: str) -> list[str]:
    """The extra arguments the engine passes to runtime ``name`` (e.g. runsc's flags)."""
    runtime = (engine_info(client).get("Runtimes") or {}).get(name) or {}
    return [str(arg) for arg in runtime.get("runtimeArgs") or []]
