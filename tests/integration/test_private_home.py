"""The core as people run it: the repository in a private (0700) home, the state directory left
at its default, awkward paths; as root and as a user whose uid is not 1000.

CI runs the rest of the suite as root on repositories under ``/tmp``. Here the same core (a run
with merge through the whole ``agentrt run`` process, directory mode, ``recover``, ``gc``; as
root also the Python API and ``doctor``) runs

* as root with ``HOME`` a fresh 0700 directory under root's own 0700 home (``/root``), the
  repository at a path with a space and non-ASCII characters, through a symlink, and on another
  file system (a tmpfs); ``AGENTRT_STATE_HOME`` is never set;
* as ``agentrt-t1517`` (uid 1517, in the ``docker`` group, its own 0700 home), with a venv made
  from Debian's ``/usr/bin/python3`` (this machine's default ``python3`` lives under root's
  home, out of that user's reach) and agentrt installed from a wheel of a copy of this
  checkout: once with the placement agentrt chooses for it (engine-side volumes: a non-root
  user gets no loop volumes on this host) and once with ``AGENTRT_ENGINE_VOLUMES=soft``, which
  keeps its volumes (and the run's object store) on this host.

The user and its venv are made once and reused (the venv is reinstalled only when the source
changed). A set-up that cannot be done fails in CI (``CI=true``) and is skipped elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runtime.config import ResourceLimits, RunConfig, Task
from runtime.models import SessionStatus, WorkState
from runtime.run.session import IsolatedAgentSession
from tests.conftest import REQUIRE_DOCKER, git, make_repo
from tests.integration.helpers import run_tasks, sh
from tests.integration.test_recovery import wait_running

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
USER = "agentrt-t1517"
USER_UID = 1517
DEBIAN_PYTHON = Path("/usr/bin/python3")
AWKWARD = "my app ü"  # a space and a non-ASCII character

LIMITS = """
[run.resource_limits]
memory_mb = 256
time_seconds = 120
disk_mb = 64
"""

# The committer notes where its alternates lead (the run's object store, where the session sees
# it; a volume on the engine's side holds the objects itself and has none) and its git reads the
# base through them; the writer leaves its work uncommitted.
MERGE_TASKS = """
[run]
merge = "auto"
max_concurrent_agents = 2
""" + LIMITS + """
[[tasks]]
id = "committer"
command = ["sh", "-c", "(a=$(cat .git/objects/info/alternates) && cd .git/objects && cd $a && pwd -P || echo none) > seen-alternates.txt && git show HEAD:README.md > copy.md && git add -A && git commit -qm 'agent: copy through the store'"]
[[tasks]]
id = "writer"
command = ["sh", "-c", "echo written > written.txt"]
"""

ONE_TASK = """
[run]
merge = "auto"
""" + LIMITS + """
[[tasks]]
id = "one"
command = ["sh", "-c", "git log --format=%s -1 > last.txt && git add -A && git commit -qm one"]
"""

SLOW_TASKS = LIMITS + """
[[tasks]]
id = "committer"
command = ["sh", "-c", "echo c > committed.txt && git add . && git commit -qm 'agent commit' && echo u > uncommitted.txt && sleep 120"]
[[tasks]]
id = "writer"
command = ["sh", "-c", "echo w > written.txt; sleep 120"]
"""

FOLDER_TASKS = """
[run]
isolation_strategy = "directory"
merge = "auto"
max_concurrent_agents = 2
""" + LIMITS + """
[[tasks]]
id = "edit"
command = ["sh", "-c", "echo 'VALUE = 2' > settings.py"]
[[tasks]]
id = "notes"
command = ["sh", "-c", "echo notes > NOTES.md && git add NOTES.md && git commit -qm notes"]
"""


def unavailable(message: str) -> None:
    """A set-up this machine cannot do: a failure in CI, a skip elsewhere."""
    if REQUIRE_DOCKER:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def real_home_env(home: Path) -> dict[str, str]:
    """The environment of someone whose home is ``home``: agentrt's state at its defaults."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("AGENTRT_STATE_HOME", "XDG_STATE_HOME", "AGENTRT_VOLUMES_DIR",
                        "AGENTRT_ENGINE_VOLUMES", "AGENTRT_ENGINE_DISK")}
    env["HOME"] = str(home)
    return env


