"""The three agent presets for real: claude-code, codex and aider, each in its own image, make
an edit through a real ``agentrt run`` against a scripted model server.

No real model is reachable here, so ``tests/integration/model_server.py`` (stdlib Python, in
agentrt/base) plays one on a Docker network this test makes: Anthropic Messages for claude-code,
the OpenAI Responses API for codex, Chat Completions for aider (through litellm), all streamed,
each answering with a canned tool call or edit that writes a file. Each run uses
``network = "allowlist"`` with only that server's ``host:port`` allowed and its network in
``egress_networks``, so the CLI can reach the model only through the run's egress proxy.

For each CLI the test proves: the session succeeds; the server saw the CLI's requests, with the
right API key, coming from the proxy's address (never the session's); the proxy's log shows the
connection; the file is on the session's branch and is the only change there (none of the CLI's
own state: no ``.aider*``, ``.claude``, ``.codex``); the JSON report holds the CLI's version
(the image's label) and the usage it reported; and the API key is in no saved log, report,
state file, the proxy's or server's log, nor any ``docker inspect`` of the run's containers.
``base_url`` is given with ``/v1`` for claude-code (whose client adds it) and without it for
codex and aider (whose clients need it): agentrt takes either. aider gets no edit-format
setting from the test, and the server answers in whatever format aider asks for.

Then all three presets in one run with a ``[run.environment]``: each session image is
``agentrt/env:*`` made from the real preset images (their CLI where the recipe installs it),
each session reports its CLI's version, and each edit lands with nothing else on its branch.

The preset images are built first if their recipes changed (minutes, cold: see
docs/benchmarks.md); with current images the three runs take about a minute.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.engine.image_build import build_image
from runtime.engine.recipes import recipe_dir
from runtime.waiting import wait_until
from tests.conftest import git
from tests.integration.tmux import Tmux

pytestmark = pytest.mark.docker

BASE = "agentrt/base:latest"
PORT = 8080
SERVER_SOURCE = (Path(__file__).parent / "model_server.py").read_text(encoding="utf-8")

# Per preset: the secret it reads, its model and base URL, the file the server makes it write.
CASES: dict[str, dict[str, Any]] = {
    "claude-code": {"secret": "ANTHROPIC_API_KEY", "model": "claude-sonnet-4-5",
                    "base_url": "http://{server}:8080/v1", "path": "/v1/messages",
                    "file": "hello-claude.txt", "text": "hello from claude-code\n",
                    "version_arg": "CLAUDE_CODE_VERSION", "cost": True, "server_usage": True},
    "codex": {"secret": "OPENAI_API_KEY", "model": "gpt-5-codex",
              "base_url": "http://{server}:8080", "path": "/v1/responses",
              "file": "hello-codex.txt", "text": "hello from codex\n",
              "version_arg": "CODEX_VERSION", "cost": False, "server_usage": True},
    "aider": {"secret": "OPENAI_API_KEY", "model": "openai/gpt-4o",
              "base_url": "http://{server}:8080", "path": "/v1/chat/completions",
              "file": "hello-aider.txt", "text": "hello from aider\n",
              "version_arg": "AIDER_VERSION", "cost": False, "server_usage": False},
}

BUILD_SECONDS: dict[str, float] = {}


def pinned_version(name: str, arg: str) -> str:
    """The CLI version a recipe pins (its ``ARG <arg>=...``)."""
    text = (recipe_dir(name) / "Dockerfile").read_text(encoding="utf-8")
    found = re.search(rf"^ARG {arg}=(\S+)$", text, re.MULTILINE)
    assert found, f"{name}: no ARG {arg}"
    return found.group(1)


def preset_image(client: Any, name: str) -> str:
    """A preset's image, built if its recipe changed (a no-op when current)."""
    result = build_image(client, name, log=lambda line: None)
    BUILD_SECONDS[name] = result.seconds
    if result.rebuilt:
        print(f"built {result.ref} in {result.seconds:.0f}s", file=sys.stderr)
    return result.ref


@pytest.fixture(scope="module")
def api_key() -> str:
    """A fresh fake API key: the secret that must appear nowhere."""
    return "sk-agentrt-test-" + secrets.token_hex(20)


