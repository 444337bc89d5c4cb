"""Environments and services on a real engine (issue #20, docs/environments.md).

A repository's Dockerfile (agentrt/base + Debian's jq by apt) with setup commands: a shell
task and a preset task (the real agentrt/claude-code image with its CLI replaced by a stand-in
in place, so no model is needed: the real presets in environments are proven with a model in
test_real_agents.py) both see jq, and the preset its CLI and its version; a second run builds
nothing; committing a change to a file the setup names rebuilds. A CLI image laid out otherwise
(the CLI where the recipe does not put it) is refused, naming the path, before anything starts. A devcontainer.json with build.dockerfile, args,
containerEnv and postCreateCommand. A service with a healthcheck reached by name from its own
session and not from another session of the run; a service that never becomes healthy fails
its session; a broken Dockerfile exits 2 before anything starts.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from runtime.config import ResourceLimits, RunConfig, Task
from runtime.environments import Environment, Healthcheck, Service
from runtime.git.safe_git import MainRepo
from runtime.models import RunReport, SessionStatus
from runtime.run.coordinator import AgentCoordinator
from runtime.run.environments import prepare_environments
from tests.conftest import git
from tests.integration.helpers import agentrt, by_task, sh

pytestmark = pytest.mark.docker

FAKE_CLI = "agentrt-test/fake-cli:latest"
LIMITS = ResourceLimits(memory_mb=256, cpu_percent=100, time_seconds=120, disk_mb=64, pids=128)
FAKE_CLAUDE = """#!/bin/sh
# A stand-in for Claude Code where agentrt/claude-code has it: proves the CLI and the project's
# toolchain are in one image.
[ "$1" = --version ] && { echo "0.0.0 (stand-in)"; exit 0; }
{ echo "fake-claude $*"; jq --version; } > /workspace/claude.txt 2>&1
"""


def cli_image(docker_client: Any, tag: str, dockerfile: str) -> str:
    """Build ``tag`` from ``dockerfile`` with the stand-in CLI as ``claude`` in its context."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name, text, mode in (("claude", FAKE_CLAUDE, 0o755),
                                 ("Dockerfile", dockerfile, 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(text.encode()), mode
            tar.addfile(info, io.BytesIO(text.encode()))
    data.seek(0)
    docker_client.images.build(fileobj=data, custom_context=True, tag=tag, rm=True)
    return tag


@pytest.fixture(scope="module")
def fake_cli(docker_client: Any) -> str:
    """agentrt/claude-code as its recipe builds it, with the stand-in over its CLI."""
    from runtime.engine.image_build import build_image

    build_image(docker_client, "claude-code", log=lambda line: None)  # a no-op when current
    return cli_image(docker_client, FAKE_CLI,
                     "FROM agentrt/claude-code:latest\nUSER root\n"
                     "COPY claude /usr/local/bin/claude\nUSER agent\n")


BUILT: set[str] = set()  # the environment images this module's runs used


@pytest.fixture(scope="module", autouse=True)
def remove_built_environments(docker_client: Any) -> Iterator[None]:
    """The environment images this module's runs used are removed at its end; no other: the
    engine is shared, and another run's images may be new too."""
    yield
    for ref in BUILT:
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(ref, force=True)


def commit(repo: Path, files: dict[str, str], message: str = "change") -> None:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def run(repo: Path, tasks: list[Task], log: list[str] | None = None, **config: Any
        ) -> RunReport:
    coordinator = AgentCoordinator(
        config=RunConfig(resource_limits=LIMITS, merge="none", **config), repo=repo,
        stop_grace_seconds=2)
    coordinator.build_log = (log.append if log is not None else None)
    report = coordinator.run_agents(tasks)
    BUILT.update(s.image for s in report.sessions if s.image.startswith("agentrt/env:"))
    return report


def show(repo: Path, branch: str, path: str) -> str:
    return git(repo, "show", f"{branch}:{path}")


def test_dockerfile_setup_preset_layer_and_cache(repo: Path, fake_cli: str,
                                                docker_client: Any) -> None:
    nonce = secrets.token_hex(4)  # a fresh environment: the first run really builds
    commit(repo, {
        "env/Dockerfile": f"# test {nonce}\nFROM agentrt/base:latest\nUSER root\n"
                          "RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get "
                          "install -y -q --no-install-recommends jq "
                          "&& rm -rf /var/lib/apt/lists/*\n",
        "tools/setup.sh": "echo v1 > /opt/tool-version\n",
    })
    env = Environment(dockerfile="env/Dockerfile", setup=["sh tools/setup.sh",
                                                          "touch /opt/setup-ran"],
                      files=["tools/setup.sh"], env={"PROJECT_MODE": "test $HOME"},
                      agent_image=fake_cli, build_network=True)  # its RUN installs jq
    check = ('{ jq --version; cat /opt/tool-version; ls /opt/setup-ran; echo "$PROJECT_MODE"; '
             'git --version >/dev/null && echo git; id -u; } > out.txt 2>&1')
    tasks = [sh("shell", check),
             Task(id="agent", agent="claude-code", prompt="hello", network="bridge")]
    log: list[str] = []
    report = run(repo, tasks, log, environment=env)
    results = by_task(report)
    assert all(r.status is SessionStatus.SUCCEEDED for r in results.values()), report
    out = show(repo, results["shell"].branch, "out.txt")
    assert "jq-1.6" in out and "v1" in out and "/opt/setup-ran" in out, out
    assert "test $HOME" in out and "git" in out, out
    claude = show(repo, results["agent"].branch, "claude.txt")
    assert claude.startswith("fake-claude -p hello") and "jq-1.6" in claude, claude
    # The CLI's version: the preset image's label, carried onto the environment image.
    pinned = docker_client.images.get(fake_cli).labels["agentrt.cli.version"]
    assert results["agent"].cli_version == pinned and pinned, results["agent"]
    assert any(line.startswith("Step ") for line in log)
    first = {t: r.image_digest for t, r in results.items()}
    assert results["shell"].image.startswith("agentrt/env:")
    assert results["agent"].image != results["shell"].image  # the CLI layer is its own key

    # Nothing changed: found by key, no build, the same images.
    log.clear()
    again = by_task(run(repo, tasks, log, environment=env))
    assert {t: r.image_digest for t, r in again.items()} == first
    assert not any(line.startswith(("building", "Step ")) for line in log), log

    # An unrelated commit keeps the image; a change to a file the setup names rebuilds it.
    main = MainRepo(repo)
    config = RunConfig(environment=env)
    commit(repo, {"README.md": "unrelated\n"})
    same = prepare_environments(_client(), main, main.rev_parse("HEAD"), config, tasks[:1])
    assert same["shell"].id == first["shell"] and not same["shell"].rebuilt
    commit(repo, {"tools/setup.sh": "echo v2 > /opt/tool-version\n"})
    changed = by_task(run(repo, tasks[:1], environment=env))["shell"]
    assert changed.status is SessionStatus.SUCCEEDED
    assert changed.image_digest != first["shell"]
    assert "v2" in show(repo, changed.branch, "out.txt")


def _client() -> Any:
    from runtime.engine.discovery import get_client

    return get_client()


DEVCONTAINER = """{
  // a comment, as editors write them
  "name": "demo",
  "build": {"dockerfile": "Dockerfile", "context": "..", "args": {"GREETING": "hi"}},
  "containerEnv": {"DEV_MODE": "on"},
  "postCreateCommand": "cat VERSION > /opt/post-create",  /* trailing comma next */
}
"""


def test_devcontainer_build_and_cli_steps(repo: Path) -> None:
    commit(repo, {
        ".devcontainer/devcontainer.json": DEVCONTAINER,
        ".devcontainer/Dockerfile": f"# {secrets.token_hex(4)}\nFROM agentrt/base:latest\n"
                                    "ARG GREETING=hello\nUSER root\n"
                                    "COPY VERSION /opt/version\n"
                                    "RUN echo $GREETING > /opt/greeting\n",
        "VERSION": "1.2.3\n",
    })
    (repo / "tasks.toml").write_text(
        '[run]\nmerge = "none"\n[run.environment]\n'
        'devcontainer = ".devcontainer/devcontainer.json"\nfiles = ["VERSION"]\n'
        '[[tasks]]\nid = "dev"\ncommand = ["sh", "-c", '
        '"cat /opt/greeting /opt/version /opt/post-create > out.txt; echo $DEV_MODE >> out.txt"]\n')
    built = agentrt("images", "build", "--file", str(repo / "tasks.toml"), "--repo", str(repo))
    assert built.returncode == 0, built.stderr
    assert "Step " in built.stderr and "agentrt/env:" in built.stdout
    report = run(repo, [sh("dev", "cat /opt/greeting /opt/version /opt/post-create > out.txt; "
                                  "echo $DEV_MODE >> out.txt")],
                 environment=Environment(devcontainer=".devcontainer/devcontainer.json",
                                         files=["VERSION"]))
    result = report.sessions[0]
    assert result.status is SessionStatus.SUCCEEDED, result
    assert show(repo, result.branch, "out.txt").split() == ["hi", "1.2.3", "1.2.3", "on"]


PROBE = ("import socket,sys; socket.create_connection((sys.argv[1], 8080), timeout=2); "
         "print('reached')")


def test_services_reachable_by_name_only_from_their_session(repo: Path,
                                                            docker_client: Any) -> None:
    web = Service(name="web", image="agentrt/base:latest",
                  command=["python3", "-m", "http.server", "8080", "--directory", "/tmp"],
                  healthcheck=Healthcheck(cmd=["python3", "-c", PROBE.replace(
                      "sys.argv[1]", "'127.0.0.1'")], interval=0.3, retries=30),
                  memory_mb=64)
    script = (f'python3 -c "{PROBE}" web > reach.txt 2>&1; '
              "for i in $(seq 100); do [ -f /tmp/done ] && break; sleep 0.1; done")
    tasks = [sh("one", script), sh("two", script)]
    outcome: dict[str, RunReport] = {}
    thread = threading.Thread(target=lambda: outcome.update(
        report=run(repo, tasks, services=[web], max_concurrent_agents=2)))
    thread.start()
    try:
        sessions = _wait_for_sessions(docker_client, repo, 2)
        first, second = sessions
        other_ip = _service_ip(docker_client, second.labels["agentrt.session"])
        probe = ["python3", "-c", PROBE, other_ip]
        crossed = first.exec_run(probe, user="1000")
        assert crossed.exit_code != 0, crossed.output  # another session's service: no route
        own = first.exec_run(["python3", "-c", PROBE, "web"], user="1000")
        assert own.exit_code == 0, own.output  # the control: its own, by name
    finally:
        for container in _session_containers(docker_client, repo):
            container.exec_run(["touch", "/tmp/done"], user="1000")
        thread.join(timeout=120)
    results = by_task(outcome["report"])
    for result in results.values():
        assert result.status is SessionStatus.SUCCEEDED, result
        assert show(repo, result.branch, "reach.txt").strip() == "reached"
    assert not docker_client.containers.list(
        all=True, filters={"label": ["agentrt.role=service", f"agentrt.repo={repo}"]})


def test_services_beside_an_allowlist_session(repo: Path) -> None:
    """network = "allowlist": the session keeps its egress network and reaches its service."""
    web = Service(name="web", image="agentrt/base:latest",
                  command=["python3", "-m", "http.server", "8080", "--directory", "/tmp"],
                  memory_mb=64)
    task = sh("allow", f'sleep 1; python3 -c "{PROBE}" web > reach.txt 2>&1; '
                       'echo "$HTTPS_PROXY" >> reach.txt',
              network="allowlist", egress_allow=["example.com"])
    result = run(repo, [task], services=[web]).sessions[0]
    assert result.status is SessionStatus.SUCCEEDED, result
    reach = show(repo, result.branch, "reach.txt").split()
    assert reach[0] == "reached" and "agentrt-egress" in reach[1], reach


def _session_containers(client: Any, repo: Path) -> list[Any]:
    return [c for c in client.containers.list(filters={"label": f"agentrt.repo={repo}"})
            if "agentrt.session" in c.labels and "agentrt.harvest" not in c.labels]


def _wait_for_sessions(client: Any, repo: Path, count: int) -> list[Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = _session_containers(client, repo)
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError("the sessions did not start")


def _service_ip(client: Any, session_id: str) -> str:
    service = client.containers.list(
        filters={"label": ["agentrt.role=service", f"agentrt.service.session={session_id}"]})[0]
    networks = service.attrs["NetworkSettings"]["Networks"]
    return str(next(iter(networks.values()))["IPAddress"])


def test_service_that_never_becomes_healthy_fails_its_session(repo: Path) -> None:
    bad = Service(name="db", image="agentrt/base:latest", command=["sleep", "60"],
                  healthcheck=Healthcheck(cmd=["false"], interval=0.2, retries=3))
    result = run(repo, [sh("uses-db", "true")], services=[bad]).sessions[0]
    assert result.status is SessionStatus.CRASHED, result
    assert "service 'db' never became healthy" in (result.reason or ""), result.reason


def test_broken_dockerfile_exits_2_before_anything_starts(repo: Path) -> None:
    commit(repo, {"Dockerfile": f"# {secrets.token_hex(4)}\nFROM agentrt/base:latest\n"
                                "RUN echo about-to-fail && exit 3\n"})
    (repo / "tasks.toml").write_text('[run.environment]\ndockerfile = "Dockerfile"\n'
                                     '[[tasks]]\nid = "never"\ncommand = ["true"]\n')
    proc = agentrt("run", str(repo / "tasks.toml"), "--repo", str(repo))
    assert proc.returncode == 2, proc.stderr
    assert "the build failed at Step 2/" in proc.stderr, proc.stderr
    detail = proc.stderr.split("the build failed", 1)[1]
    assert "RUN echo about-to-fail" in detail and "\n    about-to-fail" in detail, detail
    assert git(repo, "branch", "--list", "agent/*").strip() == ""


def test_environments_that_cannot_hold_a_session_are_refused(repo: Path,
                                                             docker_client: Any) -> None:
    """An image without /bin/sh, and one without git and without apt-get or apk."""
    from runtime.errors import ConfigError

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    noshell = "agentrt-test/no-shell:latest"
    docker_client.api.import_image_from_data(data.getvalue(), repository="agentrt-test/no-shell",
                                             tag="latest")
    commit(repo, {"bare/Dockerfile": f"# {secrets.token_hex(4)}\nFROM agentrt/base:latest\n"
                                     "USER root\nRUN rm -f /usr/bin/git /usr/bin/apt-get\n"})
    main = MainRepo(repo)
    head = main.rev_parse("HEAD")
    tasks = [sh("t", "true")]
    try:
        with pytest.raises(ConfigError, match="no /bin/sh"):
            prepare_environments(docker_client, main, head,
                                 RunConfig(environment=Environment(image=noshell)), tasks)
        with pytest.raises(ConfigError, match="lacks git and has neither apt-get nor apk"):
            prepare_environments(docker_client, main, head,
                                 RunConfig(environment=Environment(dockerfile="bare/Dockerfile")),
                                 tasks)
    finally:
        docker_client.images.remove(noshell, force=True)


def test_a_cli_image_laid_out_otherwise_is_refused_before_anything_starts(
        repo: Path, docker_client: Any) -> None:
    """The layout an earlier recipe had (/opt/claude-code/bin/claude): exit 2, the path named,
    no branch made (the real layout passes: test_dockerfile_setup_preset_layer_and_cache)."""
    old = cli_image(docker_client, "agentrt-test/old-layout-cli:latest",
                    "FROM agentrt/base:latest\nUSER root\n"
                    "COPY claude /opt/claude-code/bin/claude\nUSER agent\n")
    try:
        (repo / "tasks.toml").write_text(
            f'[run]\nnetwork = "bridge"\n[run.environment]\nimage = "agentrt/base:latest"\n'
            f'agent_image = "{old}"\nsetup = ["true # {secrets.token_hex(4)}"]\n'
            '[[tasks]]\nid = "agent"\nagent = "claude-code"\nprompt = "hello"\n')
        proc = agentrt("run", str(repo / "tasks.toml"), "--repo", str(repo))
        assert proc.returncode == 2, proc.stderr
        assert "has no /usr/local/bin/claude" in proc.stderr, proc.stderr
        assert "agentrt images build claude-code" in proc.stderr, proc.stderr
        assert git(repo, "branch", "--list", "agent/*").strip() == ""
    finally:
        docker_client.images.remove(old, force=True)


@pytest.mark.parametrize("network", [False, True], ids=["default", "build_network"])
def test_a_repository_dockerfile_builds_without_network_unless_asked(
    repo: Path, network: bool
) -> None:
    """The repository's Dockerfile (which merged agent work can change) builds as root: its
    RUN steps get no network unless build_network = true (the control: then they do)."""
    nonce = secrets.token_hex(4)  # in the RUN line: no build cache shared between the two
    commit(repo, {"env/Dockerfile": "FROM agentrt/base:latest\nUSER root\n"
                                    f"RUN echo {nonce} && ls /sys/class/net > /opt/nets\n"})
    env = Environment(dockerfile="env/Dockerfile", build_network=network)
    report = run(repo, [sh("nets", "cp /opt/nets nets.txt")], environment=env)
    result = by_task(report)["nets"]
    assert result.status is SessionStatus.SUCCEEDED, result.reason
    nets = show(repo, result.branch, "nets.txt").split()
    assert (nets == ["lo"]) is not network, nets
