"""What `agentrt doctor` concludes from versions and host facts (no Docker needed)."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from runtime.errors import EngineError
from runtime.run import doctor


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("git version 2.39.5", (2, 39, 5)),
        ("1.1.5+ds1-1+deb12u1", (1, 1, 5)),
        ("v1.1.12-0-g51d5e94", (1, 1, 12)),
        ("runc version 1.2.8", (1, 2, 8)),
        ("git version 2.50", (2, 50, 0)),
        ("unknown", None),
    ],
)
def test_versions_are_read_from_vendor_strings(
    text: str, expected: tuple[int, int, int] | None
) -> None:
    assert doctor.parse_version(text) == expected


@pytest.mark.parametrize(
    ("version", "status"),
    [
        ((2, 37, 9), "fail"),
        ((2, 38, 0), "warn"),
        ((2, 39, 5), "warn"),
        ((2, 50, 0), "warn"),
        ((2, 50, 1), "ok"),
        ((2, 51, 0), "ok"),
        ((3, 0, 0), "ok"),
    ],
)
def test_git_below_2_38_fails_and_below_2_50_1_only_warns(
    version: tuple[int, int, int], status: str
) -> None:
    check = doctor.git_check(version)
    assert check.status == status
    if status != "ok":
        assert check.fix


def test_git_warning_names_the_cve_and_backports() -> None:
    detail = doctor.git_check((2, 39, 5)).detail
    assert "CVE-2025-48384" in detail
    assert "backport" in detail


@pytest.mark.parametrize(
    ("version", "patched"),
    [
        ((1, 1, 5), False),
        ((1, 2, 7), False),
        ((1, 2, 8), True),
        ((1, 3, 0), False),
        ((1, 3, 2), False),
        ((1, 3, 3), True),
        ((1, 4, 0), True),
        ((1, 5, 1), True),
    ],
)
def test_runc_is_patched_per_maintained_line(version: tuple[int, int, int], patched: bool) -> None:
    assert doctor.runc_is_patched(version) is patched


def test_old_runc_warns_about_cve_2025_31133_but_never_fails() -> None:
    check = doctor.runc_check((1, 1, 5), "1.1.5+ds1-1+deb12u1")
    assert check.status == "warn"
    assert "CVE-2025-31133" in check.detail
    assert "1.1.5+ds1-1+deb12u1" in check.detail
    assert doctor.runc_check(None).status == "warn"
    assert doctor.runc_check((1, 2, 8)).status == "ok"


@pytest.mark.parametrize("version", [1, 2])
def test_both_cgroup_versions_are_supported(version: int) -> None:
    assert doctor.cgroup_check(version).status == "ok"


def test_soft_disk_limits_warn_and_explain_the_fallback() -> None:
    assert doctor.disk_check("loop").status == "ok"
    soft = doctor.disk_check("soft")
    assert soft.status == "warn"
    assert "losetup" in soft.fix


def test_disk_limit_mode_is_loop_or_soft() -> None:
    assert doctor.disk_limit_mode() in ("loop", "soft")


def test_colima_is_not_needed_on_linux(tmp_path: Path) -> None:
    check = doctor.colima_check("linux", home=tmp_path)
    assert (check.status, check.detail) == ("ok", "not needed on this platform")


def test_colima_profile_is_reported_on_macos(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(doctor.shutil, "which", lambda name: f"/opt/homebrew/bin/{name}")
    monkeypatch.delenv("COLIMA_HOME", raising=False)
    assert doctor.colima_check("darwin", home=tmp_path).fix == "agentrt colima up"
    (tmp_path / ".colima" / "agentrt").mkdir(parents=True)
    assert doctor.colima_check("darwin", home=tmp_path).status == "ok"


def test_unreachable_engine_fails_one_check_and_reports_the_rest() -> None:
    def no_engine() -> docker.DockerClient:
        raise EngineError("no Docker engine reachable")

    checks = doctor.run_checks(no_engine)
    assert [c.name for c in checks] == list(doctor.CHECK_ORDER)
    by_name = {c.name: c for c in checks}
    assert by_name["engine"].status == "fail"
    assert by_name["engine"].fix
    assert by_name["images"].detail.startswith("not checked")
    assert by_name["colima"].status in ("ok", "warn")


def test_kept_volumes_are_a_warning_with_the_space_and_the_retry() -> None:
    assert doctor.kept_check([]).status == "ok"
    check = doctor.kept_check([("a-1", 50 * 1024 * 1024), ("b-2", 30 * 1024 * 1024)])
    assert check.status == "warn"
    assert "2 session(s) hold 80 MiB" in check.detail and "a-1, b-2" in check.detail
    assert check.fix == "agentrt recover a-1 (or agentrt gc for all)"
