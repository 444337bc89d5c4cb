"""database_strategy = "shared": one PostgreSQL database and role per session, walled off.

The unit tests at the top need no engine; the rest run real agents on a real server.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.databases.postgres import stop_shared_server
from runtime.databases.postgres_server import server_name
from runtime.models import SessionStatus
from tests.conftest import git
from tests.integration.helpers import by_task, run_tasks, sh

pytestmark = pytest.mark.docker

IMAGE = "agentrt/postgres:latest"
IDENTIFIER = re.compile(r"^[a-z0-9_]{1,63}$")
OPAQUE = re.compile(r"^agentrt_[0-9a-f]{16}$")

# Each agent writes its own database, then tries every other session database of the run with
# its own role. COMMENT ON DATABASE lands in a shared catalog every role can read: an agent
# marks itself done there and waits for the others, so no database is dropped while a
# neighbour is still about to knock on it.
AGENT = r"""
set -u
python3 -m http.server 8000 --bind 0.0.0.0 > /dev/null 2>&1 &
myip=$(python3 -c "import socket; print(socket.gethostbyname(socket.gethostname()))")
psql "$AGENT_DATABASE_URL" -X -q -At -v ON_ERROR_STOP=1 \
    -c "create table notes (session text)" \
    -c "insert into notes values ('$AGENT_SESSION_ID')" \
    -c "select session from notes" > own.txt 2>&1
q() { psql "$AGENT_DATABASE_URL" -X -q -At -c "$1"; }
me=$(q "select current_database()")
q "comment on database \"$me\" is 'ip:$myip'"
mine="from pg_database where datname like 'agentrt\_%'"
others() { q "select datname $mine and datname <> current_database() order by 1"; }
i=0
while [ -z "$(others)" ] && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
q "select datname from pg_database union all select rolname from pg_roles
   union all select coalesce(usename, '') || ' ' || coalesce(datname, '') || ' '
   || coalesce(application_name, '') from pg_stat_activity" > catalog.txt
: > others.txt
for db in $(others); do
    if psql "${AGENT_DATABASE_URL%/*}/$db" -X -At -c "select 1" > /dev/null 2> /tmp/err; then
        echo "$db connected" >> others.txt
    else
        echo "$db refused $(tr '\n' ' ' < /tmp/err)" >> others.txt
    fi
done
i=0
noip="and coalesce(shobj_description(oid, 'pg_database'), '') not like '%ip:%'"
while [ "$(q "select count(*) $mine $noip")" != 0 ] && [ $i -lt 120 ]; do
    sleep 0.5; i=$((i + 1))
done
: > peers.txt
for ip in $(q "select substring(shobj_description(oid, 'pg_database') from 'ip:([0-9.]+)') $mine and datname <> current_database()"); do
    if python3 -c "import socket, sys; socket.create_connection((sys.argv[1], 8000), 3)" "$ip" 2>/dev/null
    then echo "$ip reached"; else echo "$ip blocked"; fi >> peers.txt
done
q "comment on database \"$me\" is 'done ip:$myip'"
i=0
busy="and coalesce(shobj_description(oid, 'pg_database'), '') not like 'done%'"
while [ "$(q "select count(*) $mine $busy")" != 0 ] && [ $i -lt 120 ]; do
    sleep 0.5; i=$((i + 1))
