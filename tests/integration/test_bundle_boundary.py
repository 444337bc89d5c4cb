"""The host never reads what an agent can write: work crosses back only as a verified bundle.

Each attack is performed by a real agent in a real container; the test asserts the host did not
follow it, next to a control showing that a naive host-side read of the same tree (what agentrt
did before the boundary) would have followed it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from runtime.backends.recovery import collect_garbage
from runtime.config import ResourceLimits
from runtime.git.object_store import CACHE_DIR, ensure_store, remove_run_stores
from runtime.git.safe_git import MainRepo
from runtime.models import SessionStatus, WorkState
from tests.conftest import git, make_repo
from tests.integration.helpers import by_task, run_tasks, sh

pytestmark = pytest.mark.docker


def victim(path: Path, packed: bool) -> tuple[Path, str]:
    """Another repository on the host with a commit the agent must never bring home."""
    make_repo(path, {"victim-secret.txt": f"host secret {path.name}\n"})
    if packed:
        git(path, "gc", "-q")
    return path, git(path, "rev-parse", "HEAD").strip()


def loose_dirs(repo: Path) -> list[str]:
    objects = repo / ".git" / "objects"
    return sorted(p.name for p in objects.iterdir() if len(p.name) == 2)


def attacks(v: Path, vc: str, lv: Path, lc: str, dirs: list[str]) -> dict[str, str]:
    """Agent scripts, one per attack on the git dir or tree the host used to read."""
    link_dirs = " ; ".join(
        f"rm -rf .git/objects/{d} && ln -s {lv}/.git/objects/{d} .git/objects/{d}" for d in dirs)
    ref = ".git/refs/heads/$AGENT_BRANCH"
    return {
        "objects-pack": f"rm -rf .git/objects/pack && ln -s {v}/.git/objects/pack "
                        f".git/objects/pack && echo {vc} > {ref}",
        "packed-refs": f"rm -rf .git/objects/pack && ln -s {v}/.git/objects/pack "
                       f".git/objects/pack && rm -f {ref} && ln -s {v}/.git/packed-refs "
                       ".git/packed-refs && echo 'ref: refs/heads/main' > .git/HEAD",
        "objects-xx": f"{link_dirs} ; echo {lc} > {ref}",
        "refs-heads": f"{link_dirs} ; rm -f {ref} && ln -s {lv}/.git/refs/heads/main {ref}",
        # git itself refuses a HEAD symlink leaving refs/: the link goes through a ref.
        "head": f"{link_dirs} ; ln -s {lv}/.git/refs/heads/main .git/refs/heads/evil && "
                "rm -f .git/HEAD && ln -s refs/heads/evil .git/HEAD",
        "alternates": f"echo {v}/.git/objects >> .git/objects/info/alternates && echo {vc} > {ref}",
        "objects-info": f"mkdir evil-info && echo {v}/.git/objects > evil-info/alternates && "
                        f"rm -rf .git/objects/info && ln -s ../../evil-info .git/objects/info && "
                        f"echo {vc} > {ref}",
        "dot-git-symlink": f"rm -rf .git && ln -s {v}/.git .git",
        "gitdir-file": f"rm -rf .git && printf 'gitdir: {v}/.git\\n' > .git",
        "nested-gitdir-file": f"mkdir sub && printf 'gitdir: {v}/.git\\n' > sub/.git && "
                              "echo x > sub/f",
        "nested-git-dir": f"mkdir sub2 && ln -s {v}/.git sub2/.git && echo y > sub2/g",
    }


def naive_import(workspace: Path, scratch: Path, tmp: Path) -> str:
    """What a host-side fetch and ``add -A`` over the agent's tree (the old way) records."""
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
           "GIT_INDEX_FILE": str(tmp / "naive.index")}
    subprocess.run(["git", f"--git-dir={scratch}", "-c", "protocol.file.allow=always",
                    "-c", "safe.directory=*", "fetch", "-q", "--no-tags",
                    "--upload-pack=git -c safe.directory=* upload-pack", str(workspace),
                    "+HEAD:refs/naive"],
                   env=env, capture_output=True, check=False)
    subprocess.run(["git", f"--git-dir={scratch}", f"--work-tree={workspace}", "add", "-A",
                    "--ignore-errors", "."], env=env, capture_output=True, check=False)
    listed = subprocess.run(["git", f"--git-dir={scratch}", "ls-files", "-s"], env=env,
                            capture_output=True, text=True, check=False).stdout
    log = subprocess.run(["git", f"--git-dir={scratch}", "log", "--format=%H", "refs/naive"],
                         env=env, capture_output=True, text=True, check=False).stdout
    return listed + log


