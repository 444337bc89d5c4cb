"""Admin SQL on a PostgreSQL server, run as its superuser by psql in a container, never on the
host: ``docker exec`` into agentrt's own server (peer auth over the unix socket), or a
throwaway hardened ``agentrt/postgres`` container on the engine's host network for a
``database_url``. Names and values reach the script only as psql variables.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import docker
import docker.errors
import requests.exceptions

from runtime.engine.labels import LABEL_ROLE
from runtime.errors import AgentRuntimeError, DatabaseError, WaitTimeoutError
from runtime.waiting import wait_until

IMAGE_NAME = "postgres"
IMAGE = "agentrt/postgres:latest"

# Reads the script from $AGENTRT_SQL and hands every name and value to psql as a variable, so the
# values never become part of the SQL text or of any argv.
_PSQL = (
    'printf "%s\\n" "$AGENTRT_SQL" | psql -X -q -A -t -v ON_ERROR_STOP=1 '
    '-v role="$AGENTRT_ROLE" -v db="$AGENTRT_DB" -v verifier="$AGENTRT_VERIFIER" '
    '"$AGENTRT_TARGET"'
)


@contextlib.contextmanager
def docker_errors(action: str) -> Iterator[None]:
    """Docker, transport and engine errors inside the block become DatabaseError."""
    try:
        yield
    except DatabaseError:
        raise
    except (docker.errors.DockerException, requests.exceptions.RequestException,
            AgentRuntimeError) as exc:
        raise DatabaseError(f"could not {action}: {exc}") from exc


class PsqlAdmin:
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
        with docker_errors("run psql in the database server"):
            exec_id = self.client.api.exec_create(cid, ["sh", "-c", _PSQL], user="postgres",
                                                  environment=env, stdout=True, stderr=True)
            out, err = self.client.api.exec_start(exec_id, demux=True)
            code = exec_exit_code(self.client, exec_id)
        return code, decode_output(out), decode_output(err)

    def _one_shot(self, env: dict[str, str]) -> tuple[int, str, str]:
        # The host network, because the admin URL is written from the host's point of view
        # (often localhost); psql's own container is hardened like an agent's.
        with docker_errors("run psql against database_url"):
            try:
                out = self.client.containers.run(
                    IMAGE, ["sh", "-c", _PSQL], environment=env, network_mode="host",
                    user="postgres", read_only=True, cap_drop=["ALL"], remove=True,
                    security_opt=["no-new-privileges:true"], labels={LABEL_ROLE: "database-admin"})
            except docker.errors.ContainerError as exc:  # psql ran and failed: its own words
                return exc.exit_status, "", decode_output(exc.stderr)
        return 0, decode_output(out), ""


def exec_exit_code(client: docker.DockerClient, exec_id: str) -> int:
    """An exec's exit code; -1 if unknown. The engine may still report it running (and its code
    as None) for a moment after exec_start has returned, so ask again briefly."""
    def exit_code() -> tuple[int] | None:  # a tuple: an exit code of 0 also ends the wait
        info = client.api.exec_inspect(exec_id)
        done = not info.get("Running") and info.get("ExitCode") is not None
        return (int(info["ExitCode"]),) if done else None

    try:
        return wait_until(exit_code, timeout=1.0, what="an exec's exit code",
                          interval=0.02, max_interval=0.02)[0]
    except WaitTimeoutError:
        return -1


def decode_output(data: bytes | None) -> str:
    return (data or b"").decode(errors="replace")
