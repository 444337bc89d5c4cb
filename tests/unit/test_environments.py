"""The pure parts of environments and services: models, task-file keys and their errors,
devcontainer parsing and refusals, the cache key, the generated Dockerfile, service specs,
admission with services, replay of an environment's session."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from pydantic import ValidationError

from runtime.backends.docker.admission import plan_fits
from runtime.config import ResourceLimits, RunConfig, Task, parse_task_file
from runtime.devcontainer import parse_devcontainer, strip_jsonc
from runtime.engine.environment_build import (
    AGENT_LAYERS,
    LAYER_SCRIPT,
    SessionImageSpec,
    environment_key,
    from_images,
    layer_script,
    render_dockerfile,
    setup_steps,
)
from runtime.engine.recipes import recipe_dir
from runtime.engine.services import (
    ROOT_IMAGE_CAPS,
    TMP_MB,
    ImageFacts,
    numeric_ids,
    passwd_ids,
    service_spec,
    services_network_name,
    starts_as_root,
    wait_seconds,
)
from runtime.environments import Environment, Healthcheck, Service
from runtime.errors import ConfigError
from runtime.models import Manifest
from runtime.run.environments import agent_layer_of


def load(raw: dict[str, Any]) -> Any:
    return parse_task_file({"tasks": [{"id": "t", "command": ["true"]}], **raw}, "tasks.toml")


# -- models and the task file ------------------------------------------------------------------

@pytest.mark.parametrize("fields", [{}, {"image": "a", "dockerfile": "Dockerfile"},
                                    {"dockerfile": "D", "devcontainer": "d.json"}])
def test_environment_needs_exactly_one_source(fields: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="exactly one of image, dockerfile or devcontainer"):
        Environment(**fields)


@pytest.mark.parametrize("path", ["/etc/Dockerfile", "../x/Dockerfile", "a/../../b", ""])
def test_environment_paths_stay_in_the_repository(path: str) -> None:
    with pytest.raises(ValidationError):
        Environment(dockerfile=path)
    with pytest.raises(ValidationError):
        Environment(image="x", files=[path])


def test_environment_refusals_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"\[run\]: field environment: .*exactly one"):
        load({"run": {"environment": {"setup": ["true"]}}})
    with pytest.raises(ConfigError, match=r"field environment.env: .*AGENT_"):
        load({"run": {"environment": {"image": "x", "env": {"AGENT_X": "1"}}}})
    with pytest.raises(ConfigError, match=r"field environment.features: unknown key"):
        load({"run": {"environment": {"image": "x", "features": {}}}})
    with pytest.raises(ConfigError, match="context is only used with dockerfile"):
        load({"run": {"environment": {"image": "x", "context": "."}}})
    with pytest.raises(ConfigError, match=r"task 't': field environment: give image or "):
        parse_task_file({"tasks": [{"id": "t", "command": ["true"], "image": "i",
                                    "environment": {"image": "x"}}]}, "tasks.toml")


def test_services_in_the_task_file() -> None:
    parsed = load({"run": {"services": [
        {"name": "db", "image": "postgres:16", "env": {"POSTGRES_PASSWORD": "x"},
         "healthcheck": {"cmd": ["pg_isready"], "interval": 0.5, "retries": 10},
         "memory_mb": 512, "cpu_percent": 100}]}})
    service = parsed.run.services[0]
    assert service.healthcheck is not None and service.healthcheck.retries == 10
    with pytest.raises(ConfigError, match=r"\[run\]: field services: .*duplicate service name 'db'"):
        load({"run": {"services": [{"name": "db", "image": "a"}, {"name": "db", "image": "b"}]}})
    with pytest.raises(ConfigError, match=r"field services.0.name: .*not a service name"):
        load({"run": {"services": [{"name": "Bad_Name", "image": "a"}]}})
    with pytest.raises(ConfigError, match=r"field services.0.healthcheck.cmd"):
        load({"run": {"services": [{"name": "db", "image": "a", "healthcheck": {"cmd": []}}]}})


def test_environment_for_a_task() -> None:
    run_env, own = Environment(image="run"), Environment(image="own")
    config = RunConfig(environment=run_env)
    assert config.environment_for(Task(id="a", command=["x"])) == run_env
    assert config.environment_for(Task(id="b", command=["x"], environment=own)) == own
    assert config.environment_for(Task(id="c", command=["x"], image="other")) is None
    assert agent_layer_of(Task(id="d", agent="claude-code")) == "claude-code"
    assert agent_layer_of(Task(id="e", agent="claude-code", command=["x"])) is None
    assert agent_layer_of(Task(id="f", agent="shell")) is None


# -- devcontainer.json -------------------------------------------------------------------------

def test_devcontainer_common_subset() -> None:
    text = """{
      // comment with "quotes" and a , before }
      "name": "x", /* block */
      "build": {"dockerfile": "Dockerfile", "context": "..", "args": {"V": "1"},},
      "containerEnv": {"A": "http://b//c"},
      "postCreateCommand": "pip install -r requirements.txt",
    }"""
    spec = parse_devcontainer(text, ".devcontainer/devcontainer.json")
    assert spec.dockerfile == ".devcontainer/Dockerfile" and spec.context == "."
    assert spec.args == {"V": "1"} and spec.env == {"A": "http://b//c"}
    assert spec.post_create == ("/bin/sh", "-c", "pip install -r requirements.txt")
    listed = parse_devcontainer('{"image": "img", "postCreateCommand": ["make", "deps"]}',
                                "devcontainer.json")
    assert listed.image == "img" and listed.post_create == ("make", "deps")


@pytest.mark.parametrize(("text", "key"), [
    ('{"image": "x", "features": {"ghcr.io/devcontainers/features/node:1": {}}}', "features"),
    ('{"image": "x", "mounts": []}', "mounts"),
    ('{"image": "x", "postStartCommand": "x"}', "postStartCommand"),
    ('{"build": {"dockerfile": "D", "target": "dev"}}', "build.target"),
    ('{"image": "x", "postCreateCommand": {"a": "b"}}', "postCreateCommand"),
    ('{"build": {"dockerfile": "../../D"}}', "build.dockerfile"),
])
def test_devcontainer_refusals_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"key {key}:"):
        parse_devcontainer(text, ".devcontainer/devcontainer.json")


def test_devcontainer_needs_one_source_and_valid_json() -> None:
    with pytest.raises(ConfigError, match="exactly one of image or build.dockerfile"):
        parse_devcontainer("{}", "d.json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        parse_devcontainer("{", "d.json")
    assert json.loads(strip_jsonc('{"a": "//x", "b": [1, 2,],}')) == {"a": "//x", "b": [1, 2]}


# -- the cache key and the generated Dockerfile -----------------------------------------------

def test_key_changes_with_every_input_and_only_then() -> None:
    parts: dict[str, Any] = {"base": "sha256:1", "setup": ["a"], "env": {}, "files": {},
                             "agent": None, "post_create": None}
    key = environment_key(parts)
    assert key == environment_key(dict(reversed(list(parts.items()))))
    for change in ({"base": "sha256:2"}, {"setup": ["a", "b"]}, {"env": {"X": "1"}},
                   {"files": {"f": "oid"}}, {"agent": "codex"}, {"cli": "sha256:3"}):
        assert environment_key({**parts, **change}) != key


def test_layers_in_order_base_setup_cli_agentrt() -> None:
    spec = SessionImageSpec(setup=setup_steps(["apt-get install -y jq"], ("make", "deps")),
                            env={"A": 'say "$HOME" \\'}, has_files=True, agent="claude-code")
    text = render_dockerfile("sha256:base", spec, "sha256:cli")
    lines = text.splitlines()
    order = [next(i for i, line in enumerate(lines) if line.startswith(prefix))
             for prefix in ("FROM sha256:cli AS agentrt-cli", "FROM sha256:base", "RUN ",
                            "COPY --from=agentrt-cli /usr/local/bin/claude",
                            "COPY agentrt-layer.sh", "ENV ", "USER 1000:1000")]
    assert order == sorted(order)
    run = json.loads(lines[order[2]][4:])
    assert run[:2] == ["/bin/sh", "-c"] and run[2].endswith("apt-get install -y jq")
    assert 'exec \\"$@\\"", "agentrt-setup", "make", "deps"]' in text
    assert 'ENV A="say \\"\\$HOME\\" \\\\"' in text
    assert "/usr/local/bin/claude --version" in text  # it runs here, or exit 97
    assert "ENTRYPOINT []" in text and "COPY setup-files/ /tmp/agentrt-setup/" in text


def test_no_cli_layer_for_a_command_task() -> None:
    text = render_dockerfile("sha256:base", SessionImageSpec(), None)
    assert "agentrt-cli" not in text and "setup" not in text.lower().replace(
        "agentrt-layer", "")
    assert "exit 97" in LAYER_SCRIPT and "apk add" in LAYER_SCRIPT


def test_from_images_of_a_dockerfile() -> None:
    text = ("ARG BASE=debian:bookworm\nFROM ${BASE} AS build\nRUN x\n"
            "FROM --platform=linux/amd64 build AS again\nFROM scratch\n"
            "FROM python:3.12 \\\n  AS final\n")
    assert from_images(text, {}) == ["debian:bookworm", "python:3.12"]
    assert from_images(text, {"BASE": "alpine"}) == ["alpine", "python:3.12"]


# -- services ----------------------------------------------------------------------------------

def test_service_spec() -> None:
    service = Service(name="web", image="img", command=["serve"], env={"A": "1"},
                      healthcheck=Healthcheck(cmd=["check"], interval=0.5, retries=4),
                      memory_mb=64, cpu_percent=25)
    spec = service_spec(service, "task-abc", services_network_name("task-abc"),
                        {"agentrt.run": "r1"})
    assert spec["network"] == "agentrt-svc-task-abc" and spec["hostname"] == "web"
    assert spec["mem_limit"] == spec["memswap_limit"] == 64 * 1024 * 1024
    assert spec["nano_cpus"] == 250_000_000 and spec["cap_drop"] == ["ALL"]
    assert spec["healthcheck"] == {"test": ["CMD", "check"], "interval": 500_000_000,
                                   "timeout": 1_000_000_000, "retries": 4}
    labels = spec["labels"]
    assert isinstance(labels, dict) and labels["agentrt.role"] == "service"
    assert "agentrt.session" not in labels  # never mistaken for the session's container
    assert wait_seconds(service) == pytest.approx(0.5 * 6 + 5)


def test_service_spec_has_a_read_only_root_sized_tmpfs_and_caps_by_image_user() -> None:
    service = Service(name="db", image="img", disk_mb=32, writable=["/srv/data"])
    root = service_spec(service, "s", "n", {}, ImageFacts(user="", volumes=("/var/lib/db",)))
    assert root["read_only"] is True and root["cap_add"] == ROOT_IMAGE_CAPS
    assert root["tmpfs"] == {"/tmp": f"size={TMP_MB}m,mode=1777",
                             "/var/lib/db": "size=32m,mode=0755,uid=0,gid=0",
                             "/srv/data": "size=32m,mode=0755,uid=0,gid=0"}
    user = service_spec(service, "s", "n", {}, ImageFacts(user="postgres", uid=100, gid=102))
    assert user["cap_add"] == [] and user["cap_drop"] == ["ALL"]
    assert user["tmpfs"]["/srv/data"] == "size=32m,mode=0755,uid=100,gid=102"  # type: ignore[index]
    assert [starts_as_root(u) for u in ("", "root", "0", "0:0", "root:x", "1000", "agent")] \
        == [True, True, True, True, True, False, False]


def test_an_image_user_resolves_to_its_ids() -> None:
    passwd = "root:x:0:0::/root:/bin/sh\npostgres:x:100:102::/var/lib/postgresql:/bin/sh\n"
    group = "root:x:0:\nssl-cert:x:101:postgres\n"
    assert [numeric_ids(u) for u in ("", "root", "0:0", "1000", "1000:5", "pg")] == [
        (0, 0), (0, 0), (0, 0), (1000, 1000), (1000, 5), None]
    assert passwd_ids("postgres", passwd, group) == (100, 102)
    assert passwd_ids("100:ssl-cert", passwd, group) == (100, 101)
    assert passwd_ids("postgres:7", passwd, group) == (100, 7)
    assert passwd_ids("nobody", passwd, group) is None
    assert passwd_ids("postgres:nogroup", passwd, group) is None


@pytest.mark.parametrize("path", ["relative", "/", "/a/../b", "/a,b", "/a:b", "/a//b"])
def test_a_service_writable_path_must_be_a_plain_absolute_path(path: str) -> None:
    with pytest.raises(ValidationError, match="writable"):
        Service(name="db", image="img", writable=[path])


def test_admission_counts_services() -> None:
    tasks = [Task(id="a", command=["x"]), Task(id="b", command=["x"])]
    limits = ResourceLimits(memory_mb=512)
    alone = RunConfig(resource_limits=limits)
    with_db = RunConfig(resource_limits=limits,
                        services=[Service(name="db", image="x", memory_mb=512)])
    memory = 512 * 1024 * 1024 + 2 * 512 * 1024 * 1024 + 100 * 1024 * 1024
    assert plan_fits(alone, tasks, 4, memory) is None
    assert "need 2048 MB" in (plan_fits(with_db, tasks, 4, memory) or "")


def test_replay_uses_the_recorded_environment_image() -> None:
    from runtime.run.replay import replay_config
    task = Task(id="t", command=["x"], environment=Environment(dockerfile="Dockerfile"))
    manifest = Manifest(image="agentrt/env:abc", image_digest="sha256:env", base_commit="c",
                        task=task.model_dump(mode="json"), limits=ResourceLimits(),
                        network="none", runtime="runc", database_strategy="per_agent",
                        environment_key="abc",
                        services=[{"name": "db", "image": "x"}])
    row: Any = type("Row", (), {"manifest": manifest, "id": "t-1"})()
    config, replayed = replay_config(row)
    assert replayed.environment is None and replayed.image == "sha256:env"
    assert config.image == "sha256:env" and config.services[0].name == "db"


def _final_stage_paths(dockerfile: str) -> set[str]:
    """Paths the recipe's final stage puts in place: COPY destinations and ``ln -s`` links."""
    final = re.sub(r"\\\n", " ", dockerfile).split("\nFROM ")[-1]
    found = set()
    for line in final.splitlines():
        words = line.split()
        if words[:1] == ["COPY"]:
            found.add(words[-1])
        found.update(re.findall(r"ln -s \S+ (/[^\s;]+)", line))
    return found


@pytest.mark.parametrize("agent", sorted(AGENT_LAYERS))
def test_each_agent_layer_copies_what_its_recipe_installs(agent: str) -> None:
    """The layer's paths and links are where images/<agent> puts the CLI: an environment made
    from the real preset image finds it (a fake laid out otherwise would not prove that)."""
    layer = AGENT_LAYERS[agent]
    installed = _final_stage_paths((recipe_dir(agent) / "Dockerfile").read_text())
    for path in layer.paths:
        assert path in installed, (agent, path, installed)
    for link, _target in layer.links + layer.links_if_missing:
        assert link in installed, (agent, link, installed)


def test_codex_needs_no_node_and_its_layer_links_ripgrep_only_where_missing() -> None:
    layer = AGENT_LAYERS["codex"]
    assert layer.needs == ()
    script = layer_script(layer)
    assert "ln -sf /opt/codex/bin/codex /usr/local/bin/codex" in script
    assert "command -v rg" in script and "ln -s /opt/codex/codex-path/rg" in script
    assert "AGENTRT_NEEDS='' " in render_dockerfile("sha256:b", SessionImageSpec(agent="codex"),
                                                    "sha256:cli")
