"""Colima (macOS, also Linux): size the ``agentrt`` profile from the per-agent limits.

The VM must hold ``max_concurrent_agents`` × the per-agent limits plus headroom for the engine,
the page cache and the images. Sizing (:func:`size_for`) and the profile's text
(:func:`render_profile`, from the template ``colima/agentrt.yaml`` at the top of the repository,
carried by the wheel inside ``runtime``) are pure functions; :func:`colima_up` writes the
profile to :func:`profile_path` and runs ``colima``.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template

from runtime.config import ResourceLimits
from runtime.engine.recipes import shipped_dir
from runtime.errors import ConfigError, EngineError, ImageNotFoundError

PROFILE = "agentrt"
TEMPLATE = "agentrt.yaml"
MEMORY_HEADROOM_MB = 2048
DISK_HEADROOM_GB = 20


@dataclass(frozen=True)
class ColimaSize:
    """CPUs, memory (GiB) and disk (GiB) of a Colima VM."""

    cpus: int
    memory_gib: int
    disk_gib: int

    def start_command(self, profile: str = PROFILE, platform: str = sys.platform) -> list[str]:
        """The ``colima start`` argv creating or resizing the profile."""
        argv = ["colima", "start", profile, "--cpu", str(self.cpus), "--memory",
                str(self.memory_gib), "--disk", str(self.disk_gib)]
        if platform == "darwin":
            # vz + virtiofs: the fastest file sharing; worktrees live on a shared mount.
            argv += ["--vm-type", "vz", "--mount-type", "virtiofs"]
        return argv


def size_for(agents: int, limits: ResourceLimits) -> ColimaSize:
    """The VM size that fits ``agents`` concurrent agents with ``limits`` each. Pure."""
    if agents < 1:
        raise ConfigError("--agents must be at least 1")
    cpus = max(2, math.ceil(agents * limits.cpu_percent / 100) + 1)
    memory_mb = agents * limits.memory_mb + MEMORY_HEADROOM_MB
    disk_gb = math.ceil(agents * limits.disk_mb / 1024) + DISK_HEADROOM_GB
    return ColimaSize(cpus=cpus, memory_gib=math.ceil(memory_mb / 1024), disk_gib=disk_gb)


# -- the profile ------------------------------------------------------------------------------


def colima_dir() -> Path:
    """The directory holding the profile template: ``AGENTRT_COLIMA_DIR`` if set, else
    ``colima/`` as installed with the package or at the top of the checkout."""
    try:
        return shipped_dir("colima", "AGENTRT_COLIMA_DIR")
    except ImageNotFoundError as exc:
        raise ConfigError(str(exc)) from exc


def read_template() -> str:
    """The text of the profile template; ConfigError when it is missing."""
    path = colima_dir() / TEMPLATE
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"the Colima profile template {path} cannot be read: "
                          f"{exc.strerror or exc}") from exc


def render_profile(size: ColimaSize, template: str, platform: str = sys.platform) -> str:
    """``template`` with ``${cpu}``, ``${memory}``, ``${disk}``, ``${vm_type}`` and
    ``${mount_type}`` filled in: vz + virtiofs on macOS, qemu + 9p elsewhere. Pure.

    A placeholder the template names but this function does not know is a ConfigError.
    """
    vm_type, mount_type = ("vz", "virtiofs") if platform == "darwin" else ("qemu", "9p")
    values = {"cpu": size.cpus, "memory": size.memory_gib, "disk": size.disk_gib,
              "vm_type": vm_type, "mount_type": mount_type}
    try:
        return Template(template).substitute(values)
    except KeyError as exc:
        raise ConfigError(f"the Colima profile template names an unknown placeholder "
                          f"${{{exc.args[0]}}}; known: {', '.join(values)}") from exc
    except ValueError as exc:  # a lone "$": the template must write "$$"
        raise ConfigError(f"the Colima profile template is malformed: {exc}") from exc


def colima_home(env: Mapping[str, str] | None = None, home: Path | None = None,
                platform: str = sys.platform) -> Path:
    """Where Colima keeps its profiles, chosen as Colima chooses.

    ``$COLIMA_HOME`` when set; else ``~/.colima`` when it exists or on macOS; else
    ``$XDG_CONFIG_HOME/colima``, else ``~/.config/colima``.
    """
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    if env.get("COLIMA_HOME"):
        return Path(env["COLIMA_HOME"]).expanduser()
    if platform == "darwin" or (home / ".colima").is_dir():
        return home / ".colima"
    if env.get("XDG_CONFIG_HOME"):
        return Path(env["XDG_CONFIG_HOME"]) / "colima"
    return home / ".config" / "colima"


def profile_path(colima_home: Path, profile: str = PROFILE) -> Path:
    """The profile's ``colima.yaml`` under ``colima_home`` (see :func:`colima_home`)."""
    return colima_home / profile / "colima.yaml"


def write_profile(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (Colima may read it at any moment)."""
    partial = path.with_name(path.name + ".agentrt-tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(text, encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"cannot write the Colima profile {path}: "
                          f"{exc.strerror or exc}") from exc


def colima_up(size: ColimaSize, dry_run: bool = False) -> list[str]:
    """Create or resize the agentrt profile; return the command that was (or would be) run.

    Unless ``dry_run``: stop the profile, write the rendered template to its ``colima.yaml``,
    then start it. A dry run writes and runs nothing.
    """
    argv = size.start_command()
    if dry_run:
        return argv
    if shutil.which("colima") is None:
        raise EngineError("colima is not installed: `brew install colima docker`, then run "
                          "`agentrt colima up` again")
    text = render_profile(size, read_template())
    # Resizing needs a stopped VM; stopping a profile that is not running is harmless.
    subprocess.run(["colima", "stop", PROFILE], check=False, capture_output=True)
    write_profile(profile_path(colima_home()), text)
    proc = subprocess.run(argv, check=False)
    if proc.returncode != 0:
        raise EngineError(f"`{' '.join(argv)}` failed with exit code {proc.returncode}")
    return argv
