"""Building a session image from a project's environment, cached by the hash of its inputs.

Layers, in this order (each step its own layer, so Docker's cache reuses what did not change):

1. the **base**: a local image, or the repository's Dockerfile built from its exported context;
2. the **setup** commands (and a devcontainer's ``postCreateCommand``), as root, in
   ``/tmp/agentrt-setup`` holding the environment's ``files``;
3. the **agent CLI** of a preset task, copied from the preset's image (``COPY --from``) where
   its recipe installs it (:data:`AGENT_LAYERS`; an image laid out otherwise is refused before
   the build), its version label (``agentrt.cli.version``) carried onto the session image;
4. **agentrt's needs**: git and ``timeout`` (installed with apt-get or apk when missing), the
   unprivileged user uid 1000, ``/workspace``; then ``env``, an empty entry point, user 1000.

The image is tagged ``agentrt/env:<key>``, where the key (:func:`environment_key`) hashes the
base image's id, the Dockerfile, the context's git tree id, the build arguments, the setup
commands, the files' git object ids, ``env``, the agent layer (preset, CLI image id) and the
layer script: a second build with nothing changed finds the tag and builds nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from runtime.engine.discovery import engine_errors
from runtime.engine.images import (
    LABEL_CLI_VERSION,
    LABEL_IMAGE,
    LABEL_RECIPE,
    cli_version,
    get_image,
)
from runtime.errors import ConfigError
from runtime.text import strip_ansi

LogFn = Callable[[str], None]

ENV_REPO = "agentrt/env"
ENV_IMAGE_NAME = "env"  # the agentrt.image label of environment images
LABEL_ENV = "agentrt.env"  # the key
LABEL_ENV_SOURCE = "agentrt.env.source"
LABEL_ENV_AGENT = "agentrt.env.agent"
KEY_LENGTH = 24
SETUP_DIR = "/tmp/agentrt-setup"
BUILD_CA = "agentrt-build-ca.crt"
# Each setup step trusts the build CA bundle (a TLS-intercepting proxy's) for pip and npm.
SETUP_PRELUDE = (f"if [ -s /tmp/{BUILD_CA} ]; then export PIP_CERT=/tmp/{BUILD_CA} "
                 f"NODE_EXTRA_CA_CERTS=/tmp/{BUILD_CA}; fi; ")
TAIL_LINES = 15
# The classic builder's own lines, left out of a failure's last lines.
_BUILDER_NOISE = re.compile(r"^\s*(---> |Removing intermediate container )")

# The agentrt layer: what every session needs, added where missing. Exit 97: cannot be added.
LAYER_SCRIPT = r"""set -eu
have() { command -v "$1" >/dev/null 2>&1; }
missing=""
have git || missing="$missing git"
have timeout || missing="$missing coreutils"
for need in $AGENTRT_NEEDS; do
  case "$need" in
    node) have node || missing="$missing nodejs" ;;
    python3) have python3 || missing="$missing python3" ;;
  esac
