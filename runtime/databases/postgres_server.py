"""The PostgreSQL server agentrt starts for one run: its container ``agentrt-db-<run>`` and
internal network, started hardened and waited for until ready, and removed with both."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Mapping

import docker
import docker.errors
from tenacity import RetryError, retry, retry_if_result, stop_after_delay, wait_fixed

from runtime.databases.postgres_credentials import scram_verifier
from runtime.databases.psql_admin import (
    IMAGE,
    IMAGE_NAME,
    PsqlAdmin,
    decode_output,
    docker_errors,
    exec_exit_code,
)
from runtime.engine.labels import LABEL_ROLE, LABEL_RUN, LABEL_SESSION
from runtime.engine.networks import create_internal_network
from runtime.errors import DatabaseError

ROLE_DATABASE = "database"
READY_TIMEOUT_S = 60
SERVER_MEMORY = 1024 * 1024 * 1024
SERVER_PIDS = 512
#: The server's share of the host: one core for every session of the run together.
SERVER_NANO_CPUS = 1_000_000_000
#: Temporary files one backend may hold (a sort or hash that spills): superuser-only setting,
#: so no agent can raise it.
TEMP_FILE_LIMIT = "256MB"
#: Defaults for every role (an agent may SET its own statement_timeout: a default, not a cap).
STATEMENT_TIMEOUT = "300s"
IDLE_IN_TRANSACTION_TIMEOUT = "600s"

# On agentrt's own server nobody but the superuser needs the maintenance databases; the
# limits above are set for the whole server (ALTER SYSTEM, then a reload).
_SERVER_SETUP_SQL = f"""
REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE template1 FROM PUBLIC;
ALTER SYSTEM SET temp_file_limit = '{TEMP_FILE_LIMIT}';
ALTER SYSTEM SET statement_timeout = '{STATEMENT_TIMEOUT}';
ALTER SYSTEM SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}';
SELECT pg_reload_conf();
"""


def server_name(run_id: str) -> str:
    """Name of a run's server container and of its network: ``agentrt-db-<run>``."""
    return "agentrt-db-" + re.sub(r"[^a-zA-Z0-9_.-]", "-", run_id)[:100]


def remove_network(client: docker.DockerClient, name: str) -> None:
    with docker_errors(f"remove network {name}"):
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


def is_running(client: docker.DockerClient, container_id: str) -> bool:
    with docker_errors("inspect the database server"):
        try:
            state = client.api.inspect_container(container_id).get("State", {})
        except docker.errors.NotFound:
            return False
    return bool(state.get("Running"))


def server_labels(run_id: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The labels of a run's server and its networks: ``extra`` (the repository and the
    owning process, so ``agentrt gc --repo`` finds them), then agentrt's own."""
    return {**(extra or {}), LABEL_RUN: run_id, LABEL_SESSION: f"db-{run_id}",
            LABEL_ROLE: ROLE_DATABASE}


def start_server(client: docker.DockerClient, run_id: str,
                 labels: Mapping[str, str] | None = None) -> str:
    """Start the run's server (and its network), labelled with ``labels`` too; its id."""
    from runtime.engine.image_build import build_image

    name = server_name(run_id)
    with docker_errors(f"build image {IMAGE}"):
        build_image(client, IMAGE_NAME)  # a no-op when the recipe has not changed
    try:
        with docker_errors(f"create network {name}"):
            # internal: neither the server nor the agents on this network have a route out.
            create_internal_network(client, name, server_labels(run_id, labels))
        with docker_errors(f"start {name}"):
            container = client.containers.run(
                IMAGE, name=name, hostname=name, network=name,
                labels=server_labels(run_id, labels),
                # Nobody needs the superuser's password (admin goes through the socket);
                # a random one means nobody on the network can guess it either.
                environment={"POSTGRES_PASSWORD": scram_verifier(secrets.token_urlsafe(24))},
                user="postgres", cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
                mem_limit=SERVER_MEMORY, memswap_limit=SERVER_MEMORY, pids_limit=SERVER_PIDS,
                nano_cpus=SERVER_NANO_CPUS,
                log_config=docker.types.LogConfig(type="json-file",
                                                  config={"max-size": "10m", "max-file": "2"}),
                detach=True)
        container_id = str(container.id)
        _wait_ready(client, container_id, name)
        PsqlAdmin(client, container_id=container_id).run(_SERVER_SETUP_SQL)
    except BaseException:
        # Only reached when this call made (or failed to make) the server: take it all back.
        with contextlib.suppress(DatabaseError):
            remove_server(client, run_id)
        raise
    return container_id


def _wait_ready(client: docker.DockerClient, container_id: str, name: str) -> None:
    def probe() -> int:
        if not is_running(client, container_id):
            raise DatabaseError(f"database server {name} exited: {_tail(client, container_id)}")
        with docker_errors(f"probe {name}"):
            exec_id = client.api.exec_create(container_id, ["pg_isready", "-q"],
                                              user="postgres", stdout=False, stderr=False)
            client.api.exec_start(exec_id)
            return exec_exit_code(client, exec_id)

    waiter = retry(retry=retry_if_result(lambda code: code != 0), wait=wait_fixed(0.25),
                   stop=stop_after_delay(READY_TIMEOUT_S))(probe)
    try:
        waiter()
    except RetryError as exc:
        raise DatabaseError(f"database server {name} not ready after {READY_TIMEOUT_S}s: "
                            f"{_tail(client, container_id)}") from exc


def _tail(client: docker.DockerClient, container_id: str) -> str:
    with contextlib.suppress(docker.errors.DockerException):
        return decode_output(client.api.logs(container_id, tail=20)).strip()
    return "(no logs)"


def remove_server(client: docker.DockerClient, run_id: str) -> None:
    name = server_name(run_id)
    with docker_errors(f"remove {name}"):
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(name, force=True, v=True)
        networks = client.networks.list(
            filters={"label": [f"{LABEL_RUN}={run_id}", f"{LABEL_ROLE}={ROLE_DATABASE}"]})
    for network in networks:
        remove_network(client, str(network.name))
