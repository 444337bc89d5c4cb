"""The Colima profile agentrt writes: sized numbers, vz/virtiofs on macOS, where it lands."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from runtime.cli.main import main
from runtime.config import ResourceLimits
from runtime.engine import colima
from runtime.engine.colima import (
    ColimaSize,
    colima_home,
    profile_path,
    read_template,
    render_profile,
    size_for,
)
from runtime.errors import ConfigError

try:
    import yaml
except ImportError:  # PyYAML is not a dependency; fall back to reading keys with regexes
    yaml = None

SIZE = ColimaSize(cpus=7, memory_gib=13, disk_gib=61)


def top_level(text: str) -> dict[str, Any]:
    """The profile's top-level scalars (and the keys the tests look into) as a dict."""
    if yaml is not None:
        parsed = yaml.safe_load(text)
        assert isinstance(parsed, dict)
        return parsed
    found: dict[str, Any] = {}
    for key, value in re.findall(r"^([A-Za-z][\w-]*):[ \t]*(\S.*?)?[ \t]*$", text, re.M):
        value = value or ""
        found[key] = int(value) if value.isdigit() else {"true": True, "false": False}.get(
            value, value.strip('"'))
    return found


def test_the_rendered_profile_carries_the_sized_cpu_memory_and_disk() -> None:
    text = render_profile(SIZE, read_template(), platform="darwin")
    profile = top_level(text)
    assert (profile["cpu"], profile["memory"], profile["disk"]) == (7, 13, 61)
    assert profile["runtime"] == "docker"
    assert "${" not in text  # every placeholder was filled


def test_macos_gets_vz_and_virtiofs_and_other_hosts_qemu_and_9p() -> None:
    mac = top_level(render_profile(SIZE, read_template(), platform="darwin"))
    assert (mac["vmType"], mac["mountType"]) == ("vz", "virtiofs")
    linux = top_level(render_profile(SIZE, read_template(), platform="linux"))
    assert (linux["vmType"], linux["mountType"]) == ("qemu", "9p")


def test_the_home_directory_is_mounted_writable_and_the_daemon_is_agentrt_friendly() -> None:
    text = render_profile(SIZE, read_template(), platform="darwin")
    if yaml is not None:
        profile = yaml.safe_load(text)
        assert profile["mounts"] == [{"location": "~", "writable": True}]
        daemon = profile["docker"]
        assert daemon["live-restore"] is False
        assert daemon["log-opts"]["max-size"] == "10m"
        # daemon.json takes log-opts values as strings only
        assert all(isinstance(v, str) for v in daemon["log-opts"].values())
    else:
        assert re.search(r'^mounts:\n  - location: "~"\n    writable: true$', text, re.M)
        docker = text[text.index("\ndocker:\n"):]
        assert re.search(r"^  live-restore: false$", docker, re.M)
        assert re.search(r'^    max-size: "10m"$', docker, re.M)


def test_a_profile_sized_by_size_for_has_exactly_those_numbers() -> None:
    size = size_for(3, ResourceLimits())
    profile = top_level(render_profile(size, read_template()))
    assert (profile["cpu"], profile["memory"], profile["disk"]) == \
        (size.cpus, size.memory_gib, size.disk_gib)


def test_an_unknown_placeholder_in_the_template_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\$\{gpus\}"):
        render_profile(SIZE, "cpu: ${cpu}\ngpus: ${gpus}\n")
    with pytest.raises(ConfigError, match="malformed"):
        render_profile(SIZE, "cpu: ${cpu}\nprice: 5$\n")


def test_the_template_is_found_next_to_the_package_or_where_agentrt_colima_dir_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "cpu: ${cpu}" in read_template()
    (tmp_path / "agentrt.yaml").write_text("cpu: ${cpu}\n# mine\n")
    monkeypatch.setenv("AGENTRT_COLIMA_DIR", str(tmp_path))
    assert render_profile(SIZE, read_template()) == "cpu: 7\n# mine\n"
    monkeypatch.setenv("AGENTRT_COLIMA_DIR", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot be read"):
        read_template()


def test_profile_path_honours_colima_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"COLIMA_HOME": str(tmp_path / "ch")}
    assert profile_path(colima_home(env, home, "darwin")) == tmp_path / "ch/agentrt/colima.yaml"
    assert profile_path(colima_home(env, home, "linux"), "x") == tmp_path / "ch/x/colima.yaml"
    # Unset: ~/.colima on macOS; on Linux ~/.colima only when it exists, else XDG.
    assert profile_path(colima_home({}, home, "darwin")) == home / ".colima/agentrt/colima.yaml"
    assert colima_home({}, home, "linux") == home / ".config/colima"
    assert colima_home({"XDG_CONFIG_HOME": str(tmp_path / "x")}, home, "linux") == \
        tmp_path / "x/colima"
    (home / ".colima").mkdir(parents=True)
    assert colima_home({"XDG_CONFIG_HOME": str(tmp_path / "x")}, home, "linux") == home / ".colima"


def test_colima_up_dry_run_show_profile_prints_the_command_and_the_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLIMA_HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["colima", "up", "--agents", "3", "--dry-run",
                                       "--show-profile"])
    assert result.exit_code == 0, result.output
    size = size_for(3, ResourceLimits())
    command, where, *rest = result.output.splitlines(keepends=True)
    assert command.split() == size.start_command()
    assert where == f"# {tmp_path / 'agentrt' / 'colima.yaml'}\n"
    profile = top_level("".join(rest))
    assert (profile["cpu"], profile["memory"], profile["disk"]) == \
        (size.cpus, size.memory_gib, size.disk_gib)
    assert not (tmp_path / "agentrt").exists()  # a dry run writes nothing
    plain = CliRunner().invoke(main, ["colima", "up", "--agents", "3", "--dry-run"])
    assert plain.output == command


def test_colima_up_writes_the_profile_before_colima_start_reads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLIMA_HOME", str(tmp_path))
    target = tmp_path / "agentrt" / "colima.yaml"
    seen: list[tuple[list[str], str | None]] = []

    def fake_run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        seen.append((argv, target.read_text() if target.exists() else None))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr("runtime.engine.colima.shutil.which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr("runtime.engine.colima.subprocess.run", fake_run)
    colima.colima_up(SIZE)
    (stop, before_stop), (start, at_start) = seen
    assert stop == ["colima", "stop", "agentrt"] and before_stop is None
    assert start == SIZE.start_command()
    assert at_start == render_profile(SIZE, read_template())
    assert [p.name for p in target.parent.iterdir()] == ["colima.yaml"]  # no temporary left
