"""The ``shared`` database strategy: one PostgreSQL database and one role per session.

A session gets a database with a random name, ``agentrt_`` + 16 hex digits
(:func:`~runtime.databases.postgres_credentials.random_database_name`), owned by a role of
the same name with a random password and none of
``SUPERUSER``/``CREATEDB``/``CREATEROLE``/``REPLICATION``/``BYPASSRLS``. Any role can list
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
  ``agentrt/postgres:latest`` (``images/postgres``) with a disk volume of its own sized from
  the sessions' budgets (:func:`~runtime.databases.postgres_server.server_disk_mb`) and each
  role's connections capped (:func:`connection_limit`), labelled ``agentrt.run=<run>``,
  ``agentrt.session=db-<run>``, ``agentrt.role=database``, alone on the *internal* network
  ``agentrt-db-<run>`` (no egress) that the run's agents join. Admin SQL is ``docker exec psql``
  as the ``postgres`` OS user over the unix socket (peer auth): no psql on the host and no route
  into the internal network needed. :func:`stop_shared_server` removes server and network at the
  end of the run; ``agentrt gc`` finds leftovers by the ``agentrt.role=database`` label.

Passwords never reach the server in clear (it gets a SCRAM-SHA-256 verifier computed here), and
names and values reach SQL only as psql variables (``:"name"``, ``:'value'``), which psql
quotes, on top of names already restricted to ``[a-z0-9_]``.

This module is the strategy's face: a session's database and role, and the run's server
registry. Names and the verifier are :mod:`~runtime.databases.postgres_credentials`, the admin
psql :mod:`~runtime.databases.psql_admin`, the server's container
:mod:`~runtime.databases.postgres_server`.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import docker
import docker.errors

from runtime.config import RunConfig
from runtime.databases.postgres_credentials import (
    database_url,
    random_database_name,
    scram_verifier,
)
from runtime.databases.postgres_server import (
    SERVER_BASE_MB,
    is_running,
    remove_network,
    remove_server,
    server_disk_mb,
    server_labels,
    server_name,
    start_server,
)
from runtime.databases.psql_admin import IMAGE, PsqlAdmin, docker_errors
from runtime.engine.labels import LABEL_SESSION
from runtime.engine.networks import create_internal_network
from runtime.errors import DatabaseError

__all__ = ["IMAGE", "PORT", "SharedDatabase", "check_database_url", "create_shared_database",
           "ensure_shared_server", "stop_shared_server"]

PORT = 5432
#: The most connections one session's role may hold at once on agentrt's server.
AGENT_CONNECTION_LIMIT = 32
#: The server's max_connections (images/postgres/setup.sh), less the superuser's reserve.
SERVER_CONNECTIONS = 200 - 3


def connection_limit(config: RunConfig) -> int:
    """A session role's ``CONNECTION LIMIT`` on agentrt's server: the server's connections
    shared by the sessions that may hold a database at once (running and prepared ahead), at
    most :data:`AGENT_CONNECTION_LIMIT`, at least 2; so no session can take the connections
    of the others. A ``database_url`` server gets :data:`AGENT_CONNECTION_LIMIT`. Pure."""
    if config.database_url:
        return AGENT_CONNECTION_LIMIT
    sessions = config.max_concurrent_agents + config.warm_pool
    return max(2, min(AGENT_CONNECTION_LIMIT, SERVER_CONNECTIONS // sessions))


# INHERIT (the default) matters: the owner's CREATE on schema public comes through its implicit
# membership in pg_database_owner. @LIMIT@ is connection_limit(), an int.
_CREATE_SQL = """
CREATE ROLE :"role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    CONNECTION LIMIT @LIMIT@ PASSWORD :'verifier';
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

_run_locks: dict[str, threading.Lock] = {}
_servers: dict[str, str] = {}  # run id -> server container id
_registry_lock = threading.Lock()


@dataclass
class SharedDatabase:
    """A session's database and role on the shared server.

    ``env`` holds ``AGENT_DATABASE_URL``; ``network`` is the Docker network the agent's
    container must join to reach the server (``None``: use the task's own network).
    """

    name: str
    env: dict[str, str]
    network: str | None
    _admin: PsqlAdmin = field(repr=False)
    _dropped: bool = field(default=False, repr=False)
    _owns_network: bool = field(default=False, repr=False)

    def drop(self) -> None:
        """Terminate the role's connections, drop the database, drop the role; idempotent.

        A server that is already gone (its run stopped) counts as dropped.
        """
        if self._dropped:
            return
        if self._admin.container_id is None or is_running(
                self._admin.client, self._admin.container_id):
            self._admin.run(_DROP_SQL, role=self.name, db=self.name)
        if self._owns_network and self.network:
            remove_network(self._admin.client, self.network)
        self._dropped = True


