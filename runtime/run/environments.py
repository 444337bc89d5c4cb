"""The tasks' environments, built in preflight: each distinct (environment, agent CLI) once.

For every task whose environment (its own, else the run's) is set, the session image is
found by its key or built (:mod:`runtime.engine.environment_build`) from the repository's
committed tree at the base commit (:mod:`runtime.git.environment_source`): the Dockerfile
and its context, a devcontainer.json, the setup's ``files``. A build failure is an
:class:`~runtime.engine.environment_build.EnvironmentBuildError` (a ConfigError: exit 2),
raised before any session starts.
"""

from __future__ import annotations

import posixpath
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.config import RunConfig, Task
from runtime.devcontainer import parse_devcontainer
from runtime.engine.build_context import BUILD_CA_NAME, build_ca_bundle
from runtime.engine.environment_build import (
    AGENT_LAYERS,
    ENV_IMAGE_NAME,
    LABEL_ENV_SOURCE,
    SessionImageSpec,
    build_session_image,
    env_ref,
    environment_key,
    find_env_image,
    from_images,
    layer_identity,
    setup_steps,
    stream_build,
)
from runtime.engine.images import LABEL_IMAGE, LABEL_RECIPE, get_image
from runtime.engine.types import EngineClient
from runtime.environments import Environment
from runtime.errors import ConfigError
from runtime.git.environment_source import export_paths, export_tree, object_id, read_file
from runtime.git.safe_git import MainRepo
from runtime.presets import PRESETS

LogFn = Callable[[str], None]


@dataclass(frozen=True)
class EnvImage:
    """A task's built environment: the image it runs in and the key of its inputs."""

    ref: str
    id: str
    key: str
    rebuilt: bool = False


def agent_layer_of(task: Task) -> str | None:
    """The preset whose CLI is layered into ``task``'s environment (None for a command)."""
    if task.command is None and task.agent is not None and task.agent in AGENT_LAYERS:
        return task.agent
    return None


def where_of(task: Task) -> str:
    """How errors name ``task``'s environment."""
    return (f"task {task.id!r}: field environment" if task.environment is not None
            else "[run] field environment")


def prepare_environments(client: EngineClient, repo: MainRepo, base_commit: str,
                         config: RunConfig, tasks: Sequence[Task],
                         log: LogFn | None = None) -> dict[str, EnvImage]:
    """Build (or find) the environment image of every task that has one; by task id."""
    emit: LogFn = log or (lambda _line: None)
    built: dict[tuple[str, str | None], EnvImage] = {}
    out: dict[str, EnvImage] = {}
    for task in tasks:
        env = config.environment_for(task)
        if env is None:
            continue
        agent = agent_layer_of(task)
        group = (env.model_dump_json(), agent)
        if group not in built:
            built[group] = ensure_environment(client, repo, base_commit, env, agent,
                                              where_of(task), emit)
        out[task.id] = built[group]
    return out


def _image_id(client: EngineClient, ref: str, what: str, hint: str = "") -> str:
    image = get_image(client, ref)
    if image is None:
        raise ConfigError(f"{what}: image {ref!r} not found locally ("
                          + (hint or "agentrt does not pull: `docker pull`/`docker load` it, "
                             "or build it") + ")")
    return str(image.id)


def ensure_environment(client: EngineClient, repo: MainRepo, commit: str,
                       env: Environment, agent: str | None, where: str,
                       emit: LogFn) -> EnvImage:
    """The session image of ``env`` (+ ``agent``'s CLI): found by its key, else built."""
    image, dockerfile, context, args = env.image, env.dockerfile, env.context, dict(env.args)
    variables, post_create = dict(env.env), None
    parts: dict[str, Any] = {"setup": env.setup, "agent": agent}
    if env.devcontainer:
        text = read_file(repo, commit, env.devcontainer, where)
        dev = parse_devcontainer(text, env.devcontainer, f"{where}: {env.devcontainer}")
        image, dockerfile, context, args = dev.image, dev.dockerfile, dev.context, dev.args
        variables, post_create = {**dev.env, **env.env}, dev.post_create
        parts["devcontainer"] = text
    parts.update(env=variables, post_create=post_create)
    parts["files"] = {p: object_id(repo, commit, p, f"{where}.files") for p in env.files}
    cli_id = None
    if agent is not None:
        cli_ref = env.agent_image or PRESETS[agent].image
        cli_id = _image_id(client, cli_ref, f"{where}: the {agent} CLI (agent_image)",
                           "" if env.agent_image else f"run `agentrt images build {agent}`")
        parts["cli"] = cli_id
        parts["cli_layer"] = layer_identity(agent)
    if image:
        parts["base"] = _image_id(client, image, f"{where}: image")
        dockerfile_text = ""
    else:
        assert dockerfile is not None  # the models allow nothing else
        dockerfile_text = read_file(repo, commit, dockerfile, where)
        context = context or posixpath.dirname(dockerfile) or "."
        froms = {}
        for ref in from_images(dockerfile_text, args):
            found = get_image(client, ref)
            froms[ref] = str(found.id) if found is not None else ref
        parts.update(dockerfile=dockerfile_text, context=object_id(repo, commit, context, where),
                     args=args, froms=froms)
    key = environment_key(parts)
    found = find_env_image(client, key)
    if found is not None:
        emit(f"{env_ref(key)} is up to date ({where})")
        return EnvImage(env_ref(key), str(found.id), key)
    source = (f"image {image}" if image else f"dockerfile {dockerfile}") + (
        f" (devcontainer {env.devcontainer})" if env.devcontainer else "")
    with tempfile.TemporaryDirectory(prefix="agentrt-env-") as tmp:
        work = Path(tmp) / "session"
        work.mkdir()
        if env.files:
            export_paths(repo, commit, env.files, work / "setup-files", f"{where}.files")
        if image:
            base_id = parts["base"]
        else:
            base_id = _build_base(client, repo, commit, Path(tmp), dockerfile_text,
                                  str(dockerfile), str(context), args, key, where, emit,
                                  network=env.build_network)
        spec = SessionImageSpec(setup=setup_steps(env.setup, post_create), env=variables,
                                has_files=bool(env.files), agent=agent)
        result = build_session_image(client, key, base_id, spec, cli_id, work, source,
                                     where, build_ca_bundle(), emit)
    return EnvImage(result.ref, result.id, key, result.rebuilt)


def _build_base(client: EngineClient, repo: MainRepo, commit: str, tmp: Path,
                dockerfile_text: str, dockerfile: str, context: str, args: dict[str, str],
                key: str, where: str, emit: LogFn, network: bool = False) -> str:
    """Build the repository's Dockerfile from its context exported at ``commit``; its id.

    Its ``RUN`` steps get no network unless ``network`` (the environment's
    ``build_network``): the Dockerfile is the repository's, which merged agent work can change,
    and it builds as root."""
    context_dir = tmp / "context"
    export_tree(repo, commit, context, context_dir, where)
    ca = context_dir / BUILD_CA_NAME
    if not ca.exists():
        bundle = build_ca_bundle()
        ca.write_bytes(bundle.read_bytes() if bundle else b"")
    outside = tmp / "Dockerfile.user"
    outside.write_text(dockerfile_text)
    emit(f"building {dockerfile} (context {context} at {commit[:10]})")
    return stream_build(client, context_dir, str(outside), None, args,
                        {LABEL_IMAGE: ENV_IMAGE_NAME, LABEL_RECIPE: key,
                         LABEL_ENV_SOURCE: f"dockerfile {dockerfile}"},
                        f"{where}: {dockerfile}", emit,
                        network_mode=None if network else "none")