def test_git_dir_and_gitdir_attacks_bring_nothing_of_another_host_repository(
    repo: Path, tmp_path: Path, runtime_name: str
) -> None:
    v, vc = victim(tmp_path / "victim", packed=True)
    lv, lc = victim(tmp_path / "loose-victim", packed=False)
    scripts = attacks(v, vc, lv, lc, loose_dirs(lv))
    tasks = [sh(name, f"echo mine > {name}.txt; git add -A; git commit -qm mine; {script}")
             for name, script in scripts.items()]
    report = run_tasks(repo, tasks, cleanup_on_complete=False, max_concurrent_agents=4,
                       runtime=runtime_name)
    try:
        results = by_task(report)
        for name, result in results.items():
            assert result.status is SessionStatus.SUCCEEDED, (name, result.reason)
            assert result.work is WorkState.HOME, (name, result.work, result.warnings)
            tree = git(repo, "ls-tree", "-r", result.head_commit or "")
            assert f"{name}.txt" in tree, name  # the agent's own work still came home
            assert vc not in tree and lc not in tree, name
        for commit in (vc, lc):
            probe = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", commit],
                                   capture_output=True, check=False)
            assert probe.returncode != 0, "an object of another host repository came home"
        # Control: the same trees read the naive way on the host do reach the victims.
        for name, result in results.items():
            scratch = tmp_path / f"scratch-{name}"
            git(tmp_path, "clone", "-q", "--bare", str(repo), str(scratch))
            workspace = repo / ".git/agentrt/sessions" / result.id / "volume/workspace"
            seen = naive_import(workspace, scratch, tmp_path)
            assert vc in seen or lc in seen, f"control: attack {name} is not real"
    finally:
        collect_garbage(MainRepo(repo), _client())


def _client() -> object:
    from runtime.engine.discovery import get_client

    return get_client()


GITMODULES = """[submodule "x"]
\tpath = x
\turl = https://example.invalid/x
\tupdate = !touch /tmp/pwned
"""


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "uncommitted"])
def test_gitmodules_with_update_command_never_reaches_the_branch(
    repo: Path, tmp_path: Path, committed: bool
) -> None:
    commit = "git add -A && git commit -qm modules" if committed else "true"
    script = f"cat > .gitmodules <<'EOF'\n{GITMODULES}EOF\necho ok > ok.txt\n{commit}"
    base = git(repo, "rev-parse", "HEAD").strip()
    report = run_tasks(repo, [sh("modules", script)])
    result = by_task(report)["modules"]
    assert result.status is SessionStatus.SUCCEEDED
    assert result.work is WorkState.REFUSED, result.warnings
    assert report.exit_code() == 1
    assert git(repo, "rev-parse", result.branch).strip() == base
    assert any("gitmodulesUpdate" in w for w in result.warnings), result.warnings
    kept = sorted((repo / ".git/agentrt/harvest" / result.id).glob("rejected-*.bundle"))
    assert kept, "the refused bundle is kept for inspection"
    # Control: plain git takes the same bundle without a word (git 2.39 does not fsck bundles).
    scratch = tmp_path / "scratch"
    git(tmp_path, "clone", "-q", "--bare", str(repo), str(scratch))
    git(scratch, "fetch", "-q", str(kept[0]), "refs/heads/*:refs/naive/*")
    naive = git(scratch, "for-each-ref", "--format=%(refname)", "refs/naive/").split()[0]
    assert "update = !touch" in git(scratch, "show", f"{naive}:.gitmodules")


