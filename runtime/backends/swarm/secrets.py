"""A session's secrets on Docker Swarm: a Docker secret per session, never a value in a spec.

On one engine the entry point sources a file agentrt writes into a host directory bound at
``/run/agentrt`` (:data:`runtime.engine.container.ENTRYPOINT`). A Swarm node is not agentrt's
host, so here the same file (one ``export NAME='value'`` line per secret, as
:func:`runtime.backends.base.secrets_text` writes it) becomes a **Docker secret** made on
the manager for one session (:func:`create_session_secret`), which Swarm delivers only to the node
running that session's task. The service spec carries a *reference* to it
(:func:`secret_reference`: the secret's id and name, a file name, the agent's uid and gid, mode
0400), never its data; :data:`SECRET_READER`, put by :func:`with_secret` between the
session's network guard and its entry point, sources it into the agent's environment.

What Docker keeps where (measured on Docker 20.10, see
``tests/integration/test_swarm_parts.py``): ``docker secret inspect`` shows the name and
labels, never the data; ``docker service inspect`` shows the reference; ``docker inspect`` of the
task container on its node shows neither the value nor an environment variable holding it
(the value reaches the agent's environment inside the container, after the engine made it).
On the node, the engine writes the file into a tmpfs of its own (nothing on disk) and
bind-mounts it read-only at ``/run/secrets/<name>``.

Unlike one engine's file, the entry point cannot delete it: the engine mounts it read-only.
It stays readable, for the session's lifetime, by the agent's uid only (mode 0400), which
already holds every value in its environment; it goes with the task's container.

Secrets carry ``agentrt.role=secret`` and the session's and run's labels (and what the caller
adds, e.g. the repository): :func:`remove_session_secret` deletes one once its service is gone
(the manager refuses to delete a secret a service still references), and ``gc`` lists
agentrt's secrets by label (:func:`labelled_secrets`) and removes those whose run is over
(:func:`secrets_left_over` decides, pure).
"""

from __future__ import annotations

import secrets as random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import docker
import docker.errors
from docker.types import SecretReference

from runtime.engine.container import ENTRYPOINT
from runtime.engine.discovery import engine_errors
from runtime.engine.labels import LABEL_ROLE, LABEL_RUN, LABEL_SESSION
from runtime.errors import EngineError, SessionError, WaitTimeoutError
from runtime.waiting import wait_until

ROLE_SECRET = "secret"
#: The file name of a session's secret under ``/run/secrets`` in its task's container.
SECRET_FILE = "agentrt-env"
SECRET_PATH = f"/run/secrets/{SECRET_FILE}"
#: Docker refuses a secret name longer than 64 characters.
MAX_NAME = 64
#: Docker refuses secret data over 500 KiB.
MAX_DATA = 500 * 1024
#: How long a removal waits for the services referencing the secret to be gone.
REMOVE_TIMEOUT_S = 30.0
#: Sources the secret file when the service has one (put after the guard, before the entry point).
SECRET_READER = f'f={SECRET_PATH}; if [ -f "$f" ]; then . "$f"; fi; '


@dataclass(frozen=True)
class SessionSecret:
    """A Docker secret made for one session: its id and name (what a spec refers to)."""

    id: str
    name: str
    session_id: str


def secret_name(session_id: str, token: str | None = None) -> str:
    """Pure (given ``token``): ``agentrt-<session>-<random>``, at most :data:`MAX_NAME`
    characters, unique per call (a retried session never meets its earlier secret)."""
    tail = token if token is not None else random.token_hex(4)
    head = f"agentrt-{session_id}"[:MAX_NAME - len(tail) - 1].rstrip("-._")
    return f"{head}-{tail}"


