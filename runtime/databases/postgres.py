"""The ``shared`` database strategy: one PostgreSQL database and one role per session.

A session gets a database with a random name, ``agentrt_`` + 16 hex digits
(:func:`random_database_name`), owned by a role of the same name with a random password and none
of ``SUPERUSER``/``CREATEDB``/``CREATEROLE``/``REPLICATION``/``BYPASSRLS``. Any role can list
``pg_database`` and ``pg_roles``, so the names say nothing about the session, its task or its
run: an agent learns from the catalog only that opaque neighbours exist. The name is returned in
:class:`SharedDatabase`, which is what drops it. ``CONNECT`` is revoked from ``PUBLIC`` and
granted to that role only, so no session's role can open another session's database. The agent sees
``AGENT_DATABASE_URL=postgresql://<role>:<password>@<host>:5432/<db>``.

The server is either

* ``RunConfig.database_url``, an admin (superuser) URL: admin SQL runs in a throwaway
  ``agentrt/postgres`` container on the engine's host network (the host needs no psql); agents
  reach the server over their own network (``network = "bridge"`` and a host name containers
  resolve), so :attr:`SharedDatabase.network` is ``None``; or
* one server per run that agentrt starts: container ``agentrt-db-<run>`` of
  ``agentrt/postgres:latest`` (``images/postgres``), labelled ``agentrt.run=<run>``,
  ``agentrt.session=db-<run>``, ``agentrt.role=database``, alone on the *internal* network
  ``agentrt-db-<run>`` (no egress) that the run's agents join. Admin SQL is ``docker exec psql``
  as the ``postgres`` OS user over the unix socket (peer auth): no psql on the host and no route
  into the internal network needed. :func:`stop_shared_server` removes server and network at the
  end of the run; ``agentrt gc`` finds leftovers by the ``agentrt.role=database`` label.

Passwords never reach the server in clear (it gets a SCRAM-SHA-256 verifier computed here), and
names and values reach SQL only as psql variables (``:"name"``, ``:'value'``), which psql
quotes, on top of names already restricted to ``[a-z0-9_]``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import docker
import docker.errors
import requests.exceptions
from tenacity import RetryError, retry, retry_if_result, stop_after_delay, wait_fixed

from runtime.config import RunConfig
from runtime.engine.labels import LABEL_ROLE, LABEL_RUN, LABEL_SESSION
from runtime.errors import AgentRuntimeError, DatabaseError

IMAGE_NAME = "postgres"
IMAGE = "agentrt/postgres:latest"
PORT = 5432
ROLE_DATABASE = "database"
NAME_PREFIX = "agentrt_"
MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1: longer names are silently truncated
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)
READY_TIMEOUT_S = 60
SERVER_MEMORY = 1024 * 1024 * 1024
SERVER_PIDS = 512
AGENT_CONNECTION_LIMIT = 32

# Reads the script from $AGENTRT_SQL and hands every name and value to psql as a variable, so the
# values never become part of the SQL text or of any argv.
_PSQL = (
    'printf "%s\\n" "$AGENTRT_SQL" | psql -X -q -A -t -v ON_ERROR_STOP=1 '
    '-v role="$AGENTRT_ROLE" -v db="$AGENTRT_DB" -v verifier="$AGENTRT_VERIFIER" '
    '"$AGENTRT_TARGET"'
)

# INHERIT (the default) matters: the owner's CREATE on schema public comes through its implicit
# membership in pg_database_owner.
_CREATE_SQL = f"""
CREATE ROLE :"role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    CONNECTION LIMIT {AGENT_CONNECTION_LIMIT} PASSWORD :'verifier';
CREATE DATABASE :"db" OWNER :"role";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"role";
"""

# NOLOGIN first so nothing reconnects between the terminations and the drops; \\if keeps the
# script idempotent when the role is already gone.
_DROP_SQL = """
SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') AS has_role \\gset
\\if :has_role
ALTER ROLE :"role" NOLOGIN;
\\endif
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
    WHERE usename = :'role' OR datname = :'db';