done
if python3 -c "import socket; socket.create_connection(('deb.debian.org', 80), 5)" 2>/dev/null
then echo reached; else echo blocked; fi > egress.txt
"""


# -- unit: names, URLs and verifiers ------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres_image(docker_client: Any) -> str:
    """agentrt/postgres:latest, built through the same recipe machinery as every image."""
    from runtime.engine.image_build import build_image

    build_image(docker_client, "postgres")
    return IMAGE


@pytest.fixture
def servers(docker_client: Any) -> Iterator[list[str]]:
    """Run ids whose database server the test made; stopped afterwards, even on failure."""
    def running() -> set[str]:
        found = docker_client.containers.list(all=True, filters={"label": "agentrt.role=database"})
        return {c.labels.get("agentrt.run", "") for c in found}

    before = running()
    made: list[str] = []
    yield made
    for run_id in sorted((running() - before) | set(made)):
        stop_shared_server(run_id, docker_client)
        name = server_name(run_id)
        label = f"agentrt.run={run_id}"
        assert not docker_client.containers.list(all=True, filters={"label": label})
        assert not docker_client.networks.list(names=[name]), f"network {name} left behind"


def _server_sql(docker_client: Any, run_id: str, sql: str) -> str:
    server = docker_client.containers.get(server_name(run_id))
    result = server.exec_run(["psql", "-X", "-At", "-c", sql], user="postgres")
    assert result.exit_code == 0, result.output
    return str(result.output.decode())


def test_each_session_owns_one_database_and_cannot_open_its_neighbours(
    repo: Path, docker_client: Any, postgres_image: str, servers: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Keep the server past the run's end so the test can look inside it; the fixture stops it.
    import runtime.databases.postgres

    monkeypatch.setattr(runtime.databases.postgres, "stop_shared_server", lambda *a, **k: None)
    report = run_tasks(repo, [sh("left", AGENT), sh("right", AGENT)],
                       database_strategy="shared", image=postgres_image)
    servers.append(report.run_id)
    sessions = by_task(report)
    for task_id, other_id in (("left", "right"), ("right", "left")):
        me, other = sessions[task_id], sessions[other_id]
        assert me.status is SessionStatus.SUCCEEDED, me.reason

        def read(path: str, me: Any = me) -> str:
            return git(repo, "show", f"{me.head_commit}:{path}").strip()

        assert read("own.txt") == me.id, "the session could not write its own database"
        attempts = read("others.txt").splitlines()
        assert len(attempts) == 1, attempts
        other_db, verdict = attempts[0].split(" ", 1)
        assert OPAQUE.match(other_db) and verdict.startswith("refused"), attempts
        assert f'permission denied for database "{other_db}"' in attempts[0]
        # Every role reads the catalog: it names opaque neighbours, never whose they are.
        catalog = read("catalog.txt")
        assert other_db in catalog.split()
        for secret in (other.id, other.id.rsplit("-", 1)[-1], other.task_id, me.id,
                       me.id.rsplit("-", 1)[-1], me.task_id, report.run_id):
            assert secret not in catalog, f"{secret!r} readable in the catalog:\n{catalog}"
        assert all(OPAQUE.match(n) for n in catalog.split() if n.startswith("agentrt")), catalog
        # The run's network is internal: the database is reachable, the internet is not.
        assert read("egress.txt") == "blocked"
        # Agents of one run share the server, never a network: the neighbour is unreachable.
        peers = read("peers.txt").splitlines()
        assert len(peers) == 1 and peers[0].endswith(" blocked"), peers

    # The sessions are closed: their roles and databases are gone, the server is still up.
    left = _server_sql(docker_client, report.run_id,
                       "select datname from pg_database where datname like 'agentrt\\_%' "
                       "union all select rolname from pg_roles where rolname like 'agentrt\\_%'")
    assert left.strip() == ""
    server = docker_client.containers.get(server_name(report.run_id))
    assert server.labels["agentrt.role"] == "database"
    assert server.labels["agentrt.session"] == f"db-{report.run_id}"
    network = docker_client.networks.get(server_name(report.run_id))
    assert network.attrs["Internal"] is True


def test_role_cannot_create_databases_or_roles_and_drop_is_idempotent(
    docker_client: Any, postgres_image: str, servers: list[str]
) -> None:
    from runtime.config import RunConfig
    from runtime.databases.postgres import create_shared_database

    run_id = "rtest-" + secrets.token_hex(3)
    servers.append(run_id)
    config = RunConfig(database_strategy="shared")
    db = create_shared_database(config, "x'; DROP ROLE postgres; --", run_id, docker_client)
    assert OPAQUE.match(db.name), db.name  # the session id never reaches SQL or the catalog
    assert db.network is not None and db.network.startswith(server_name(run_id) + "-agentrt_")
    url = db.env["AGENT_DATABASE_URL"]
    script = (f'psql "{url}" -X -c "create database evil" 2>&1; '
              f'psql "{url}" -X -c "create role evil" 2>&1; '
              f'psql "{url}" -X -At -c "select rolsuper or rolcreatedb or rolcreaterole '
              'from pg_roles where rolname = current_user"')
    out = docker_client.containers.run(
        postgres_image, ["sh", "-c", script], network=db.network, user="1000:1000",
        remove=True, labels={"agentrt.run": run_id}).decode()
    assert "permission denied to create database" in out
    assert "permission denied to create role" in out
    assert out.strip().splitlines()[-1] == "f"
    assert _server_sql(docker_client, run_id,
                       "select count(*) from pg_roles where rolname = 'postgres'").strip() == "1"
    db.drop()
    db.drop()
    assert _server_sql(docker_client, run_id,
                       f"select count(*) from pg_roles where rolname = '{db.name}'").strip() == "0"


def test_the_run_removes_its_database_server_when_it_ends(
    repo: Path, docker_client: Any, postgres_image: str, servers: list[str]
) -> None:
    report = run_tasks(repo, [sh("solo", 'psql "$AGENT_DATABASE_URL" -X -c "select 1"')],
                       database_strategy="shared", image=postgres_image)
    servers.append(report.run_id)
    assert by_task(report)["solo"].status.value == "succeeded"
    assert not docker_client.containers.list(
        all=True, filters={"label": f"agentrt.run={report.run_id}"})
    assert not docker_client.networks.list(names=[server_name(report.run_id)])


def test_an_unreachable_database_url_is_refused_before_anything_starts(
    postgres_image: str, repo: Path, tmp_path: Path
) -> None:
    from tests.integration.helpers import agentrt

    tasks = tmp_path / "tasks.toml"
    tasks.write_text('[run]\ndatabase_strategy = "shared"\n'
                     'database_url = "postgresql://admin:hunter2pass@127.0.0.1:9/postgres"\n'
                     '[[tasks]]\nid = "t"\ncommand = ["true"]\n')
    proc = agentrt("run", str(tasks), "--repo", str(repo))
    assert proc.returncode == 2, proc.stderr
    assert "database_url" in proc.stderr and "hunter2pass" not in proc.stderr
    assert "agent/" not in git(repo, "branch", "--list", "agent/*")


def test_the_shared_server_holds_a_sessions_temp_files_and_cpu(
    repo: Path, docker_client: Any, postgres_image: str, servers: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sort that spills past temp_file_limit fails (it used to fill the server's disk); the
    server runs on one core whatever the sessions' cpu_percent."""
    import runtime.databases.postgres

    monkeypatch.setattr(runtime.databases.postgres, "stop_shared_server", lambda *a, **k: None)
    sort = ("SELECT count(*) FROM (SELECT g FROM generate_series(1, 40000000) g "
            "ORDER BY g DESC) s")
    script = (f'psql "$AGENT_DATABASE_URL" -X -At -c "{sort}" > sort.txt 2>&1; '
              'psql "$AGENT_DATABASE_URL" -X -At -c "SHOW temp_file_limit" > limit.txt 2>&1; '
              'psql "$AGENT_DATABASE_URL" -X -At -c "SET temp_file_limit = -1" > set.txt 2>&1; true')
    report = run_tasks(repo, [sh("spill", script)], database_strategy="shared",
                       image=postgres_image)
    servers.append(report.run_id)
    result = by_task(report)["spill"]
    assert result.status is SessionStatus.SUCCEEDED, result.reason

    def read(path: str) -> str:
        return git(repo, "show", f"{result.head_commit}:{path}").strip()

    assert "temp_file_limit" in read("sort.txt"), read("sort.txt")
    # Control: the limit is agentrt's, and an agent cannot lift it.
    assert read("limit.txt") == "256MB"
    assert "permission denied" in read("set.txt"), read("set.txt")
    info = docker_client.api.inspect_container(server_name(report.run_id))
    assert info["HostConfig"]["NanoCpus"] == 1_000_000_000