def sessions_of(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["task_id"]: s for s in report["sessions"]}


def assert_all_home_and_merged(report: Mapping[str, Any]) -> None:
    """Every session succeeded, its work came home and was merged, nothing to warn about."""
    for task_id, session in sessions_of(report).items():
        assert session["status"] == "succeeded", (task_id, session)
        assert session["work"] == "home", (task_id, session["warnings"])
        assert session["merge"]["status"] == "merged", (task_id, session["merge"])
        assert not session["warnings"], (task_id, session["warnings"])


def labelled(client: Any, repo: Path) -> list[str]:
    """Containers and engine volumes still labelled with ``repo``."""
    label = {"label": f"agentrt.repo={repo}"}
    return ([f"container {c.name}" for c in client.containers.list(all=True, filters=label)]
            + [f"volume {v.name}" for v in client.volumes.list(filters=label)])


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    points = []
    for line in Path("/proc/mounts").read_text().splitlines():
        # /proc/mounts writes a space, tab, newline or backslash as an octal escape.
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), line.split()[1])
        if point == str(path) or point.startswith(f"{path}/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def session_ids(ps: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Task id -> session id, from ``agentrt ps --json``."""
    assert ps.returncode == 0, ps.stderr
    return {entry["task_id"]: entry["id"] for entry in json.loads(ps.stdout)}


def assert_recovered(read_git: Callable[..., str], recover: subprocess.CompletedProcess[str],
                     gc: subprocess.CompletedProcess[str], committer: str) -> None:
    """``recover`` brought the committer's work home, ``gc`` the writer's: both branches hold
    what their agent left (committed or not). ``read_git(*args)`` reads the repository."""
    assert recover.returncode == 0, recover.stderr
    assert f"{committer}: work home on agent/committer/" in recover.stdout, recover.stdout
    assert gc.returncode == 0, gc.stderr
    saved = json.loads(gc.stdout)["saved_branches"]
    assert [b.split("/")[1] for b in saved] == ["writer"], saved
    heads = read_git("for-each-ref", "--format=%(refname:short)", "refs/heads/agent").split()
    branch = {name.split("/")[1]: name for name in heads}
    assert "agent commit" in read_git("log", "--format=%s", branch["committer"])
    assert read_git("show", f"{branch['committer']}:uncommitted.txt") == "u\n"
    assert read_git("show", f"{branch['writer']}:written.txt") == "w\n"


# --- as root, in a private home ----------------------------------------------------------------


@pytest.fixture(scope="module")
def private_home() -> Iterator[Path]:
    """A fresh 0700 directory inside root's own 0700 home, standing in for ``~``."""
    if os.geteuid() != 0:
        unavailable("the private-home tests run as root (a home under /root, a tmpfs mount)")
    root_home = Path(pwd.getpwuid(0).pw_dir)
    if root_home.stat().st_mode & 0o077:
        unavailable(f"{root_home} is not private (0700) on this machine")
    home = root_home / f"agentrt-private-home-{secrets.token_hex(4)}"
    home.mkdir(mode=0o700)
    try:
        yield home
    finally:
        for point in mounts_under(home):
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(home, ignore_errors=True)


def cli(home: Path, *args: str, timeout: float = 300,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``agentrt ARGS`` in its own process, as root whose home is ``home``."""
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd or home, env=real_home_env(home))


def run_json(home: Path, tasks: str, repo: Path) -> dict[str, Any]:
    task_file = home / f"tasks-{secrets.token_hex(3)}.toml"
    task_file.write_text(tasks)
    proc = cli(home, "run", str(task_file), "--repo", str(repo), "--json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def test_a_run_merges_from_a_private_home_at_a_path_with_a_space_and_non_ascii(
        private_home: Path, docker_client: Any) -> None:
    repo = make_repo(private_home / "src" / AWKWARD)
    report = run_json(private_home, MERGE_TASKS, repo)
    assert_all_home_and_merged(report)
    files = set(git(repo, "ls-tree", "-r", "--name-only", "main").split())
    assert {"copy.md", "written.txt", "seen-alternates.txt"} <= files
    assert git(repo, "show", "main:copy.md") == "# demo\n"
    # The session's git found the run's objects at the neutral path, not at the host's.
    assert git(repo, "show", "main:seen-alternates.txt") == "/agentrt/objects\n"
    assert git(repo, "status", "--porcelain") == ""
    assert not labelled(docker_client, repo)
    assert not mounts_under(repo / ".git" / "agentrt")


def test_a_symlinked_repository_path_and_a_repository_on_a_tmpfs(
        private_home: Path, docker_client: Any) -> None:
    real = make_repo(private_home / "src" / "real ü")
    link = private_home / "link to app"
    link.symlink_to(real)
    report = run_json(private_home, ONE_TASK, link)
    assert_all_home_and_merged(report)
    assert git(real, "show", "main:last.txt") == "initial\n"
    assert not labelled(docker_client, real) and not labelled(docker_client, link)

    tmpfs = private_home / "on tmpfs"
    tmpfs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512m,mode=0700", "tmpfs", str(tmpfs)],
                   check=True)
    try:
        repo = make_repo(tmpfs / AWKWARD)
        report = run_json(private_home, ONE_TASK, repo)
        assert_all_home_and_merged(report)
        assert git(repo, "show", "main:last.txt") == "initial\n"
        assert not labelled(docker_client, repo)
        assert mounts_under(tmpfs) == [str(tmpfs)]  # no volume left mounted
    finally:
        subprocess.run(["umount", "-l", str(tmpfs)], check=False)


def test_directory_mode_with_the_default_state_directory_writes_the_folder(
        private_home: Path, docker_client: Any) -> None:
    folder = private_home / "projects" / "dossier é"
    folder.mkdir(parents=True)
    (folder / "settings.py").write_text("VALUE = 1\n")
    (folder / "README.md").write_text("# a folder\n")
    report = run_json(private_home, FOLDER_TASKS, folder)
    assert_all_home_and_merged(report)
    assert (folder / "settings.py").read_text() == "VALUE = 2\n"
    assert (folder / "NOTES.md").read_text() == "notes\n"
    assert (folder / "README.md").read_text() == "# a folder\n"
    assert not (folder / ".git").exists()
    # The private repository is where the default says: ~/.local/state/agentrt.
    state = private_home / ".local" / "state" / "agentrt"
    assert len(list((state / "dirs").glob("*/repo.git"))) == 1
    assert not docker_client.containers.list(all=True,
                                             filters={"label": f"agentrt.repo={folder}"})


def test_recover_and_gc_bring_work_home_after_agentrt_was_killed(
        private_home: Path, docker_client: Any) -> None:
    repo = make_repo(private_home / "kill" / AWKWARD)
    task_file = private_home / "slow.toml"
    task_file.write_text(SLOW_TASKS)
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(task_file),
                             "--repo", str(repo), "--json"], cwd=private_home,
                            env=real_home_env(private_home), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_running(docker_client, repo, 2)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    committer = session_ids(cli(private_home, "ps", "--json", "--repo", str(repo)))["committer"]
    recover = cli(private_home, "recover", committer, "--repo", str(repo))
    gc = cli(private_home, "gc", "--repo", str(repo), "--json")
    assert_recovered(lambda *args: git(repo, *args), recover, gc, committer)
    assert not labelled(docker_client, repo)
    assert not mounts_under(repo / ".git" / "agentrt")


def test_the_python_api_from_a_private_home(private_home: Path, docker_client: Any,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The coordinator (merging) and a standalone session, in this process."""
    for name in ("AGENTRT_STATE_HOME", "XDG_STATE_HOME", "AGENTRT_VOLUMES_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(private_home))
    repo = make_repo(private_home / "api" / AWKWARD)
    report = run_tasks(repo, [sh("reader", "git show HEAD:README.md > copy.md")], merge="auto")
    (result,) = report.sessions
    assert (result.status, result.work, result.merge.status) == (
        SessionStatus.SUCCEEDED, WorkState.HOME, "merged"), (result.reason, result.warnings)
    assert git(repo, "show", "main:copy.md") == "# demo\n"
    task = Task(id="solo", command=["sh", "-c", "git log --format=%s -1 > last.txt"])
    with IsolatedAgentSession(task, RunConfig(resource_limits=ResourceLimits(
            memory_mb=128, disk_mb=64, time_seconds=60)), repo=repo,
            client=docker_client) as session:
        # Host code may use git in the session's tree too (the design's harness pattern):
        # its alternates reach the store here through the link beside the workspace.
        shown = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(session.workspace),
                                "show", "HEAD:README.md"], capture_output=True, text=True)
        assert (shown.returncode, shown.stdout) == (0, "# demo\n"), shown.stderr
        solo = session.run()
    assert (solo.status, solo.work) == (SessionStatus.SUCCEEDED, WorkState.HOME), solo.warnings
    assert git(repo, "show", f"{solo.branch}:last.txt").startswith("agentrt: merge session")
    assert not labelled(docker_client, repo)


def test_doctor_from_a_private_place_knows_the_engine_shares_this_disk(
        private_home: Path, docker_client: Any) -> None:
    """The disk-sharing probe reads its token as an unprivileged uid: from a folder that is no
    repository it probes in a fresh (0700) temporary directory, and in a repository whose
    state directory a strict umask made 0700."""
    place = private_home / "not a repository"
    place.mkdir(mode=0o700)
    repo = make_repo(private_home / "strict" / AWKWARD)
    (repo / ".git" / "agentrt" / "probe").mkdir(parents=True, mode=0o700)
    for where, args in ((place, ()), (repo, ("--repo", str(repo)))):
        doctor = cli(private_home, "doctor", *args, cwd=where)
        lines = [line for line in doctor.stdout.splitlines() if "disk limits" in line]
        assert lines and "does not share this disk" not in lines[0], (where, doctor.stdout)


# --- as a user whose uid is not 1000 -----------------------------------------------------------


@dataclass(frozen=True)
class User:
    """A non-root user with agentrt installed in its own venv."""

    name: str
    uid: int
    gid: int
    home: Path
    venv: Path

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {"HOME": str(self.home), "USER": self.name, "LOGNAME": self.name,
               "PATH": f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        for name in ("DOCKER_HOST", "PIP_FIND_LINKS", "PIP_CERT", "PIP_DEFAULT_TIMEOUT",
                     "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "HTTPS_PROXY", "HTTP_PROXY",
                     "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"):
            if name in os.environ:
                env[name] = os.environ[name]
        env.update(extra or {})
        return env

    def argv(self, *argv: str) -> list[str]:
        """``argv`` run as this user (setpriv execs it: a signal reaches the command itself)."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--",
                *argv]

    def run(self, *argv: str, timeout: float = 300,
            extra: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*argv), capture_output=True, text=True,
                              timeout=timeout, cwd=self.home, env=self.env(extra))

    def agentrt(self, *args: str,
                extra: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.venv / "bin" / "agentrt"), *args, extra=extra)

    def git(self, repo: Path, *args: str) -> str:
        """git in ``repo`` as this user (root's git refuses a repository it does not own)."""
        done = self.run("git", "-C", str(repo), *args)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def repo(self, *parts: str) -> Path:
        """A fresh repository under the user's home, owned by the user."""
        top = self.home / "src" / secrets.token_hex(3)
        repo = make_repo(top.joinpath(*parts))
        subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(top.parent)], check=True)
        return repo


def wheel_sources() -> list[Path]:
    """What goes into the wheel: pyproject.toml, the README, the package, and the image
    recipes and Colima profile it carries (images/, colima/)."""
    return sorted([ROOT / "pyproject.toml", ROOT / "README.md",
                   *(p for top in ("runtime", "images", "colima") for p in (ROOT / top).rglob("*"))])


def source_digest() -> str:
    """A digest of what goes into the wheel."""
    digest = hashlib.sha256()
    for path in wheel_sources():
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_user() -> tuple[int, Path]:
    """The test user (made once): uid 1517, in the docker group, a 0700 home of its own."""
    try:
        docker_gid = grp.getgrnam("docker").gr_gid
    except KeyError:
        unavailable("no `docker` group on this machine to put the test user in")
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        made = subprocess.run(["useradd", "--create-home", "--uid", str(USER_UID), "--groups",
                               "docker", "--shell", "/bin/sh", USER],
                              capture_output=True, text=True, check=False)
        if made.returncode != 0:
            unavailable(f"cannot create the test user {USER}: {made.stderr.strip()}")
        entry = pwd.getpwnam(USER)
    if entry.pw_uid != USER_UID:
        unavailable(f"user {USER} exists with uid {entry.pw_uid}, not {USER_UID}")
    if USER not in grp.getgrgid(docker_gid).gr_mem:
        subprocess.run(["usermod", "-aG", "docker", USER], check=True)
    home = Path(entry.pw_dir)
    home.mkdir(mode=0o700, exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    home.chmod(0o700)
    return entry.pw_gid, home


def start_wheel_build(work: Path) -> subprocess.Popen[str]:
    """Start building a wheel of a copy of this checkout's source (``pip wheel --no-deps``)
    into ``work/dist``; :func:`finish_wheel_build` waits for it."""
    shutil.rmtree(work, ignore_errors=True)
    source = work / "src"
    for path in wheel_sources():
        if path.is_file() and "__pycache__" not in path.parts:
            target = source / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return subprocess.Popen([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                             "-w", str(work / "dist"), str(source)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish_wheel_build(builder: subprocess.Popen[str], work: Path) -> Path:
    _, err = builder.communicate(timeout=300)
    if builder.returncode != 0:
        unavailable(f"cannot build agentrt's wheel: {err[-2000:]}")
    (wheel,) = (work / "dist").glob("agentrt-*.whl")
    return wheel


@pytest.fixture(scope="module")
def user(docker_client: Any) -> User:
    """``agentrt-t1517`` with agentrt in a venv of Debian's python, made once and reused: the
    venv is made when missing, agentrt reinstalled when the source changed."""
    if os.geteuid() != 0:
        unavailable("creating the non-root test user needs root")
    if not DEBIAN_PYTHON.exists() or subprocess.run(
            [str(DEBIAN_PYTHON), "-c", "import ensurepip"], capture_output=True).returncode:
        unavailable(f"{DEBIAN_PYTHON} cannot make a venv: install python3-venv (scripts/setup "
                    "does, as root on apt systems)")
    gid, home = ensure_user()
    person = User(USER, USER_UID, gid, home, home / "venv")
    work = home / ".cache" / "agentrt-test" / "build"
    with open(f"/tmp/agentrt-test-{USER}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = person.venv / ".agentrt-source"
        wanted = source_digest()
        if stamp.exists() and stamp.read_text() == wanted:
            return person
        # The wheel builds (as root, from a copy) while the user makes its venv and installs
        # the dependencies pyproject.toml names; then the wheel goes in, always anew.
        builder = start_wheel_build(work)
        for directory in (home / ".cache", work.parent):  # the user's pip caches there too
            os.chown(directory, person.uid, gid)
        pip = [str(person.venv / "bin" / "pip"), "install", "--quiet",
               "--disable-pip-version-check"]
        dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
            "dependencies"]
        steps = [] if (person.venv / "bin" / "pip").exists() else [
            [str(DEBIAN_PYTHON), "-m", "venv", str(person.venv)]]
        steps.append([*pip, *dependencies])
        for step in steps:
            done = person.run(*step, timeout=600)
            if done.returncode != 0:
                builder.kill()
                unavailable(f"set-up of {USER}'s venv failed: {' '.join(step)}: "
                            f"{done.stderr[-2000:]}")
        wheel = finish_wheel_build(builder, work)
        subprocess.run(["chown", "-R", f"{person.uid}:{gid}", str(work)], check=True)
        step = [*pip, "--no-deps", "--force-reinstall", str(wheel)]
        done = person.run(*step, timeout=600)
        if done.returncode != 0:
            unavailable(f"set-up of {USER}'s venv failed: {' '.join(step)}: "
                        f"{done.stderr[-2000:]}")
        stamp.write_text(wanted)
        shutil.rmtree(work, ignore_errors=True)
    return person


@pytest.fixture
def user_repos(user: User) -> Iterator[list[Path]]:
    """Repositories a test makes in the user's home, removed afterwards (the tests check that
    agentrt left no container or engine volume labelled with them)."""
    made: list[Path] = []
    yield made
    for repo in made:
        shutil.rmtree(repo.parent, ignore_errors=True)


def test_the_user_runs_agentrt_from_a_venv_of_debians_python(user: User) -> None:
    who = user.run("sh", "-c", 'id -u; stat -c %a "$HOME"; command -v agentrt; python3 -c '
                   '"import runtime, sys; print(runtime.__file__); print(sys.base_prefix)"')
    assert who.returncode == 0, who.stderr
    uid, mode, exe, package, prefix = who.stdout.split("\n")[:5]
    assert (uid, mode) == (str(USER_UID), "700")
    assert exe == str(user.venv / "bin" / "agentrt")
    assert package.startswith(str(user.venv)) and prefix == "/usr"


@pytest.mark.parametrize("placement", ["chosen", "host"])
def test_a_run_merges_as_a_user_whose_uid_is_not_1000(
        user: User, user_repos: list[Path], docker_client: Any, placement: str) -> None:
    """``chosen``: where agentrt puts this user's volumes (the engine's side: no loop volumes
    for a non-root user here). ``host``: this host's disk, the object store bound in."""
    extra = {"AGENTRT_ENGINE_VOLUMES": "soft"} if placement == "host" else {}
    repo = user.repo(AWKWARD)
    user_repos.append(repo)
    task_file = repo.parent / "tasks.toml"
    task_file.write_text(MERGE_TASKS)
    proc = user.agentrt("run", str(task_file), "--repo", str(repo), "--json", extra=extra)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert_all_home_and_merged(report)
    seen = user.git(repo, "show", "main:seen-alternates.txt")
    if placement == "host":
        assert {s["disk_limit_mode"] for s in report["sessions"]} == {"soft"}
        assert seen == "/agentrt/objects\n"
    else:
        assert seen == "none\n"  # the engine's side: the objects are in the volume
    assert user.git(repo, "show", "main:copy.md") == "# demo\n"
    assert user.git(repo, "show", "main:written.txt") == "written\n"
    assert user.git(repo, "status", "--porcelain") == ""
    # Everything agentrt wrote in the repository belongs to the user.
    owners = {p.stat().st_uid for p in (repo / ".git").rglob("*")}
    assert owners == {USER_UID}, owners
    assert not labelled(docker_client, repo)


def test_recover_and_gc_as_a_user_whose_uid_is_not_1000(
        user: User, user_repos: list[Path], docker_client: Any) -> None:
    repo = user.repo(AWKWARD)
    user_repos.append(repo)
    task_file = repo.parent / "slow.toml"
    task_file.write_text(SLOW_TASKS)
    proc = subprocess.Popen(
        user.argv(str(user.venv / "bin" / "agentrt"), "run", str(task_file), "--repo",
                  str(repo), "--json"),
        cwd=user.home, env=user.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_running(docker_client, repo, 2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    committer = session_ids(user.agentrt("ps", "--json", "--repo", str(repo)))["committer"]
    recover = user.agentrt("recover", committer, "--repo", str(repo))
    gc = user.agentrt("gc", "--repo", str(repo), "--json")
    assert_recovered(lambda *args: user.git(repo, *args), recover, gc, committer)
    assert not labelled(docker_client, repo)