def secret_labels(session_id: str, run_id: str,
                  labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """Pure: the labels of a session's secret (``labels`` first, e.g. the repository; then
    role, session and run, which the caller cannot override)."""
    return {**(labels or {}), LABEL_ROLE: ROLE_SECRET, LABEL_SESSION: session_id,
            LABEL_RUN: run_id}


def create_session_secret(client: docker.DockerClient, session_id: str, run_id: str,
                          content: bytes, labels: Mapping[str, str] | None = None
                          ) -> SessionSecret:
    """Make the session's Docker secret on the manager ``client`` speaks to, holding
    ``content`` (the secrets file). SessionError if it is empty or too big for Docker."""
    if not content:
        raise SessionError(f"session {session_id}: an empty secrets file is not made a secret")
    if len(content) > MAX_DATA:
        raise SessionError(f"session {session_id}: its secrets take {len(content)} bytes; a "
                           f"Docker secret holds at most {MAX_DATA}")
    name = secret_name(session_id)
    with engine_errors(f"create the Docker secret of {session_id}"):
        made = client.secrets.create(name=name, data=content,
                                     labels=secret_labels(session_id, run_id, labels))
    return SessionSecret(str(made.id), name, session_id)


def secret_reference(secret: SessionSecret, uid: int, gid: int) -> SecretReference:
    """Pure: the spec's reference to ``secret``: the file :data:`SECRET_PATH` in the task's
    container, owned by the agent (``uid``/``gid``), readable by it alone (0400)."""
    return SecretReference(secret.id, secret.name, filename=SECRET_FILE, uid=str(uid),
                           gid=str(gid), mode=0o400)


def with_secret(spec: Mapping[str, Any], reference: SecretReference) -> dict[str, Any]:
    """Pure: ``client.services.create`` keyword arguments of a session
    (:func:`runtime.backends.swarm.service.session_service_spec`) given ``reference`` and
    :data:`SECRET_READER` just before the entry point (after the network guard, which
    refuses first). SessionError for a spec whose command is not
    ``["sh", "-c", ... ENTRYPOINT, ...]``."""
    command = list(spec.get("command") or ())
    if len(command) < 3 or command[:2] != ["sh", "-c"] or ENTRYPOINT not in command[2]:
        raise SessionError(f"cannot give a secret to the service {spec.get('name', '')}: its "
                           "command is not agentrt's entry point")
    command[2] = command[2].replace(ENTRYPOINT, SECRET_READER + ENTRYPOINT, 1)
    return {**spec, "command": command,
            "secrets": [*(spec.get("secrets") or ()), reference]}


def _references(client: docker.DockerClient, secret_id: str) -> list[str]:
    """Names of the services whose spec refers to ``secret_id``."""
    with engine_errors("list the services"):
        services = client.services.list()
    found = []
    for service in services:
        task = (service.attrs.get("Spec") or {}).get("TaskTemplate") or {}
        refs = (task.get("ContainerSpec") or {}).get("Secrets") or ()
        if any(ref.get("SecretID") == secret_id for ref in refs):
            found.append(str(service.name))
    return found


def remove_session_secret(client: docker.DockerClient, secret_id: str,
                          timeout: float = REMOVE_TIMEOUT_S) -> None:
    """Delete the secret ``secret_id`` once no service refers to it any more (call after the
    session's service is removed); quiet if it is already gone. EngineError naming the
    services still using it after ``timeout`` seconds."""

    def removed() -> bool:
        with engine_errors(f"remove the Docker secret {secret_id}"):
            try:
                client.api.remove_secret(secret_id)
            except docker.errors.NotFound:
                return True
            except docker.errors.APIError as exc:
                if exc.status_code == 400 and "in use" in str(exc):
                    return False  # its service is still being removed
                raise
        return True

    try:
        wait_until(removed, timeout=timeout, what=f"the Docker secret {secret_id} to be free")
    except WaitTimeoutError:
        users = ", ".join(_references(client, secret_id)) or "none listed"
        raise EngineError(f"could not remove the Docker secret {secret_id}: still in use by "
                          f"services {users}") from None


@dataclass(frozen=True)
class LabelledSecret:
    """One of agentrt's Docker secrets as ``gc`` sees it: id, name, labels (never data)."""

    id: str
    name: str
    labels: Mapping[str, str]


def labelled_secrets(client: docker.DockerClient) -> list[LabelledSecret]:
    """Every Docker secret labelled ``agentrt.role=secret`` on the manager."""
    with engine_errors("list agentrt's Docker secrets"):
        found = client.secrets.list(filters={"label": f"{LABEL_ROLE}={ROLE_SECRET}"})
    return [LabelledSecret(str(s.id), str(s.name), dict((s.attrs.get("Spec") or {})
                                                       .get("Labels") or {})) for s in found]


def secrets_left_over(found: Iterable[LabelledSecret],
                      is_over: Callable[[Mapping[str, str]], bool]) -> list[LabelledSecret]:
    """Pure: the secrets ``gc`` removes: agentrt's (role ``secret``, with a run label) whose
    run is over by ``is_over(labels)`` (e.g. :func:`runtime.state.run_leftovers.left_over`)."""
    return [s for s in found if s.labels.get(LABEL_ROLE) == ROLE_SECRET
            and s.labels.get(LABEL_RUN) and is_over(s.labels)]


def remove_left_over_secrets(client: docker.DockerClient,
                             is_over: Callable[[Mapping[str, str]], bool],
                             timeout: float = 5.0) -> tuple[list[str], list[str]]:
    """``gc``: delete agentrt's secrets whose run is over (:func:`secrets_left_over`); returns
    (names removed, one line per secret that could not be, e.g. still used by a service)."""
    removed: list[str] = []
    failed: list[str] = []
    for secret in secrets_left_over(labelled_secrets(client), is_over):
        try:
            remove_session_secret(client, secret.id, timeout=timeout)
        except EngineError as exc:
            failed.append(f"{secret.name}: {exc}")
            continue
        removed.append(secret.name)
    return removed, failed