def test_promisor_remote_with_a_missing_blob_brings_only_the_files(
    repo: Path, tmp_path: Path
) -> None:
    canary = tmp_path / "fetched-from-here"
    make_repo(canary)
    script = f"""
git config remote.origin.url {canary}
git config remote.origin.promisor true
git config extensions.partialClone origin
echo real > real.txt
tree=$(printf '100644 blob %s\\tmissing.txt\\n' 0123456789012345678901234567890123456789 | git mktree --missing)
c=$(git commit-tree "$tree" -p HEAD -m "points at a blob nobody has")
git update-ref "refs/heads/$AGENT_BRANCH" "$c"
"""
    report = run_tasks(repo, [sh("promisor", script)])
    result = by_task(report)["promisor"]
    assert result.work is WorkState.HOME, result.warnings
    tree = git(repo, "ls-tree", "-r", "--name-only", result.head_commit or "").split()
    assert "real.txt" in tree and "missing.txt" not in tree
    assert any("could not be imported" in w for w in result.warnings)
    git(repo, "fsck", "--no-dangling", "--connectivity-only")


def test_a_file_over_max_file_mb_is_refused_with_its_size(repo: Path) -> None:
    script = "head -c 3145728 /dev/urandom > big.bin"
    report = run_tasks(repo, [sh("big", script)], max_file_mb=1)
    result = by_task(report)["big"]
    assert result.work is WorkState.REFUSED
    assert any("3 MiB" in w and "max_file_mb=1" in w for w in result.warnings), result.warnings
    assert report.exit_code() == 1


def test_sixty_five_thousand_tiny_files_come_home_as_one_pack(repo: Path) -> None:
    objects = repo / ".git" / "objects"
    before_loose = sum(1 for d in objects.iterdir() if len(d.name) == 2 for _ in d.iterdir())
    packs_before = set((objects / "pack").glob("*.pack"))
    script = ("python3 -c \"import os\nos.mkdir('many')\n"
              "[open(f'many/{i}', 'w').write(str(i)) for i in range(65536)]\"")
    limits = ResourceLimits(memory_mb=1024, cpu_percent=100, time_seconds=300, disk_mb=1400,
                            pids=128)
    report = run_tasks(repo, [sh("flood", script)], resource_limits=limits)
    result = by_task(report)["flood"]
    assert result.work is WorkState.HOME, result.warnings
    count = git(repo, "ls-tree", "-r", "--name-only", result.head_commit or "", "many/").count("\n")
    assert count == 65536
    after_loose = sum(1 for d in objects.iterdir() if len(d.name) == 2 for _ in d.iterdir())
    assert after_loose == before_loose
    assert len(set((objects / "pack").glob("*.pack")) - packs_before) == 1