DROP DATABASE IF EXISTS :"db" WITH (FORCE);
DROP ROLE IF EXISTS :"role";
"""

# On agentrt's own server nobody but the superuser needs the maintenance databases.
_SERVER_SETUP_SQL = """
REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE template1 FROM PUBLIC;
"""

_run_locks: dict[str, threading.Lock] = {}
_servers: dict[str, str] = {}  # run id -> server container id
_registry_lock = threading.Lock()


def random_database_name() -> str:
    """A fresh database and role name: ``agentrt_`` + 16 random hex digits (64 bits).

    Never derived from the session, task or run id: every role can read the names of every
    database and role on the server. Always matches ``[a-z0-9_]{1,63}``.
    """
    return NAME_PREFIX + secrets.token_hex(8)


def server_name(run_id: str) -> str:
    """Name of a run's server container and of its network: ``agentrt-db-<run>``."""
    return "agentrt-db-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", run_id)[:100]


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677).

    Handing the server this instead of the password keeps the clear text out of SQL, psql's
    argv, the server's logs and ``pg_stat_activity``. ``password`` must be ASCII (SASLprep is
    then the identity), which ``secrets.token_urlsafe`` guarantees.
    """
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return (f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}"
            f"${b64(stored_key)}:{b64(server_key)}")


def database_url(role: str, password: str, host: str, port: int, db: str) -> str:
    """``postgresql://role:password@host:port/db`` with user and password percent-encoded."""
    return f"postgresql://{quote(role, safe='')}:{quote(password, safe='')}@{host}:{port}/{db}"


@contextlib.contextmanager
def _docker_errors(action: str) -> Iterator[None]:
    """Docker, transport and engine errors inside the block become DatabaseError."""
    try:
        yield
    except DatabaseError:
        raise
    except (docker.errors.DockerException, requests.exceptions.RequestException,
            AgentRuntimeError) as exc:
        raise DatabaseError(f"could not {action}: {exc}") from exc


class _Admin:
    """Runs psql scripts as the server's superuser, in a container (never on the host)."""

    def __init__(self, client: docker.DockerClient, *, container_id: str | None = None,
                 admin_url: str | None = None) -> None:
        self.client = client
        self.container_id = container_id
        self.admin_url = admin_url

    def run(self, sql: str, *, role: str = "", db: str = "", verifier: str = "") -> str:
        """Run ``sql`` with psql variables ``role``, ``db`` and ``verifier``; return stdout."""
        env = {"AGENTRT_SQL": sql, "AGENTRT_ROLE": role, "AGENTRT_DB": db,
               "AGENTRT_VERIFIER": verifier,
               "AGENTRT_TARGET": self.admin_url or "dbname=postgres"}
        if self.container_id is not None:
            code, out, err = self._exec(env)
        else:
            code, out, err = self._one_shot(env)
        if code != 0:
            detail = err.strip() or out.strip()
            for value in (verifier, self.admin_url):
                detail = detail.replace(value, "[REDACTED]") if value else detail
            raise DatabaseError(f"psql failed (exit {code}): {detail}")
        return out

    def _exec(self, env: dict[str, str]) -> tuple[int, str, str]:
        cid = str(self.container_id)
        with _docker_errors("run psql in the database server"):
            exec_id = self.client.api.exec_create(cid, ["sh", "-c", _PSQL], user="postgres",
                                                  environment=env, stdout=True, stderr=True)
            out, err = self.client.api.exec_start(exec_id, demux=True)
            code = _exit_code(self.client, exec_id)
        return code, _text(out), _text(err)

    def _one_shot(self, env: dict[str, str]) -> tuple[int, str, str]:
        # The host network, because the admin URL is written from the host's point of view
        # (often localhost); psql's own container is hardened like an agent's.
        with _docker_errors("run psql against database_url"):
            try:
                out = self.client.containers.run(
                    IMAGE, ["sh", "-c", _PSQL], environment=env, network_mode="host",
                    user="postgres", read_only=True, cap_drop=["ALL"], remove=True,
                    security_opt=["no-new-privileges:true"], labels={LABEL_ROLE: "database-admin"})
            except docker.errors.ContainerError as exc:  # psql ran and failed: its own words
                return exc.exit_status, "", _text(exc.stderr)
        return 0, _text(out), ""


def _exit_code(client: docker.DockerClient, exec_id: str) -> int:
    """An exec's exit code; -1 if unknown. The engine may still report it running (and its code
    as None) for a moment after exec_start has returned, so ask again briefly."""
    for _ in range(50):
        info = client.api.exec_inspect(exec_id)
        if not info.get("Running") and info.get("ExitCode") is not None:
            return int(info["ExitCode"])
        time.sleep(0.02)
    return -1


def _text(data: bytes | None) -> str:
    return (data or b"").decode(errors="replace")


