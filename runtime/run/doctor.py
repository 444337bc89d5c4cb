"""``agentrt doctor``: what this machine offers agentrt, and what to do about what it lacks.

Each check returns a :class:`Check` with a status: ``ok``; ``warn`` (agentrt works, with a
weaker guarantee or a known risk); ``fail`` (agentrt cannot run sessions until it is fixed).
The version rules are pure functions (:func:`git_check`, :func:`runc_check`) so they can be
tested without the tools installed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from runtime.backends.base import BASE_IMAGE, Check
from runtime.backends.registry import backend_checks, shares_disk
from runtime.engine import discovery as engine
from runtime.engine import images
from runtime.engine.types import EngineClient
from runtime.errors import AgentRuntimeError, EngineError
from runtime.git.safe_git import git_version
from runtime.version import agentrt_version

Version = tuple[int, int, int]

GIT_MINIMUM: Version = (2, 38, 0)  # merge-tree --write-tree
GIT_CVE_2025_48384_FIXED: Version = (2, 50, 1)
# runc releases with the fixes for CVE-2025-31133 / -52565 / -52881, per maintained line.
RUNC_FIXED: tuple[Version, ...] = ((1, 2, 8), (1, 3, 3), (1, 4, 0))
CHECK_ORDER = ("agentrt", "engine", "git", "runc", "cgroups", "disk limits", "gVisor", "images",
               "colima")


def parse_version(text: str) -> Version | None:
    """The first ``X.Y[.Z]`` in ``text`` (e.g. ``"1.1.5+ds1-1+deb12u1"`` gives (1, 1, 5))."""
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not match:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def _dotted(version: Version) -> str:
    return ".".join(map(str, version))


def git_check(version: Version) -> Check:
    """Judge the host's git: fail below 2.38, warn below 2.50.1 (CVE-2025-48384)."""
    shown = _dotted(version)
    if version < GIT_MINIMUM:
        return Check(
            "git",
            "fail",
            f"git {shown} is too old: agentrt needs git >= 2.38 (merge-tree --write-tree)",
            "install a newer git (Debian 12+, Ubuntu 24.04+, Homebrew `brew install git`)",
        )
    if version < GIT_CVE_2025_48384_FIXED:
        return Check(
            "git",
            "warn",
            f"git {shown}: upstream fixed CVE-2025-48384 (and -48385/-48386) in 2.50.1; "
            "distributions may have backported the fix without changing the version; agentrt "
            "itself never clones or recurses into submodules",
            "check your distribution's advisory for git, or upgrade git to >= 2.50.1",
        )
    return Check("git", "ok", f"git {shown}")


def runc_is_patched(version: Version) -> bool:
    """Whether upstream runc ``version`` carries the November 2025 container-escape fixes."""
    for fixed in RUNC_FIXED:
        if version[:2] == fixed[:2]:
            return version >= fixed
    return version > RUNC_FIXED[-1]


def runc_check(version: Version | None, raw: str = "") -> Check:
    """Judge the engine's runc: warn if upstream would call it vulnerable to CVE-2025-31133."""
    if version is None:
        return Check(
            "runc",
            "warn",
            f"could not tell runc's version ({raw or 'not reported by the engine'})",
            "run `runc --version` on the engine's host",
        )
    shown = raw or _dotted(version)
    if runc_is_patched(version):
        return Check("runc", "ok", f"runc {shown}")
    return Check(
        "runc",
        "warn",
        f"runc {shown} is older than the releases fixing CVE-2025-31133/-52565/-52881 "
        "(1.2.8, 1.3.3, 1.4.0); distributions often backport such fixes, check yours",
        'upgrade the engine\'s runc (or containerd.io), or run tasks with runtime = "runsc"',
    )


def cgroup_check(version: int) -> Check:
    """Both cgroup versions are supported; the detail says which one limits apply through."""
    if version in (1, 2):
        return Check("cgroups", "ok", f"cgroup v{version}")
    return Check("cgroups", "warn", f"unknown cgroup version {version!r}", "check `docker info`")


def disk_limit_mode() -> Literal["loop", "soft"]:
    """How session volumes are size-limited on this host (the rule sessions use).

    ``loop``: root on Linux with a free loop device and ``mkfs.ext4`` (a real ext4 image per
    session, so the kernel enforces the size); ``soft``: anything else (usage is measured
    and a session over quota is stopped, after the fact).
    """
    from runtime.engine.volumes import default_mode

    return default_mode()


