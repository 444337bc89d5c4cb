"""The PostgreSQL server agentrt starts for one run: its container ``agentrt-db-<run>``, its
internal network and its disk, started hardened and waited for until ready, and removed with
them.

**Its disk.** The server writes nothing into its container: the root is read-only, and its
data directory (tables, indexes, temporary files of sorts and hashes) lives on a loop volume
of its own on the engine's host (:func:`runtime.engine.engine_volumes.create_engine_volume`,
named ``agentrt-vol-db-<run>``) of :func:`server_disk_mb` MiB: the run's default ``disk_mb``
for every session that may hold a database at once (``max_concurrent_agents``), plus
:data:`SERVER_BASE_MB` for the cluster itself. The cluster made at build time is copied onto
it at start. Its write-ahead log is a tmpfs of :data:`WAL_MB` (counted in the server's
memory), so a session that fills the volume gets "No space left on device" for its own
statement while the server, which stops when it cannot write its WAL, goes on serving the
others. On an engine that cannot loop-mount (rootless) the volume is a plain named volume:
its size is not enforced there.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Mapping

import docker
import docker.errors
from tenacity import RetryError, retry, retry_if_result, stop_after_delay, wait_fixed

from runtime.config import RunConfig
from runtime.databases.postgres_credentials import scram_verifier
from runtime.databases.psql_admin import (
    IMAGE,
    IMAGE_NAME,
    PsqlAdmin,
    decode_output,
    docker_errors,
    exec_exit_code,
)
from runtime.engine.engine_volumes import (
    EngineVolume,
    create_engine_volume,
    list_engine_volumes,
    remove_engine_volume,
)
from runtime.engine.labels import LABEL_ROLE, LABEL_RUN, LABEL_SESSION
from runtime.engine.networks import create_internal_network
from runtime.engine.services import ImageFacts
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
#: The volume's share for the cluster itself (catalogs, the template databases), MiB.
SERVER_BASE_MB = 128
#: The write-ahead log's tmpfs, MiB, and the WAL size at which a checkpoint starts (it keeps
#: the log well inside its tmpfs).
WAL_MB = 320
MAX_WAL_SIZE = "96MB"
#: Where the server's volume is mounted, and its data directory there.
DATA_MOUNT = "/var/lib/agentrt-db"
PGDATA = f"{DATA_MOUNT}/pg"
WAL_DIR = "/run/agentrt-wal"
#: The cluster made at build time (images/postgres/setup.sh).
TEMPLATE = "/var/lib/postgresql/data"
# As the postgres user: the template cluster onto the volume (first start only), its WAL into
# the tmpfs (pg_wal a link there), then the image's entry point.
START_SCRIPT = f"""
set -eu
if [ ! -d {PGDATA} ]; then
  cp -a {TEMPLATE} {PGDATA}.new
  cp -a {PGDATA}.new/pg_wal/. {WAL_DIR}/
  rm -rf {PGDATA}.new/pg_wal
  ln -s {WAL_DIR} {PGDATA}.new/pg_wal
  mv {PGDATA}.new {PGDATA}
fi
chmod 0700 {PGDATA}
exec agentrt-postgres
"""

# On agentrt's own server nobody but the superuser needs the maintenance databases; the
# limits above are set for the whole server (ALTER SYSTEM, then a reload).
_SERVER_SETUP_SQL = f"""
REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC;
REVOKE CONNECT, TEMPORARY ON DATABASE template1 FROM PUBLIC;
ALTER SYSTEM SET temp_file_limit = '{TEMP_FILE_LIMIT}';
ALTER SYSTEM SET statement_timeout = '{STATEMENT_TIMEOUT}';
ALTER SYSTEM SET idle_in_transaction_session_timeout = '{IDLE_IN_TRANSACTION_TIMEOUT}';
ALTER SYSTEM SET max_wal_size = '{MAX_WAL_SIZE}';
ALTER SYSTEM SET min_wal_size = '32MB';
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


def server_disk_mb(config: RunConfig) -> int:
    """Size of the server's volume, MiB: :data:`SERVER_BASE_MB` plus the run's default
    ``disk_mb`` for each session that may hold a database at once. Pure."""
    return SERVER_BASE_MB + config.max_concurrent_agents * config.resource_limits.disk_mb


def volume_id(run_id: str) -> str:
    """The id the server's volume is made under (its named volume: ``agentrt-vol-<id>``)."""
    return f"db-{run_id}"


def server_spec(run_id: str, volume: EngineVolume, facts: ImageFacts, password: str,
                labels: Mapping[str, str] | None = None) -> dict[str, object]:
    """``client.containers.run`` arguments of the run's server. Pure.

    Its own user, no capability, read-only root; it writes only its volume (the data
    directory), the WAL's tmpfs, its socket directory and a small /tmp."""
    name = server_name(run_id)
    owner = f"uid={facts.uid},gid={facts.gid}"
    return {
        "image": IMAGE, "command": ["sh", "-c", START_SCRIPT], "name": name, "hostname": name,
        "network": name, "labels": server_labels(run_id, labels),
        "environment": {"POSTGRES_PASSWORD": password, "PGDATA": PGDATA},
        "user": "postgres", "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"],
        "read_only": True,
        "mounts": [docker.types.Mount(DATA_MOUNT, volume.db_dir, type="bind")],
        "tmpfs": {WAL_DIR: f"size={WAL_MB}m,mode=0700,{owner}",
                  "/run/postgresql": f"size=1m,mode=2775,{owner}",
                  "/tmp": "size=16m,mode=1777"},
        "mem_limit": SERVER_MEMORY, "memswap_limit": SERVER_MEMORY, "pids_limit": SERVER_PIDS,
        "nano_cpus": SERVER_NANO_CPUS,
        "log_config": docker.types.LogConfig(type="json-file",
                                             config={"max-size": "10m", "max-file": "2"}),
        "detach": True,
    }


def server_labels(run_id: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The labels of a run's server and its networks: ``extra`` (the repository and the
    owning process, so ``agentrt gc --repo`` finds them), then agentrt's own."""
    return {**(extra or {}), LABEL_RUN: run_id, LABEL_SESSION: f"db-{run_id}",
            LABEL_ROLE: ROLE_DATABASE}


def start_server(client: docker.DockerClient, run_id: str,
                 labels: Mapping[str, str] | None = None, disk_mb: int = SERVER_BASE_MB) -> str:
    """Start the run's server (its network and a volume of ``disk_mb`` MiB), labelled with
    ``labels`` too; its id."""
    from runtime.engine.image_build import build_image

    name = server_name(run_id)
    with docker_errors(f"build image {IMAGE}"):
        build_image(client, IMAGE_NAME)  # a no-op when the recipe has not changed
    try:
        with docker_errors(f"create network {name}"):
            # internal: neither the server nor the agents on this network have a route out.
            create_internal_network(client, name, server_labels(run_id, labels))
        with docker_errors(f"make the disk of {name}"):
            facts = ImageFacts.of(client, IMAGE)
            volume = create_engine_volume(client, volume_id(run_id), disk_mb, facts.uid,
                                          facts.gid, labels=server_labels(run_id, labels))
        with docker_errors(f"start {name}"):
            # Nobody needs the superuser's password (admin goes through the socket);
            # a random one means nobody on the network can guess it either.
            password = scram_verifier(secrets.token_urlsafe(24))
            container = client.containers.run(**server_spec(run_id, volume, facts, password,
                                                             labels))
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
    with docker_errors(f"remove the disk of {name}"):  # VolumeError too
        for volume in list_engine_volumes(client, volume_id(run_id)):
            remove_engine_volume(client, volume)