@dataclass
class SharedDatabase:
    """A session's database and role on the shared server.

    ``env`` holds ``AGENT_DATABASE_URL``; ``network`` is the Docker network the agent's
    container must join to reach the server (``None``: use the task's own network).
    """

    name: str
    env: dict[str, str]
    network: str | None
    _admin: _Admin = field(repr=False)
    _dropped: bool = field(default=False, repr=False)
    _owns_network: bool = field(default=False, repr=False)

    def drop(self) -> None:
        """Terminate the role's connections, drop the database, drop the role; idempotent.

        A server that is already gone (its run stopped) counts as dropped.
        """
        if self._dropped:
            return
        if self._admin.container_id is None or _is_running(
                self._admin.client, self._admin.container_id):
            self._admin.run(_DROP_SQL, role=self.name, db=self.name)
        if self._owns_network and self.network:
            _remove_network(self._admin.client, self.network)
        self._dropped = True


def check_database_url(client: docker.DockerClient, admin_url: str) -> None:
    """Connect to ``admin_url`` as a run would (``SELECT 1`` from psql's container); raise
    DatabaseError, with the URL redacted, when the server cannot be reached or refuses."""
    _Admin(client, admin_url=admin_url).run("SELECT 1;")


def create_shared_database(config: RunConfig, session_id: str, run_id: str,
                           client: docker.DockerClient | None = None) -> SharedDatabase:
    """Create the session's database and role (starting the run's server first if needed).

    Raises DatabaseError, with nothing of the session left on the server, when it cannot.
    """
    if client is None:
        from runtime.engine.discovery import get_client

        client = get_client()
    name = random_database_name()
    password = secrets.token_urlsafe(24)
    if config.database_url:
        admin = _Admin(client, admin_url=config.database_url)
        parts = urlsplit(config.database_url)
        host, port, network = parts.hostname or "localhost", parts.port or PORT, None
    else:
        container_id = ensure_shared_server(client, run_id)
        admin = _Admin(client, container_id=container_id)
        host, port = server_name(run_id), PORT
        network = _session_network(client, run_id, session_id, name, container_id)
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    database = SharedDatabase(name=name, network=network, _admin=admin, env={
        "AGENT_DATABASE_URL": database_url(name, password, host, port, name)},
        _owns_network=network is not None)
    try:
        admin.run(_CREATE_SQL, role=name, db=name, verifier=scram_verifier(password))
    except DatabaseError:
        # A half-made role (CREATE DATABASE failed after CREATE ROLE) must not outlive us.
        with contextlib.suppress(DatabaseError):
            database.drop()
        raise
    return database


def _session_network(client: docker.DockerClient, run_id: str, session_id: str, db_name: str,
                     server_id: str) -> str:
    """A private internal network holding only this session's agent and the server.

    One network per session (not one per run) so agents of a run cannot reach each other;
    the server joins each under the alias the session's URL names. Labelled with the session.
    """
    name = f"{server_name(run_id)}-{db_name}"[:120]
    labels = {**_labels(run_id), LABEL_SESSION: session_id}
    with _docker_errors(f"create network {name}"):
        network = client.networks.create(name, driver="bridge", internal=True, labels=labels,
                                         check_duplicate=True)
        try:
            network.connect(server_id, aliases=[server_name(run_id)])
        except docker.errors.DockerException:
            network.remove()
            raise
    return name


def _remove_network(client: docker.DockerClient, name: str) -> None:
    with _docker_errors(f"remove network {name}"):
        try:
            network = client.networks.get(name)
        except docker.errors.NotFound:
            return
        # Stopped agent containers do not hold a network; the server and stragglers would.
        for attached in network.attrs.get("Containers") or {}:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                network.disconnect(attached, force=True)
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()


def _run_lock(run_id: str) -> threading.Lock:
    with _registry_lock:
        return _run_locks.setdefault(run_id, threading.Lock())


def _is_running(client: docker.DockerClient, container_id: str) -> bool:
    with _docker_errors("inspect the database server"):
        try:
            state = client.api.inspect_container(container_id).get("State", {})
        except docker.errors.NotFound:
            return False
    return bool(state.get("Running"))


def _labels(run_id: str) -> dict[str, str]:
    return {LABEL_RUN: run_id, LABEL_SESSION: f"db-{run_id}", LABEL_ROLE: ROLE_DATABASE}