def disk_check(mode: Literal["loop", "soft"]) -> Check:
    """Explain the disk-limit mode (see :func:`disk_limit_mode`)."""
    if mode == "loop":
        return Check("disk limits", "ok", "loop: each session's volume is its own ext4 image")
    return Check(
        "disk limits",
        "warn",
        "soft: disk use is measured and a session over its disk_mb is stopped afterwards; "
        "a fast writer can overshoot before it is caught",
        "run agentrt as root on Linux with util-linux (losetup) and e2fsprogs (mkfs.ext4) "
        "for hard limits",
    )


def colima_check(platform: str = sys.platform, home: Path | None = None) -> Check:
    """On macOS, whether Colima and its ``agentrt`` profile exist; elsewhere, not needed."""
    if platform != "darwin":
        return Check("colima", "ok", "not needed on this platform")
    if shutil.which("colima") is None:
        return Check(
            "colima",
            "warn",
            "Colima is not installed (fine if another engine, e.g. Docker Desktop, answers)",
            "brew install colima docker && agentrt colima up",
        )
    home = Path.home() if home is None else home
    homes = engine.colima_homes(os.environ, home)
    if any((h / "agentrt").is_dir() for h in homes):
        return Check("colima", "ok", "Colima profile 'agentrt' exists")
    return Check("colima", "warn", "no Colima profile 'agentrt'", "agentrt colima up")


def _git_check_host() -> Check:
    try:
        return git_check(git_version())
    except (AgentRuntimeError, OSError) as exc:
        return Check("git", "fail", f"git not usable: {exc}", "install git >= 2.38")


def _engine_checks(client: EngineClient) -> list[Check]:
    checks: list[Check] = []
    info = engine.engine_info(client)
    where = engine.endpoint_of(client)
    checks.append(
        Check(
            "engine",
            "ok",
            f"Docker {info.get('ServerVersion', '?')}"
            + (f" at {where.url} ({where.source})" if where else "")
            + f", {info.get('NCPU', '?')} CPUs, {int(info.get('MemTotal', 0)) // 2**20} MiB",
        )
    )
    raw_runc = str((info.get("RuncCommit") or {}).get("ID") or "")
    if not parse_version(raw_runc) and shutil.which("runc"):
        out = subprocess.run(["runc", "--version"], capture_output=True, text=True, check=False)
        raw_runc = out.stdout.splitlines()[0] if out.stdout else ""
    checks.append(runc_check(parse_version(raw_runc), raw_runc))
    checks.append(cgroup_check(int(info.get("CgroupVersion") or 1)))
    if "runsc" in (info.get("Runtimes") or {}):
        checks.append(Check("gVisor", "ok", "runtime 'runsc' is registered"))
    else:
        checks.append(
            Check(
                "gVisor",
                "warn",
                "runtime 'runsc' is not registered: tasks with runtime = \"runsc\" cannot run",
                "install gVisor (https://gvisor.dev/docs/user_guide/install/), add "
                '{"runtimes": {"runsc": {"path": "/usr/bin/runsc"}}} to /etc/docker/daemon.json '
                "and restart dockerd (scripts/ensure-docker does this where runsc is installed)",
            )
        )
    checks.append(_image_check(client))
    checks.append(_host_route_check(client))
    return checks


def _host_route_check(client: EngineClient) -> Check:
    """Session networks (allowlist, services, shared database) must give the host no address."""
    from runtime.engine.networks import engine_holds_the_host_out

    try:
        held = engine_holds_the_host_out(client)
    except EngineError as exc:
        return Check("host route", "warn", f"cannot make a probe network: {exc}")
    if held:
        return Check("host route", "ok", "session networks are internal bridges without a "
                     "host address (inhibit_ipv4)")
    return Check("host route", "fail", "the engine ignores com.docker.network.bridge."
                 "inhibit_ipv4: sessions on internal networks could reach the host's listeners",
                 "use a Docker engine with the bridge driver (Docker 1.13 or later)")