@pytest.fixture(scope="module")
def model_server(docker_client: Any, api_key: str) -> Iterator[dict[str, Any]]:
    """The scripted model server on a fresh internal network (no route out)."""
    tag = secrets.token_hex(4)
    net = docker_client.networks.create(f"agentrt-models-{tag}", driver="bridge",
                                        internal=True)
    server = None
    try:
        # The server checks the key by its hash: the key itself is not in its configuration.
        server = docker_client.containers.run(
            BASE, ["python3", "-u", "-c", SERVER_SOURCE], name=f"agentrt-model-{tag}",
            network=net.name, detach=True,
            environment={"EXPECT_KEY_SHA256": hashlib.sha256(api_key.encode()).hexdigest(),
                         "PORT": str(PORT)})
        for _ in range(100):
            if b"listening" in server.logs():
                break
            time.sleep(0.1)
        yield {"net": net.name, "name": server.name, "container": server}
    finally:
        if server is not None:
            server.remove(force=True)
        net.remove()


def server_requests(server: Any, since: int) -> list[dict[str, Any]]:
    """The server's request records (its JSON log lines) after the first ``since``."""
    lines = server.logs().decode(errors="replace").splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    return [r for r in records if "path" in r][since:]


class Watcher:
    """Collects ``docker inspect`` of every container of a repository's run while it lives,
    and the egress proxy's log and address on the model server's network."""

    def __init__(self, client: Any, repo: Path, net: str) -> None:
        self.client, self.repo, self.net = client, repo, net
        self.inspected: dict[str, str] = {}
        self.proxy_log = ""
        self.proxy_ip = ""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                found = self.client.containers.list(
                    all=True, filters={"label": f"agentrt.repo={self.repo}"})
                for container in found:
                    attrs = self.client.api.inspect_container(container.id)
                    self.inspected[container.id] = json.dumps(attrs)
                    labels = attrs.get("Config", {}).get("Labels") or {}
                    if labels.get("agentrt.role") == "egress":
                        self.proxy_log = container.logs().decode(errors="replace")
                        networks = attrs["NetworkSettings"]["Networks"]
                        if self.net in networks:
                            self.proxy_ip = networks[self.net]["IPAddress"]
            except Exception:  # noqa: BLE001 - a container went away between calls
                pass
            self.stop.wait(0.3)

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def task_file(path: Path, agents: list[str], server: dict[str, Any],
              environment: str = "") -> Path:
    """A run of one task per agent in ``agents`` against the scripted server."""
    tasks = "".join(f"""
[[tasks]]
id = "{agent}"
agent = "{agent}"
prompt = "Create the file {CASES[agent]['file']} saying hello."
secrets = ["{CASES[agent]['secret']}"]
model = "{CASES[agent]['model']}"
base_url = "{CASES[agent]['base_url'].format(server=server['name'])}"
""" for agent in agents)
    path.write_text(f"""
[run]
merge = "none"
conflict_radar_seconds = 0
network = "allowlist"
egress_allow = ["{server['name']}:{PORT}"]
egress_networks = ["{server['net']}"]
{environment}
[run.resource_limits]
memory_mb = 1536
cpu_percent = 200
time_seconds = 150
disk_mb = 256
pids = 512
{tasks}""", encoding="utf-8")
    return path


def changed_files(repo: Path, branch: str) -> list[str]:
    """The paths a session's branch changed against main (its base)."""
    return git(repo, "diff", "--name-only", f"main...{branch}").split()


