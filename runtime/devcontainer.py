"""The common subset of ``devcontainer.json`` that agentrt builds from (pure).

Understood: ``image``; ``build.dockerfile``, ``build.context``, ``build.args``;
``containerEnv``; ``postCreateCommand`` as a string (run by ``sh -c``) or a list (an argv).
Ignored because they change nothing in the image: ``name``, ``$schema``, ``customizations``,
``forwardPorts``. Anything else (``features`` first of all, ``mounts``, ``runArgs``,
``dockerComposeFile``, lifecycle commands other than ``postCreateCommand``...) is refused with
a :class:`~runtime.errors.ConfigError` naming the key, rather than silently built into
something else than the file says.

The file is JSON with comments (``//`` and ``/* */``) and trailing commas, as editors write it.
Paths in ``build`` are relative to the file's own directory; the result holds them relative to
the repository's root.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from runtime.environments import check_env_table, repo_path_problem
from runtime.errors import ConfigError

IGNORED_KEYS = frozenset({"name", "$schema", "customizations", "forwardPorts"})
BUILD_KEYS = frozenset({"dockerfile", "context", "args"})
_STRING_RE = re.compile(r'"(?:[^"\\\n]|\\.)*"')


@dataclass(frozen=True)
class DevcontainerSpec:
    """What a devcontainer.json asks for, with paths from the repository's root."""

    image: str | None = None
    dockerfile: str | None = None
    context: str | None = None
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    # postCreateCommand as an argv: a string becomes ["/bin/sh", "-c", string].
    post_create: tuple[str, ...] | None = None


def strip_jsonc(text: str) -> str:
    """``text`` without comments and trailing commas (strings are left untouched)."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            match = _STRING_RE.match(text, i)
            end = match.end() if match else n
            out.append(text[i:end])
            i = end
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(ch)
            i += 1
    joined = "".join(out)
    # A comma before a closing bracket (outside strings) is dropped.
    return _drop_trailing_commas(joined)


def _drop_trailing_commas(text: str) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            match = _STRING_RE.match(text, i)
            end = match.end() if match else n
            out.append(text[i:end])
            i = end
            continue
        if ch == ",":
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j < n and text[j] in "]}":
                i += 1
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def _in_repo(base_dir: str, value: Any, key: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: key {key}: must be a non-empty string")
    joined = posixpath.normpath(posixpath.join(base_dir, value)) if base_dir else \
        posixpath.normpath(value)
    if joined == ".":
        return "."
    if problem := repo_path_problem(joined):
        raise ConfigError(f"{where}: key {key}: {value!r} {problem}")
    return joined


def _string_map(value: Any, key: str, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f"{where}: key {key}: must be an object of strings")
    return {str(k): v for k, v in value.items()}


def parse_devcontainer(text: str, path: str, where: str | None = None) -> DevcontainerSpec:
    """Parse the devcontainer.json at repository path ``path`` whose content is ``text``.

    ConfigError (naming ``where``, default the path, and the key) for what agentrt does not
    build: features and every other key outside the common subset.
    """
    where = where or path
    try:
        data = json.loads(strip_jsonc(text))
    except ValueError as exc:
        raise ConfigError(f"{where}: not valid JSON (with comments): {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a JSON object")
    base_dir = posixpath.dirname(path)
    for key in data:
        if key in IGNORED_KEYS or key in ("image", "build", "containerEnv",
                                          "postCreateCommand"):
            continue
        hint = (" (devcontainer features are not supported: install the tools in the "
                "Dockerfile or with postCreateCommand / setup instead)" if key == "features"
                else "")
        raise ConfigError(f"{where}: key {key}: not supported by agentrt{hint}; the "
                          "supported keys are image, build.dockerfile, build.context, "
                          "build.args, containerEnv and postCreateCommand")
    image = data.get("image")
    build = data.get("build")
    if (image is None) == (build is None):
        raise ConfigError(f"{where}: give exactly one of image or build.dockerfile")
    spec_image = dockerfile = context = None
    args: dict[str, str] = {}
    if image is not None:
        if not isinstance(image, str) or not image.strip():
            raise ConfigError(f"{where}: key image: must be an image reference")
        spec_image = image
    else:
        if not isinstance(build, dict):
            raise ConfigError(f"{where}: key build: must be an object")
        for key in build:
            if key not in BUILD_KEYS:
                raise ConfigError(f"{where}: key build.{key}: not supported by agentrt (only "
                                  "build.dockerfile, build.context and build.args)")
        if "dockerfile" not in build:
            raise ConfigError(f"{where}: key build.dockerfile: required with build")
        dockerfile = _in_repo(base_dir, build["dockerfile"], "build.dockerfile", where)
        context = _in_repo(base_dir, build.get("context", "."), "build.context", where)
        args = _string_map(build.get("args", {}), "build.args", where)
    env = _string_map(data.get("containerEnv", {}), "containerEnv", where)
    try:
        check_env_table(env)
    except ValueError as exc:
        raise ConfigError(f"{where}: key containerEnv: {exc}") from None
    return DevcontainerSpec(image=spec_image, dockerfile=dockerfile, context=context,
                            args=args, env=env,
                            post_create=_post_create(data.get("postCreateCommand"), where))


def _post_create(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip():
        return ("/bin/sh", "-c", value)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ConfigError(f"{where}: key postCreateCommand: must be a string or a list of "
                      "strings (the object form, parallel commands, is not supported)")