def test_a_secret_written_to_a_file_is_refused_by_name_never_by_value(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = "s3cr3t-" + os.urandom(8).hex()
    monkeypatch.setenv("AGENTRT_TEST_TOKEN", value)
    script = ('echo "$AGENTRT_TEST_TOKEN" > leaked.txt; '
              'printf "%s" "xx$AGENTRT_TEST_TOKEN" | base64 > leaked.b64; echo ok > ok.txt')
    report = run_tasks(repo, [sh("leak", script, secrets=["AGENTRT_TEST_TOKEN"])])
    result = by_task(report)["leak"]
    assert result.work is WorkState.REFUSED
    assert any("AGENTRT_TEST_TOKEN" in w for w in result.warnings)
    assert value not in report.model_dump_json()
    grep = subprocess.run(["git", "-C", str(repo), "grep", "-q", value, "--all"],
                          capture_output=True, check=False)
    assert grep.returncode != 0
    # Nor is it kept on disk as a refused bundle (other refusals keep theirs for inspection).
    state = repo / ".git" / "agentrt"
    holding = []
    for path in state.rglob("*"):
        try:
            if path.is_file() and value.encode() in path.read_bytes():
                holding.append(path)
        except OSError:
            continue  # gone while we looked
    assert not holding, holding


def deterministic_commit(name: str) -> str:
    """A shell snippet making the same commit id wherever it runs on the same base."""
    return (f"echo {name} > {name}.txt && git add {name}.txt && "
            "GIT_AUTHOR_DATE='2020-01-01T00:00:00Z' GIT_COMMITTER_DATE='2020-01-01T00:00:00Z' "
            "git -c user.name=a -c user.email=a@a commit -qm " + name)


def expected_commit(repo: Path, tmp_path: Path, name: str) -> str:
    clone = tmp_path / f"expect-{name}"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    subprocess.run(["sh", "-c", deterministic_commit(name)], cwd=clone, check=True,
                   env={**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null"})
    return git(clone, "rev-parse", "HEAD").strip()


def probe(sha: str) -> str:
    return (f"if git cat-file -e {sha} 2>/dev/null; then echo visible; else echo hidden; fi "
            f"> probe-{sha[:8]}.txt")


def test_a_running_agent_sees_only_its_base_and_its_dependencies(
    repo: Path, tmp_path: Path
) -> None:
    git(repo, "checkout", "-q", "-b", "other")
    (repo / "other.txt").write_text("another branch\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "other branch")
    other = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "checkout", "-q", "main")
    base = git(repo, "rev-parse", "HEAD").strip()
    first = expected_commit(repo, tmp_path, "first")
    live = expected_commit(repo, tmp_path, "live")
    tasks = [
        sh("first", deterministic_commit("first")),
        # Runs while "live" is running (two slots), after "first" finished (deps order).
        sh("live", deterministic_commit("live") + " && sleep 6"),
        sh("snoop", f"sleep 2; {probe(base)}; {probe(other)}; {probe(first)}; {probe(live)}",
           deps=["first"]),
        sh("later", f"{probe(first)}", deps=["first"]),
    ]
    tasks.append(sh("outsider", f"sleep 3; {probe(first)}; {probe(live)}"))
    report = run_tasks(repo, tasks, max_concurrent_agents=3)
    results = by_task(report)
    assert all(r.status is SessionStatus.SUCCEEDED for r in results.values()), results
    assert results["first"].head_commit == first and results["live"].head_commit is not None

    def seen(task: str, sha: str) -> str:
        return git(repo, "show", f"{results[task].head_commit}:probe-{sha[:8]}.txt").strip()

    assert seen("snoop", base) == "visible"           # control: the base is there
    assert seen("snoop", first) == "visible"          # control: a dependency is there
    assert seen("snoop", other) == "hidden"           # another branch of the user's repo
    assert seen("snoop", live) == "hidden"            # a concurrent session's commit
    assert seen("outsider", first) == "hidden"        # a session that finished earlier
    assert seen("outsider", live) == "hidden"
    # Control: every one of those commits is in the user's repository by now.
    for sha in (other, first):
        git(repo, "cat-file", "-e", sha)


def test_run_leaves_no_object_store_and_no_harvest_behind(repo: Path) -> None:
    report = run_tasks(repo, [sh("a", "echo a > a.txt"), sh("b", "true")])
    assert all(s.work is WorkState.HOME for s in report.sessions)
    state = repo / ".git" / "agentrt"
    assert not any((state / "runs").glob("*/objects/*"))
    assert not any((state / "harvest").glob("*"))
    assert "a.txt" in git(repo, "ls-tree", "-r", "--name-only", by_task(report)["a"].branch)



def reaches_everything(store: Path, commit: str, scratch: Path) -> bool:
    """Whether the objects in ``store`` alone hold everything ``commit`` reaches."""
    if not scratch.exists():
        git(scratch.parent, "init", "-q", "--bare", str(scratch))
    proc = subprocess.run(["git", f"--git-dir={scratch}", "rev-list", "--objects", commit],
                          env={**os.environ, "GIT_OBJECT_DIRECTORY": str(store)},
                          capture_output=True, check=False)
    return proc.returncode == 0


def test_a_run_from_the_last_runs_base_links_its_store_instead_of_packing_it_again(
        repo: Path, tmp_path: Path) -> None:
    main = MainRepo(repo)
    base = main.rev_parse("HEAD")
    ensure_store(main, "run-one", base)
    remove_run_stores(main, "run-one")
    store = ensure_store(main, "run-two", base)
    cache = main.state_dir / CACHE_DIR
    packs = sorted(p.stat().st_ino for p in (store / "pack").iterdir())
    assert packs == sorted(p.stat().st_ino for p in (cache / base / "pack").iterdir())
    assert reaches_everything(store, base, tmp_path / "probe.git")
    # Another base: built (its own closure, which the old base's packs alone do not hold),
    # and the cache keeps that one only.
    (repo / "new.txt").write_text("new\n")
    git(repo, "add", "new.txt")
    git(repo, "commit", "-qm", "new")
    newer = main.rev_parse("HEAD")
    assert not reaches_everything(store, newer, tmp_path / "probe.git")
    built = ensure_store(main, "run-three", newer)
    assert reaches_everything(built, newer, tmp_path / "probe.git")
    assert sorted(p.name for p in cache.iterdir()) == [newer]
    remove_run_stores(main, "run-two")
    remove_run_stores(main, "run-three")