def check_database_url(client: docker.DockerClient, admin_url: str) -> None:
    """Connect to ``admin_url`` as a run would (``SELECT 1`` from psql's container); raise
    DatabaseError, with the URL redacted, when the server cannot be reached or refuses."""
    PsqlAdmin(client, admin_url=admin_url).run("SELECT 1;")


def create_shared_database(config: RunConfig, session_id: str, run_id: str,
                           client: docker.DockerClient | None = None,
                           labels: Mapping[str, str] | None = None) -> SharedDatabase:
    """Create the session's database and role (starting the run's server first if needed).

    ``labels`` (the repository, the owning process) go on the server and the networks made.

    Raises DatabaseError, with nothing of the session left on the server, when it cannot.
    """
    if client is None:
        from runtime.engine.discovery import get_client

        client = get_client()
    name = random_database_name()
    password = secrets.token_urlsafe(24)
    if config.database_url:
        admin = PsqlAdmin(client, admin_url=config.database_url)
        parts = urlsplit(config.database_url)
        host, port, network = parts.hostname or "localhost", parts.port or PORT, None
    else:
        container_id = ensure_shared_server(client, run_id, labels, server_disk_mb(config))
        admin = PsqlAdmin(client, container_id=container_id)
        host, port = server_name(run_id), PORT
        network = _session_network(client, run_id, session_id, name, container_id, labels)
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    database = SharedDatabase(name=name, network=network, _admin=admin, env={
        "AGENT_DATABASE_URL": database_url(name, password, host, port, name)},
        _owns_network=network is not None)
    try:
        admin.run(_CREATE_SQL.replace("@LIMIT@", str(int(connection_limit(config)))),
                  role=name, db=name, verifier=scram_verifier(password))
    except DatabaseError:
        # A half-made role (CREATE DATABASE failed after CREATE ROLE) must not outlive us.
        with contextlib.suppress(DatabaseError):
            database.drop()
        raise
    return database


def _session_network(client: docker.DockerClient, run_id: str, session_id: str, db_name: str,
                     server_id: str, extra: Mapping[str, str] | None = None) -> str:
    """A private internal network holding only this session's agent and the server.

    One network per session (not one per run) so agents of a run cannot reach each other;
    the server joins each under the alias the session's URL names. Labelled with the session.
    """
    name = f"{server_name(run_id)}-{db_name}"[:120]
    labels = {**server_labels(run_id, extra), LABEL_SESSION: session_id}
    with docker_errors(f"create network {name}"):
        network = create_internal_network(client, name, labels)
        try:
            network.connect(server_id, aliases=[server_name(run_id)])
        except docker.errors.DockerException:
            network.remove()
            raise
    return name


def _run_lock(run_id: str) -> threading.Lock:
    with _registry_lock:
        return _run_locks.setdefault(run_id, threading.Lock())


def ensure_shared_server(client: docker.DockerClient, run_id: str,
                         labels: Mapping[str, str] | None = None,
                         disk_mb: int = SERVER_BASE_MB) -> str:
    """The id of the run's running, ready server container, starting it on first use (with
    a volume of ``disk_mb`` MiB).

    Serialised per run: concurrent sessions of one run wait for the one server. A server left
    by an earlier call (or another process) for the same run is reused if it is running.
    """
    name = server_name(run_id)
    with _run_lock(run_id):
        known = _servers.get(run_id)
        if known is not None and is_running(client, known):
            return known
        with docker_errors(f"look up {name}"):
            found = client.containers.list(all=True, filters={"name": f"^/{name}$"})
        if found and found[0].status != "running":
            raise DatabaseError(f"database server {name} exists but is {found[0].status}: "
                                f"run `agentrt gc` or `docker rm -f {name}`")
        _servers[run_id] = (str(found[0].id) if found
                            else start_server(client, run_id, labels, disk_mb))
        return _servers[run_id]


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
        remove_server(client, run_id)
    with _registry_lock:
        _run_locks.pop(run_id, None)