done
if [ -n "$missing" ]; then
  if have apt-get; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
    rm -rf /var/lib/apt/lists/*
  elif have apk; then
    apk add --no-cache $missing
  else
    echo "agentrt: this environment lacks$missing and has neither apt-get nor apk to add it;" \
      "a session needs git, timeout (coreutils) and sh: add them to the image" >&2
    exit 97
  fi
fi
for tool in git timeout; do
  have "$tool" || { echo "agentrt: $tool is still missing after installing it" >&2; exit 97; }
done
found=""
while IFS=: read -r _name _pw uid _rest; do [ "$uid" = 1000 ] && found=1; done < /etc/passwd
if [ -z "$found" ]; then
  name=agent
  while IFS=: read -r n _rest; do [ "$n" = agent ] && name=agentrt; done < /etc/passwd
  echo "$name:x:1000:1000:agentrt agent:/home/$name:/bin/sh" >> /etc/passwd
  gfound=""
  while IFS=: read -r _n _pw gid _rest; do [ "$gid" = 1000 ] && gfound=1; done < /etc/group
  [ -n "$gfound" ] || echo "$name:x:1000:" >> /etc/group
  mkdir -p "/home/$name" && chown 1000:1000 "/home/$name"
fi
mkdir -p /workspace && chown 1000:1000 /workspace
"""


@dataclass(frozen=True)
class AgentLayer:
    """How a preset's CLI is copied from its image (as its recipe in ``images/<preset>`` lays
    it out): the paths copied, the links made on PATH, what it needs at run time, and a check
    that it can run here. ``tests/unit`` holds each entry against its recipe's final stage."""

    paths: tuple[str, ...]
    links: tuple[tuple[str, str], ...] = ()  # (link on PATH, target): replaced if there
    links_if_missing: tuple[tuple[str, str], ...] = ()  # made only where nothing is on PATH
    needs: tuple[str, ...] = ()
    check: str = ""


def _runs_here(what: str, command: str, why: str) -> str:
    return (f"{command} >/dev/null 2>&1 || {{ echo 'agentrt: {what} cannot run in this "
            f"environment: {why}' >&2; exit 97; }}")


AGENT_LAYERS: dict[str, AgentLayer] = {
    # Claude Code 2.x: one native (glibc) executable.
    "claude-code": AgentLayer(
        ("/usr/local/bin/claude",),
        check=_runs_here("claude-code", "/usr/local/bin/claude --version",
                         "its native binary needs glibc (a Debian- or Ubuntu-like image)")),
    # Codex: its static (musl) binary, helpers and ripgrep; no Node.js.
    "codex": AgentLayer(("/opt/codex",), links=(("/usr/local/bin/codex", "/opt/codex/bin/codex"),),
                        links_if_missing=(("/usr/local/bin/rg", "/opt/codex/codex-path/rg"),)),
    # aider's virtual environment uses the python3 it was built with (Debian bookworm's).
    "aider": AgentLayer(("/opt/aider",), links=(("/usr/local/bin/aider", "/opt/aider/bin/aider"),),
                        needs=("python3",),
                        check=_runs_here("aider", "/opt/aider/bin/python -c 'import aider'",
                                         "its virtual environment needs the python3 of "
                                         "agentrt/aider (Debian bookworm, 3.11) at "
                                         "/usr/bin/python3")),
}


def layer_script(layer: AgentLayer) -> str:
    """The shell that links an agent layer's CLI onto PATH and checks it runs. Pure."""
    steps = ["mkdir -p /usr/local/bin"]
    steps += [f"ln -sf {target} {link}" for link, target in layer.links]
    steps += [f"{{ [ -e {link} ] || command -v {link.rsplit('/', 1)[1]} >/dev/null 2>&1 "
              f"|| ln -s {target} {link}; }}" for link, target in layer.links_if_missing]
    if layer.check:
        steps.append(f"{{ {layer.check}; }}")
    return " && ".join(steps)


def layer_identity(agent: str) -> dict[str, Any]:
    """What of an agent layer goes into an environment's key (a changed layout rebuilds)."""
    layer = AGENT_LAYERS[agent]
    return {"paths": layer.paths, "links": layer.links, "links_if_missing":
            layer.links_if_missing, "needs": layer.needs, "check": layer.check}


@dataclass(frozen=True)
class SessionImageSpec:
    """Everything the session image is made of (besides the base image itself)."""

    setup: tuple[tuple[str, ...], ...] = ()  # argv lists, run in order as root
    env: Mapping[str, str] = field(default_factory=dict)
    has_files: bool = False
    agent: str | None = None  # a preset with an entry in AGENT_LAYERS


def setup_steps(setup: Sequence[str], post_create: Sequence[str] | None) -> tuple[
        tuple[str, ...], ...]:
    """The setup commands as argv lists: each string through ``/bin/sh -c``, then the
    devcontainer's postCreateCommand."""
    steps: list[tuple[str, ...]] = [("/bin/sh", "-c", command) for command in setup]
    if post_create:
        steps.append(tuple(post_create))
    return tuple(steps)


def environment_key(parts: Mapping[str, Any]) -> str:
    """The cache key of an environment image: sha256 of its inputs as canonical JSON, with
    the agentrt layer's script; the first KEY_LENGTH hex digits. Pure."""
    blob = json.dumps({**parts, "layer": LAYER_SCRIPT}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]


def env_ref(key: str) -> str:
    """The tag of the environment image with ``key``."""
    return f"{ENV_REPO}:{key}"


def _env_value(value: str) -> str:
    # A Dockerfile ENV value in double quotes: backslash, quote and $ (substitution) escaped.
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _substitute(text: str, values: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        return values.get(match[1], "")

    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", value, text)


def from_images(dockerfile: str, args: Mapping[str, str]) -> list[str]:
    """The images a Dockerfile's ``FROM`` lines name (stage names and ``scratch`` left out;
    ``$ARG``/``${ARG}`` replaced by build arguments or the ARG defaults before them). Pure."""
    defaults: dict[str, str] = {}
    stages: set[str] = set()
    found: list[str] = []
    text = re.sub(r"\\\r?\n", " ", dockerfile)
    for raw in text.splitlines():
        line = raw.strip()
        word = line.split(None, 1)[0].upper() if line and not line.startswith("#") else ""
        if word == "ARG" and not found:
            name, _, value = line.split(None, 1)[1].partition("=")
            defaults[name.strip()] = value.strip().strip('"')
        elif word == "FROM":
            tokens = [t for t in line.split()[1:] if not t.startswith("--")]
            if not tokens:
                continue
            image = _substitute(tokens[0], {**defaults, **args})
            if len(tokens) >= 3 and tokens[1].upper() == "AS":
                stages.add(tokens[2].lower())
            if image.lower() not in stages and image != "scratch":
                found.append(image)
    return found


def render_dockerfile(base: str, spec: SessionImageSpec, cli_image: str | None) -> str:
    """The Dockerfile of the session image on top of ``base`` (an image id). Pure."""
    layer = AGENT_LAYERS.get(spec.agent or "")
    lines = ["# Generated by agentrt (runtime/engine/environment_build.py)."]
    if layer is not None and cli_image:
        lines.append(f"FROM {cli_image} AS agentrt-cli")
    lines += [f"FROM {base}", "USER root"]
    if spec.setup:
        lines.append(f"COPY {BUILD_CA} /tmp/{BUILD_CA}")
        if spec.has_files:
            lines.append(f"COPY setup-files/ {SETUP_DIR}/")
        lines.append(f"WORKDIR {SETUP_DIR}")
        for argv in spec.setup:
            if argv[:2] == ("/bin/sh", "-c") and len(argv) == 3:
                run = ["/bin/sh", "-c", SETUP_PRELUDE + argv[2]]
            else:
                run = ["/bin/sh", "-c", SETUP_PRELUDE + 'exec "$@"', "agentrt-setup", *argv]
            lines.append("RUN " + json.dumps(run))
        lines += ["WORKDIR /", "RUN " + json.dumps(
            ["/bin/sh", "-c", f"rm -rf {SETUP_DIR} /tmp/{BUILD_CA}"])]
    needs = ""
    if layer is not None and cli_image:
        for path in layer.paths:
            lines.append(f"COPY --from=agentrt-cli {path} {path}")
        needs = " ".join(layer.needs)
    lines.append("COPY agentrt-layer.sh /tmp/agentrt-layer.sh")
    script = f"AGENTRT_NEEDS='{needs}' /bin/sh /tmp/agentrt-layer.sh"
    if layer is not None and cli_image:
        script += " && " + layer_script(layer)
    lines.append("RUN " + json.dumps(["/bin/sh", "-c",
                                      script + " && rm -f /tmp/agentrt-layer.sh"]))
    if spec.env:
        lines.append("ENV " + " ".join(f"{k}={_env_value(v)}"
                                       for k, v in sorted(spec.env.items())))
    lines += ["ENTRYPOINT []", 'CMD ["/bin/sh"]', "WORKDIR /workspace", "USER 1000:1000"]
    return "\n".join(lines) + "\n"


class EnvironmentBuildError(ConfigError):
    """An environment's image could not be built (the failing step and its last lines)."""


_lock = threading.Lock()


def find_env_image(client: docker.DockerClient, key: str) -> Any | None:
    """The environment image of ``key``, if it is on the engine (tag and label agree)."""
    image = get_image(client, env_ref(key))
    return image if image is not None and (image.labels or {}).get(LABEL_ENV) == key else None


def has_paths(client: docker.DockerClient, image_id: str, paths: Sequence[str]) -> list[str]:
    """Those of ``paths`` that exist in the image (asked of a created, never started,
    container, so an image without any shell can be asked too). Each path is only stat'ed
    (``HEAD`` of the container's archive): a large file is never streamed."""
    found = []
    with engine_errors(f"look into {image_id[:19]}"):
        container = client.api.create_container(image_id, command=["/bin/sh"],
                                                network_disabled=True)
        try:
            url = client.api._url("/containers/{0}/archive", container["Id"])
            for path in paths:
                response = client.api.head(url, params={"path": path}, timeout=60)
                if response.status_code == 200:
                    found.append(path)
                elif response.status_code != 404:
                    client.api._raise_for_status(response)
        finally:
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_container(container["Id"], force=True)
    return found


def has_shell(client: docker.DockerClient, image_id: str) -> bool:
    """Whether ``/bin/sh`` exists in the image."""
    return bool(has_paths(client, image_id, ["/bin/sh"]))


def check_cli_image(client: docker.DockerClient, agent: str, cli_image: str, what: str) -> None:
    """ConfigError unless the CLI image holds every path its agent layer copies (the layout of
    ``images/<agent>``): a differently laid-out image is refused before anything is built."""
    layer = AGENT_LAYERS[agent]
    missing = [p for p in layer.paths if p not in has_paths(client, cli_image, layer.paths)]
    if missing:
        raise ConfigError(
            f"{what}: the {agent} CLI image ({cli_image[:19]}) has no {', '.join(missing)}: "
            f"agentrt copies the CLI from where its recipe (images/{agent}) installs it; "
            f"rebuild it with `agentrt images build {agent}`, or give an agent_image laid out "
            "the same way")


def stream_build(client: docker.DockerClient, context: Path, dockerfile: str,
                 tag: str | None, buildargs: Mapping[str, str], labels: Mapping[str, str],
                 what: str, emit: LogFn, network_mode: str | None = None) -> str:
    """``docker build`` with each step shown; return the image id. On failure raise
    EnvironmentBuildError naming ``what``, the failing step and its last lines.
    ``network_mode``: the ``RUN`` steps' network (``"none"``: no network at all)."""
    step, image_id = "", ""
    tail: list[str] = []
    with engine_errors(f"build {what}"):
        stream = client.api.build(path=str(context), dockerfile=dockerfile, tag=tag,
                                  buildargs=dict(buildargs), labels=dict(labels), pull=False,
                                  rm=True, forcerm=True, decode=True,
                                  network_mode=network_mode)
        for chunk in stream:
            # The classic builder colours a step's stderr (ESC [91m): dropped, not shown.
            text = strip_ansi(chunk.get("stream") or chunk.get("status") or "").rstrip()
            for line in text.splitlines():
                if line.startswith("Step "):
                    step, tail = line, []
                elif line.strip() and not _BUILDER_NOISE.match(line):
                    tail = (tail + [line])[-TAIL_LINES:]
                emit(line)
            aux = chunk.get("aux")
            if isinstance(aux, dict) and aux.get("ID"):
                image_id = str(aux["ID"])
            if "error" in chunk:
                last = "\n".join(f"  {line}" for line in tail)
                raise EnvironmentBuildError(
                    f"{what}: the build failed at {step or 'its start'}: "
                    f"{strip_ansi(chunk['error']).strip()}" + (f"\n{last}" if last else ""))
    if not image_id:
        found = get_image(client, tag) if tag else None
        image_id = str(found.id) if found is not None else ""
    if not image_id:
        raise EnvironmentBuildError(f"{what}: the build reported no image")
    return image_id


@dataclass(frozen=True)
class BuiltEnvironment:
    """An environment image on the engine."""

    key: str
    ref: str
    id: str
    rebuilt: bool
    seconds: float


def build_session_image(client: docker.DockerClient, key: str, base_id: str,
                        spec: SessionImageSpec, cli_image: str | None, workdir: Path,
                        source: str, what: str, ca_bundle: Path | None,
                        emit: LogFn) -> BuiltEnvironment:
    """Build ``agentrt/env:<key>`` on ``base_id`` in ``workdir`` (which already holds
    ``setup-files/`` when ``spec.has_files``), unless it is there already."""
    started = time.monotonic()
    with _lock:
        found = find_env_image(client, key)
        if found is not None:
            return BuiltEnvironment(key, env_ref(key), str(found.id), False, 0.0)
        if not has_shell(client, base_id):
            raise ConfigError(f"{what}: the image has no /bin/sh: a session needs a POSIX "
                              "shell (and git, timeout); start from an image that has one")
        labels = {LABEL_IMAGE: ENV_IMAGE_NAME, LABEL_RECIPE: key, LABEL_ENV: key,
                  LABEL_ENV_SOURCE: source, LABEL_ENV_AGENT: spec.agent or ""}
        if spec.agent in AGENT_LAYERS and cli_image:
            check_cli_image(client, spec.agent, cli_image, what)
            version = cli_version(client, cli_image)
            if version:  # sessions report the CLI version from their image's label
                labels[LABEL_CLI_VERSION] = version
        (workdir / "Dockerfile").write_text(render_dockerfile(base_id, spec, cli_image))
        (workdir / "agentrt-layer.sh").write_text(LAYER_SCRIPT)
        (workdir / BUILD_CA).write_bytes(ca_bundle.read_bytes() if ca_bundle else b"")
        emit(f"building {env_ref(key)} for {what}")
        image_id = stream_build(client, workdir, "Dockerfile", env_ref(key), {}, labels, what,
                                emit)
    seconds = time.monotonic() - started
    emit(f"built {env_ref(key)} {image_id[:19]} in {seconds:.0f}s")
    return BuiltEnvironment(key, env_ref(key), image_id, True, seconds)