def files_holding(root: Path, needle: bytes) -> list[str]:
    """Every file under ``root`` whose bytes contain ``needle``."""
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.mark.parametrize("agent", list(CASES))
def test_a_real_agent_cli_edits_through_the_egress_proxy(
        agent: str, docker_client: Any, repo: Path, tmp_path: Path,
        model_server: dict[str, Any], api_key: str) -> None:
    case = CASES[agent]
    preset_image(docker_client, agent)
    server = model_server["container"]
    seen_before = len(server_requests(server, 0))
    tasks = task_file(tmp_path / "tasks.toml", [agent], model_server)
    env = {case["secret"]: api_key}
    command = [sys.executable, "-m", "runtime.cli", "run", str(tasks), "--repo", str(repo),
               "--json"]
    started = time.monotonic()
    with Watcher(docker_client, repo.resolve(), model_server["net"]) as watcher:
        done = subprocess.run(command, capture_output=True, text=True, timeout=400,
                              env={**os.environ, **env})
    took = time.monotonic() - started
    state = repo / ".git" / "agentrt"
    logs = "\n".join(p.read_text(errors="replace") for p in state.rglob("*.log"))
    requests = server_requests(server, seen_before)
    context = (f"exit {done.returncode}\nstderr: {done.stderr[-3000:]}\nlog: {logs[-4000:]}\n"
               f"requests: {requests}\nproxy: {watcher.proxy_log[-2000:]}")
    assert done.returncode == 0, context
    report = json.loads(done.stdout)
    (session,) = report["sessions"]
    assert session["status"] == "succeeded", context

    # The CLI reached the model, with the key, and only through the proxy.
    api_calls = [r for r in requests if r["path"].startswith(case["path"])]
    assert api_calls, context
    assert all(r["auth"] == "ok" for r in requests), context
    assert watcher.proxy_ip and {r["client"] for r in requests} == {watcher.proxy_ip}, context
    assert f'Established connection to host "{model_server["name"]}"' in watcher.proxy_log

    # Its edit is on its branch, and nothing of the CLI's own state.
    assert git(repo, "show", f"{session['branch']}:{case['file']}") == case["text"]
    assert changed_files(repo, session["branch"]) == [case["file"]], context
    if agent == "aider":  # whole files on a server of the task's own, not gpt-4o's usual diff
        assert {r["answer"] for r in api_calls} == {"whole edit"}, context

    # Its version (the recipe's pin, through the image label) and its usage are reported.
    assert session["cli_version"] == pinned_version(agent, case["version_arg"])
    usage = session["usage"]
    assert usage is not None, context
    # claude-code and codex report the server's own figures (1200 in, 34 out per answer);
    # aider counts the streamed tokens itself with litellm's tokenizer.
    least = (1200, 34) if case["server_usage"] else (1, 1)
    assert usage["input_tokens"] >= least[0] and usage["output_tokens"] >= least[1], usage
    if case["cost"]:
        assert usage["cost_usd"] is not None and usage["cost_usd"] > 0, usage

    # The key is in no log, report, state file, container configuration or proxy/server log.
    needle = api_key.encode()
    assert needle not in done.stdout.encode() and needle not in done.stderr.encode()
    assert files_holding(state, needle) == []
    assert watcher.inspected, "no container of the run was seen"
    assert all(api_key not in text for text in watcher.inspected.values())
    assert api_key not in watcher.proxy_log
    assert api_key not in server.logs().decode(errors="replace")
    assert api_key not in json.dumps(docker_client.api.inspect_container(server.id))
    print(f"{agent}: {took:.1f}s, usage {usage}", file=sys.stderr)

    if agent == "claude-code":
        # Replay from the manifest (image digest, base, task, egress policy): it names the
        # recorded CLI version and the new session reports its own.
        again = subprocess.run(
            [sys.executable, "-m", "runtime.cli", "replay", session["id"], "--repo", str(repo)],
            capture_output=True, text=True, timeout=300, env={**os.environ, **env})
        version = session["cli_version"]
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"agent CLI {version}" in again.stderr
        assert version in again.stdout and "in, " in again.stdout, again.stdout
        assert api_key not in again.stdout + again.stderr
        assert files_holding(state, needle) == []


@pytest.mark.parametrize("name", list(CASES))
def test_a_preset_image_has_its_version_label_and_a_home_of_its_own(
        docker_client: Any, name: str) -> None:
    """No root-owned file in the agent's home; the pinned version is the image's label."""
    ref = preset_image(docker_client, name)
    if ref:
        out = docker_client.containers.run(
            ref, ["sh", "-c", 'find "$HOME" ! -user agent; echo "home=$HOME"'],
            remove=True).decode()
        assert out.strip() == "home=/home/agent", (name, out)
        labels = docker_client.images.get(ref).labels
        assert labels["agentrt.cli.version"] == pinned_version(name, CASES[name]["version_arg"])


