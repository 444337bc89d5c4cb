"""Does the engine see agentrt's disk? Asked of the engine itself, once, never guessed.

A local engine (this host's dockerd) can bind a host directory into a container; an engine in a
VM (Colima), on another host (``DOCKER_HOST=ssh://…``/``tcp://…``) or in a container (dind)
cannot: the same path names another file, or nothing. agentrt writes a random token into its
own state directory and asks a tiny container (no network, no capabilities, read-only) to read
that path through a bind mount. The token coming back means the disk is shared and sessions use
host-side volumes and the run's object store; anything else means engine-side volumes
(:mod:`runtime.engine.engine_volumes`). ``AGENTRT_ENGINE_DISK=shared|remote`` overrides the probe.

The container reads as an unprivileged uid that owns nothing here, so agentrt sets the bits it
needs itself: the probe directory (bound at a neutral path) searchable by all (0711), the token
readable by all. No directory above it is traversed, so a state directory under a 0700 home, a
0700 temporary directory or a strict umask answers like any other.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from runtime.engine.discovery import engine_errors
from runtime.errors import ConfigError, EngineError

OVERRIDE_ENV = "AGENTRT_ENGINE_DISK"
PROBE_IMAGE = "agentrt/base:latest"
#: Where the probe container sees the probe directory.
PROBE_MOUNT = "/agentrt/probe"

_cache: dict[str, bool] = {}
_lock = threading.Lock()


def engine_shares_disk(client: docker.DockerClient, probe_dir: Path) -> bool:
    """True when containers of ``client``'s engine can bind paths of this host's disk."""
    forced = os.environ.get(OVERRIDE_ENV, "")
    if forced:
        if forced not in ("shared", "remote"):
            raise ConfigError(f"{OVERRIDE_ENV}={forced!r}: use shared or remote")
        return forced == "shared"
    key = str(client.api.base_url)  # one engine per endpoint; no API call per session
    with _lock:
        if key not in _cache:
            _cache[key] = _probe(client, probe_dir)
        return _cache[key]


def _probe(client: docker.DockerClient, probe_dir: Path, attempts: int = 3) -> bool:
    # Only a clear answer counts: the file missing on the engine's side, or another token.
    # An empty read (the engine busy, the output not collected yet) is asked again, so one
    # slow moment never marks the local engine "remote" for a whole process.
    for _ in range(attempts - 1):
        answer = _probe_once(client, probe_dir)
        if answer is not None:
            return answer
    return bool(_probe_once(client, probe_dir))


def _probe_once(client: docker.DockerClient, probe_dir: Path) -> bool | None:
    probe_dir.mkdir(parents=True, exist_ok=True)
    probe_dir.chmod(0o711)  # whatever the umask or the place: the reader only needs search
    token = secrets.token_hex(16)
    marker = probe_dir / f"disk-probe-{token[:8]}"
    marker.write_text(token)
    marker.chmod(0o644)
    try:
        with engine_errors("ask the engine whether it shares agentrt's disk"):
            try:
                out = client.containers.run(
                    PROBE_IMAGE, ["cat", f"{PROBE_MOUNT}/{marker.name}"], remove=True,
                    network_mode="none", cap_drop=["ALL"], read_only=True, user="65534:65534",
                    security_opt=["no-new-privileges:true"],
                    volumes={str(probe_dir): {"bind": PROBE_MOUNT, "mode": "ro"}},
                    stdout=True, stderr=False)
            except docker.errors.ContainerError:
                return False  # the path is not there on the engine's side
        text = bytes(out).decode(errors="replace").strip()
        return None if not text else text == token
    except EngineError:
        raise
    finally:
        with contextlib.suppress(OSError):
            marker.unlink()


def volume_on_engine(shares_disk: bool, host_mode: str, engine_mode: Callable[[], str],
                     engine_side_allowed: bool = True) -> bool:
    """Where a session's volume goes: True for the engine's host, False for this one. Pure
    apart from calling ``engine_mode`` (a probe) only when the answer depends on it.

    Always the engine's host when it does not share this disk. Otherwise this host, unless
    this host can only give a soft limit (``host_mode == "soft"``: not root, macOS) while the
    engine can give a hard one (Colima's VM) and the session may live there.
    """
    if not shares_disk:
        return True
    if host_mode == "loop" or not engine_side_allowed:
        return False
    return engine_mode() == "loop"