def _image_check(client: EngineClient) -> Check:
    try:
        images.require_image(client, BASE_IMAGE)
        listed = images.list_images(client)
    except AgentRuntimeError as exc:
        return Check("images", "fail", str(exc), "agentrt images build")
    if any(BASE_IMAGE in i.tags and not i.current for i in listed):
        return Check(
            "images", "warn", f"{BASE_IMAGE} was built from an older recipe", "agentrt images build"
        )
    return Check("images", "ok", f"{BASE_IMAGE} is present and current")


def run_checks(client_factory: Callable[[], EngineClient],
               state_dir: Path | None = None, node_urls: Sequence[str] = ()) -> list[Check]:
    """Every check, in a stable order; never raises for what it finds. With ``state_dir`` (a
    repository's), also the volumes kept because their work has not come home yet. On a Swarm
    manager, also its nodes and whether agentrt/base is on them (``node_urls``: the nodes'
    engines, to compare image ids: :func:`runtime.backends.registry.backend_checks`).

    ``client_factory`` is called once (e.g. :func:`runtime.engine.discovery.get_client`); if it
    raises :class:`~runtime.errors.AgentRuntimeError`, the engine check fails and the checks
    that need an engine are reported as not checked.
    """
    disk = disk_check(disk_limit_mode())
    swarm: list[Check] = []
    try:
        client = client_factory()
        engine_part = _engine_checks(client)
        disk = _volume_place_check(client, state_dir) or disk
        swarm = backend_checks(client, node_urls)
    except AgentRuntimeError as exc:
        engine_part = [Check("engine", "fail", str(exc), engine.how_to_start_engine())]
        engine_part += [
            Check(name, "warn", "not checked: no engine", "fix the engine first")
            for name in ("runc", "cgroups", "gVisor", "images")
        ]
    found = {c.name: c for c in engine_part}
    found["git"] = _git_check_host()
    found["agentrt"] = Check("agentrt", "ok", f"version {agentrt_version()}")
    found["disk limits"] = disk
    found["colima"] = colima_check()
    checks = [found[name] for name in CHECK_ORDER] + swarm
    if state_dir is not None:
        checks.append(kept_check(kept_volumes(state_dir)))
    return checks


def _volume_place_check(client: EngineClient, state_dir: Path | None) -> Check | None:
    """Where sessions' volumes go with this engine; None when it shares this host's disk."""
    import tempfile

    from runtime.engine.engine_volumes import engine_volume_mode

    shares: bool | None = None
    if state_dir is not None:
        # A full repository disk (a kept volume may be why) cannot take the probe's marker:
        # asked from a temporary directory instead, so doctor still reports.
        with contextlib.suppress(OSError):
            shares = shares_disk(client, state_dir / "probe")
    if shares is None:
        with tempfile.TemporaryDirectory(prefix="agentrt-probe-") as tmp:
            shares = shares_disk(client, Path(tmp))
    if shares:
        return None
    mode = engine_volume_mode(client)
    check = disk_check(mode)
    where = "the engine does not share this disk: volumes are made on the engine's host"
    return Check(check.name, check.status, f"{where}; {check.detail}", check.fix)


def kept_volumes(state_dir: Path) -> list[tuple[str, int]]:
    """Sessions whose work waits on a kept volume (a failed harvest), with the bytes held."""
    from runtime.state.session_facts import SessionMarker
    from runtime.state.traces import session_dirs

    kept = []
    for session_id, session_dir in sorted(session_dirs(state_dir).items()):
        marker = SessionMarker.read(session_dir)
        if marker is None or not marker.work_kept:
            continue
        image = session_dir / "volume.img"
        held = image.stat().st_blocks * 512 if image.exists() else 0
        kept.append((session_id, held))
    return kept


def kept_check(kept: list[tuple[str, int]]) -> Check:
    """Pure: warn about kept volumes, the space they hold and how to bring their work home."""
    if not kept:
        return Check("kept volumes", "ok", "none: every session's work is home")
    total = sum(size for _, size in kept) // (1024 * 1024)
    names = ", ".join(session for session, _ in kept[:5]) + (" …" if len(kept) > 5 else "")
    return Check("kept volumes", "warn",
                 f"{len(kept)} session(s) hold {total} MiB until their work comes home: {names}",
                 f"agentrt recover {kept[0][0]} (or agentrt gc for all)")