def test_the_three_presets_in_one_run_with_an_environment(
        docker_client: Any, repo: Path, tmp_path: Path, model_server: dict[str, Any],
        api_key: str) -> None:
    """Each preset's CLI copied from its real image into an environment of the project's own:
    all three sessions succeed, each on ``agentrt/env:*`` with its CLI's version, each edit on
    its branch and nothing else there."""
    for agent in CASES:
        preset_image(docker_client, agent)
    built: set[str] = set()  # only this run's environment images are removed: the engine is shared
    environment = ("max_concurrent_agents = 1\n[run.environment]\n"
                   'image = "agentrt/base:latest"\n'
                   f'setup = ["echo {secrets.token_hex(4)} > /opt/project-toolchain"]\n')
    tasks = task_file(tmp_path / "tasks.toml", list(CASES), model_server, environment)
    env = {**os.environ, "ANTHROPIC_API_KEY": api_key, "OPENAI_API_KEY": api_key}
    try:
        done = subprocess.run([sys.executable, "-m", "runtime.cli", "run", str(tasks),
                               "--repo", str(repo), "--json"],
                              capture_output=True, text=True, timeout=900, env=env)
        logs = "\n".join(p.read_text(errors="replace")
                         for p in (repo / ".git" / "agentrt").rglob("*.log"))
        context = f"exit {done.returncode}\nstderr: {done.stderr[-4000:]}\nlog: {logs[-4000:]}"
        assert done.returncode == 0, context
        sessions = {s["task_id"]: s for s in json.loads(done.stdout)["sessions"]}
        built.update(s["image"] for s in sessions.values() if s["image"].startswith("agentrt/env:"))
        assert set(sessions) == set(CASES), context
        for agent, case in CASES.items():
            session = sessions[agent]
            assert session["status"] == "succeeded", (agent, context)
            assert session["image"].startswith("agentrt/env:"), session
            assert session["cli_version"] == pinned_version(agent, case["version_arg"])
            assert git(repo, "show", f"{session['branch']}:{case['file']}") == case["text"]
            assert changed_files(repo, session["branch"]) == [case["file"]], (agent, context)
        assert len({s["image"] for s in sessions.values()}) == 3  # one CLI layer each
        # codex is a static binary: its layer brings no Node.js into the environment.
        probe = docker_client.containers.run(
            sessions["codex"]["image"], ["sh", "-c", "command -v node || echo no-node"],
            remove=True).decode()
        assert probe.strip() == "no-node", probe
    finally:
        for ref in built:
            with contextlib.suppress(Exception):
                docker_client.images.remove(ref, force=True)


@pytest.mark.parametrize("agent", list(CASES))
def test_a_continued_agent_remembers_its_first_turn(
        agent: str, docker_client: Any, repo: Path, tmp_path: Path,
        model_server: dict[str, Any], api_key: str) -> None:
    """``agentrt continue`` of a preset's session: the CLI resumes the conversation kept from
    the first session (``claude --continue``, ``codex exec resume --last``, ``aider
    --restore-chat-history``), so the model sees the earlier turn (the server writes
    ``remembered``); a fresh session given the same follow-up does not (``forgot``: the
    control). Both sessions' files end on the one branch, which then merges."""
    case = CASES[agent]
    short = agent.split("-")[0]
    preset_image(docker_client, agent)
    server = model_server["container"]
    tasks = task_file(tmp_path / "tasks.toml", [agent], model_server)
    env = {**os.environ, case["secret"]: api_key}
    cli = [sys.executable, "-m", "runtime.cli"]
    try:
        first = subprocess.run([*cli, "run", str(tasks), "--repo", str(repo), "--json"],
                               capture_output=True, text=True, timeout=400, env=env)
        assert first.returncode == 0, first.stderr[-3000:]
        (session,) = json.loads(first.stdout)["sessions"]
        seen = len(server_requests(server, 0))
        follow = f"Now the follow-up: write followup-{short}.txt."
        cont = subprocess.run([*cli, "continue", session["id"], "-p", follow, "--repo",
                               str(repo), "--json"],
                              capture_output=True, text=True, timeout=400, env=env)
        logs = "\n".join(p.read_text(errors="replace")
                         for p in (repo / ".git" / "agentrt").rglob("*.log"))
        requests = server_requests(server, seen)
        context = f"stderr: {cont.stderr[-3000:]}\nlog: {logs[-3000:]}\nrequests: {requests}"
        assert cont.returncode == 0, context
        (child,) = json.loads(cont.stdout)["sessions"]
        assert child["continues"] == session["id"] and child["branch"] == session["branch"]
        writes = [r["history"] for r in requests if r.get("history") is not None
                  and r["answer"] not in ("text", "message")]
        assert writes and all(writes), context
        branch = session["branch"]
        assert git(repo, "show", f"{branch}:followup-{short}.txt") == "remembered\n", context
        assert sorted(changed_files(repo, branch)) == [f"followup-{short}.txt",
                                                       case["file"]], context
        assert api_key not in cont.stdout + cont.stderr

        merged = subprocess.run([*cli, "merge", child["id"], "--strategy", "auto", "--repo",
                                 str(repo), "--json"], capture_output=True, text=True,
                                timeout=300, env=env)
        assert merged.returncode == 0, merged.stderr[-2000:]
        assert (repo / f"followup-{short}.txt").read_text() == "remembered\n"

        # The control: the same branch and files, its carried state removed: the next
        # continuation has no earlier turn (and says so).
        for volume in docker_client.volumes.list(
                filters={"label": ["agentrt.role=carry", f"agentrt.repo={repo.resolve()}"]}):
            volume.remove(force=True)
        seen = len(server_requests(server, 0))
        again = f"Now the follow-up again: write followup-again-{short}.txt."
        control = subprocess.run([*cli, "continue", child["id"], "-p", again, "--repo",
                                  str(repo), "--json"],
                                 capture_output=True, text=True, timeout=400, env=env)
        assert control.returncode == 0, control.stderr[-3000:]
        (other,) = json.loads(control.stdout)["sessions"]
        assert any("continued without the state of" in w for w in other["warnings"]), other
        assert git(repo, "show", f"{branch}:followup-again-{short}.txt") == "forgot\n", \
            server_requests(server, seen)
    finally:
        for volume in docker_client.volumes.list(
                filters={"label": ["agentrt.role=carry", f"agentrt.repo={repo.resolve()}"]}):
            volume.remove(force=True)