def ensure_shared_server(client: docker.DockerClient, run_id: str) -> str:
    """The id of the run's running, ready server container, starting it on first use.

    Serialised per run: concurrent sessions of one run wait for the one server. A server left
    by an earlier call (or another process) for the same run is reused if it is running.
    """
    name = server_name(run_id)
    with _run_lock(run_id):
        known = _servers.get(run_id)
        if known is not None and _is_running(client, known):
            return known
        with _docker_errors(f"look up {name}"):
            found = client.containers.list(all=True, filters={"name": f"^/{name}$"})
        if found and found[0].status != "running":
            raise DatabaseError(f"database server {name} exists but is {found[0].status}: "
                                f"run `agentrt gc` or `docker rm -f {name}`")
        _servers[run_id] = str(found[0].id) if found else _start_server(client, run_id)
        return _servers[run_id]


def _start_server(client: docker.DockerClient, run_id: str) -> str:
    from runtime.engine.images import build_image

    name = server_name(run_id)
    with _docker_errors(f"build image {IMAGE}"):
        build_image(client, IMAGE_NAME)  # a no-op when the recipe has not changed
    try:
        with _docker_errors(f"create network {name}"):
            # internal: neither the server nor the agents on this network have a route out.
            client.networks.create(name, driver="bridge", internal=True,
                                   labels=_labels(run_id), check_duplicate=True)
        with _docker_errors(f"start {name}"):
            container = client.containers.run(
                IMAGE, name=name, hostname=name, network=name, labels=_labels(run_id),
                # Nobody needs the superuser's password (admin goes through the socket);
                # a random one means nobody on the network can guess it either.
                environment={"POSTGRES_PASSWORD": scram_verifier(secrets.token_urlsafe(24))},
                user="postgres", cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
                mem_limit=SERVER_MEMORY, memswap_limit=SERVER_MEMORY, pids_limit=SERVER_PIDS,
                log_config=docker.types.LogConfig(type="json-file",
                                                  config={"max-size": "10m", "max-file": "2"}),
                detach=True)
        container_id = str(container.id)
        _wait_ready(client, container_id, name)
        _Admin(client, container_id=container_id).run(_SERVER_SETUP_SQL)
    except BaseException:
        # Only reached when this call made (or failed to make) the server: take it all back.
        with contextlib.suppress(DatabaseError):
            _remove_server(client, run_id)
        raise
    return container_id


def _wait_ready(client: docker.DockerClient, container_id: str, name: str) -> None:
    def probe() -> int:
        if not _is_running(client, container_id):
            raise DatabaseError(f"database server {name} exited: {_tail(client, container_id)}")
        with _docker_errors(f"probe {name}"):
            exec_id = client.api.exec_create(container_id, ["pg_isready", "-q"],
                                              user="postgres", stdout=False, stderr=False)
            client.api.exec_start(exec_id)
            return _exit_code(client, exec_id)

    waiter = retry(retry=retry_if_result(lambda code: code != 0), wait=wait_fixed(0.25),
                   stop=stop_after_delay(READY_TIMEOUT_S))(probe)
    try:
        waiter()
    except RetryError as exc:
        raise DatabaseError(f"database server {name} not ready after {READY_TIMEOUT_S}s: "
                            f"{_tail(client, container_id)}") from exc


def _tail(client: docker.DockerClient, container_id: str) -> str:
    with contextlib.suppress(docker.errors.DockerException):
        return _text(client.api.logs(container_id, tail=20)).strip()
    return "(no logs)"


def _remove_server(client: docker.DockerClient, run_id: str) -> None:
    name = server_name(run_id)
    with _docker_errors(f"remove {name}"):
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(name, force=True, v=True)
        networks = client.networks.list(
            filters={"label": [f"{LABEL_RUN}={run_id}", f"{LABEL_ROLE}={ROLE_DATABASE}"]})
    for network in networks:
        _remove_network(client, str(network.name))


def stop_shared_server(run_id: str, client: docker.DockerClient | None = None) -> None:
    """Remove the run's server container (and every database on it) and its network.

    Idempotent: quiet when there is no server. Call it once the run's sessions are closed:
    the coordinator at the end of a run (agentrt gc for runs that died), tests in teardown.
    Raises DatabaseError if the engine refuses.
    """
    if client is None:
        from runtime.engine.discovery import get_client

        client = get_client()
    with _run_lock(run_id):
        _servers.pop(run_id, None)
        _remove_server(client, run_id)
    with _registry_lock:
        _run_locks.pop(run_id, None)
