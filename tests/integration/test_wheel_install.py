"""A non-editable install (a wheel) works away from the checkout: recipes and template ship.

``python -m build`` makes the sdist from a copy of the checkout's files and the wheel from that
sdist (as pip does from PyPI), so both are proven to carry ``images/`` and ``colima/``. The
wheel is installed into a fresh venv in a temporary directory (its dependencies borrowed from the
running environment through a ``.pth`` line, so nothing is downloaded for them), and driven from a
directory outside the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Installed:
    venv: Path
    elsewhere: Path  # a working directory outside the checkout
    env: dict[str, str]

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        exe = argv[0] if argv[0].startswith("/") else str(self.venv / "bin" / argv[0])
        return subprocess.run([exe, *argv[1:]], cwd=self.elsewhere, env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)


def _checkout_copy(target: Path) -> Path:
    """Tracked and new (not ignored) files of the checkout, as `pip install .` would see them."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for rel in filter(None, listed):
        source = ROOT / rel
        if source.is_file():  # a file deleted but not yet committed is listed too
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / rel)
    return target


def _python(module: str, *args: str, timeout: float = 180) -> None:
    proc = subprocess.run([sys.executable, "-m", module, *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{module} {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n"
                    f"{proc.stderr[-3000:]}")


def _pip(*args: str, timeout: float = 180) -> None:
    _python("pip", "--disable-pip-version-check", *args, timeout=timeout)


@dataclass(frozen=True)
class Dists:
    sdist: Path
    wheel: Path


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    """The sdist of a copy of the checkout, and the wheel built from that sdist."""
    work = tmp_path_factory.mktemp("dists")
    src = _checkout_copy(work / "src")
    # Build isolation fetches the build backend pyproject.toml asks for (as `pip install .` does).
    _python("build", "--outdir", str(work / "dist"), str(src))
    (sdist,) = (work / "dist").glob("agentrt-*.tar.gz")
    (wheel,) = (work / "dist").glob("agentrt-*.whl")
    return Dists(sdist, wheel)


def _checkout_files(folder: str) -> dict[str, bytes]:
    """Tracked and new files under the checkout's top-level ``folder``, by path inside it."""
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard",
         "--", folder],
        capture_output=True, check=True,
    ).stdout.decode().split("\0")
    return {rel.removeprefix(f"{folder}/"): (ROOT / rel).read_bytes()
            for rel in filter(None, listed) if (ROOT / rel).is_file()}


def test_the_sdist_and_the_wheel_hold_the_same_recipes_and_profile_as_the_checkout(
    dists: Dists,
) -> None:
    with tarfile.open(dists.sdist) as sdist, zipfile.ZipFile(dists.wheel) as wheel:
        sdist_root = sdist.getnames()[0].split("/")[0]  # agentrt-<version>
        for folder in ("images", "colima"):
            expected = _checkout_files(folder)
            assert "base/Dockerfile" in expected or "agentrt.yaml" in expected
            in_sdist = {}
            for member in sdist.getmembers():
                prefix = f"{sdist_root}/{folder}/"
                if member.isfile() and member.name.startswith(prefix):
                    extracted = sdist.extractfile(member)
                    assert extracted is not None
                    in_sdist[member.name.removeprefix(prefix)] = extracted.read()
            in_wheel = {name.removeprefix(f"runtime/{folder}/"): wheel.read(name)
                        for name in wheel.namelist()
                        if name.startswith(f"runtime/{folder}/") and not name.endswith("/")}
            assert in_sdist == expected, folder
            assert in_wheel == expected, folder
        # One source: no second copy of the recipes under another name.
        assert not [n for n in wheel.namelist() if n.startswith(("runtime/recipes/",
                                                                 "runtime/colima_templates/"))]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, dists: Dists) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    wheel = dists.wheel
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    python = venv / "bin" / "python"
    _pip("--python", str(python), "install", "--no-deps", "--no-index", "--quiet", str(wheel))
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    # The dependencies (docker, pydantic, click, ...) from this environment; a path line in a
    # .pth comes after the venv's own site-packages, so `runtime` is the wheel's.
    (Path(purelib) / "agentrt-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "AGENTRT_IMAGES_DIR", "AGENTRT_COLIMA_DIR")}
    env.update(HOME=str(elsewhere), XDG_CONFIG_HOME=str(elsewhere / ".config"))
    env.pop("COLIMA_HOME", None)
    return Installed(venv, elsewhere, env)


def test_the_wheel_ships_the_image_recipes_and_the_colima_template(installed: Installed) -> None:
    proc = installed.run(
        "python", "-c",
        "import runtime, runtime.engine.recipes as i, runtime.engine.colima as c\n"
        "print(runtime.__file__); print(i.images_dir()); print(c.colima_dir())\n"
        "print(i.recipe_hash('base')); print(len(i.base_packages()))",
    )
    assert proc.returncode == 0, proc.stderr
    package, recipes, templates, base_hash, packages = proc.stdout.split("\n")[:5]
    site = str(installed.venv)
    assert package.startswith(site) and recipes.startswith(site) and templates.startswith(site)
    assert not package.startswith(str(ROOT))
    for name in ("base", "claude-code", "codex", "aider", "postgres", "egress", "dind"):
        assert (Path(recipes) / name / "Dockerfile").is_file(), name
    # The same recipe hash as the checkout's: an installed agentrt sees images built from a
    # checkout as current, and rebuilds nothing.
    from runtime.engine.recipes import recipe_hash

    assert base_hash == recipe_hash("base")
    assert int(packages) > 5


def test_colima_up_renders_the_profile_from_an_installed_agentrt(installed: Installed) -> None:
    proc = installed.run("agentrt", "colima", "up", "--agents", "3", "--dry-run",
                         "--show-profile")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("colima start agentrt --cpu 3 --memory 5 --disk 35")
    assert "cpu: 3" in lines and "memory: 5" in lines and "disk: 35" in lines
    assert "${" not in proc.stdout


@pytest.mark.docker
def test_an_installed_agentrt_lists_and_skips_building_the_current_base(
    installed: Installed, docker_client: Any
) -> None:
    from runtime.engine.image_build import build_image

    build_image(docker_client, "base")  # current already in the usual case: a no-op
    proc = installed.run("agentrt", "images", "build", "base")
    assert proc.returncode == 0, proc.stderr
    assert "agentrt/base:latest: up to date" in proc.stdout
    listed = installed.run("agentrt", "images", "ls")
    assert listed.returncode == 0, listed.stderr
    base = [line.split("\t") for line in listed.stdout.splitlines()
            if line.startswith("agentrt/base:latest\t")]
    assert len(base) == 1 and base[0][-1] == "current", listed.stdout