def test_an_interactive_claude_code_in_its_tui_through_attach(
        docker_client: Any, repo: Path, tmp_path: Path, model_server: dict[str, Any],
        api_key: str, tmux: Tmux) -> None:
    """``interactive = true`` with the claude-code preset: its TUI, reached by ``agentrt
    attach`` in a tmux window, past its first-run questions (agentrt's seeded answers; the API
    key is offered to the person, who accepts it), makes its edit against the scripted model;
    ``/exit`` ends it and the work comes home, as from a batch session."""
    preset_image(docker_client, "claude-code")
    tasks = task_file(tmp_path / "tasks.toml", ["claude-code"], model_server)
    tasks.write_text(tasks.read_text().replace('agent = "claude-code"\n',
                                               'agent = "claude-code"\ninteractive = true\n'))
    cli = " ".join([sys.executable, "-m", "runtime.cli"])
    tmux.window("run", f"ANTHROPIC_API_KEY={api_key} {cli} run {tasks} --repo {repo} --json "
                       f"> {tmp_path}/report.json")
    wait_until(lambda: json.loads(subprocess.run(
        [sys.executable, "-m", "runtime.cli", "ps", "--json", "--repo", str(repo)],
        capture_output=True, text=True).stdout or "[]"), timeout=120, what="the session")
    tmux.window("tui", f"{cli} attach claude-code --repo {repo}")
    tmux.wait_for("tui", "Do you want to use this API key?", timeout=180)
    tmux("send-keys", "-t", "t:tui", "Up")
    tmux("send-keys", "-t", "t:tui", "Enter")
    screen = tmux.wait_for("tui", "Done: hello-claude.txt is written.", timeout=120)
    assert "Write(hello-claude.txt)" in screen
    # The run's live view shows the TUI's last words, not its escape sequences.
    live = tmux.wait_for("run", "claude-code", timeout=30)
    assert "[?" not in live and "\x1b" not in live, live
    tmux("send-keys", "-t", "t:tui", "/exit")
    tmux("send-keys", "-t", "t:tui", "Enter")
    tmux.wait_for("tui", "the agent has ended", timeout=120)
    tmux.wait_for("run", "EXIT=0", timeout=180)
    (session,) = json.loads((tmp_path / "report.json").read_text())["sessions"]
    assert session["status"] == "succeeded" and session["work"] == "home"
    assert git(repo, "show", f"{session['branch']}:hello-claude.txt") == "hello from claude-code\n"
    assert changed_files(repo, session["branch"]) == ["hello-claude.txt"]
