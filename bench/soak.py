"""Soak: runs killed at random moments and at every crash point, then `gc`; count work lost.

Each round starts ``agentrt run`` with ``--tasks`` agents that each commit a file, leave one
uncommitted and sleep a random 0-3 s; the round then either lets it finish, SIGKILLs agentrt
at a random moment, or makes it die at a named step (``AGENTRT_CRASH_AT``). Then ``agentrt gc``
runs and the round checks:

* every session row is final (none stays pending or running),
* every session whose agent finished its script has both files on its branch (lost = 0),
* no branch holds a snapshot that deletes the repository's files,
* nothing is left: no labelled container, mount, loop device, session directory or store.

Run: ``.venv/bin/python bench/soak.py [--rounds N] [--tasks K]``; prints one line per round
and the totals (the numbers in docs/operations.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runtime.git.safe_git import MainRepo  # noqa: E402
from runtime.state.store import Store  # noqa: E402

STEPS = ["branch", "marker", "volume", "checkout", "container", "started", "harvest", "home"]
ENV = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
       "GIT_AUTHOR_NAME": "s", "GIT_AUTHOR_EMAIL": "s@s", "GIT_COMMITTER_NAME": "s",
       "GIT_COMMITTER_EMAIL": "s@s"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=ENV).stdout


def task_file(path: Path, tasks: int, rng: random.Random) -> None:
    body = ["[run]", 'merge = "none"', "max_concurrent_agents = 4", "[run.resource_limits]",
            "memory_mb = 128", "disk_mb = 40", "time_seconds = 120"]
    for i in range(tasks):
        script = (f"echo c{i} > committed-{i}.txt && git add . && git commit -qm c{i} && "
                  f"echo u{i} > uncommitted-{i}.txt && sleep {rng.uniform(0, 3):.2f}")
        body += ["[[tasks]]", f'id = "t{i}"', f"command = ['sh', '-c', '''{script}''']"]
    path.write_text("\n".join(body) + "\n")


def leftovers(client: docker.DockerClient, repo: Path) -> list[str]:
    state = repo / ".git" / "agentrt"
    found = [c.name for c in client.containers.list(
        all=True, filters={"label": f"agentrt.repo={repo}"})]
    found += [ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines()
              if ln.split()[1].startswith(str(state))]
    if (state / "sessions").is_dir():
        found += [p.name for p in (state / "sessions").iterdir()]
    if (state / "runs").is_dir():
        found += [str(p) for p in (state / "runs").glob("*/objects/*")]
    return found


def one_round(repo: Path, tmp: Path, tasks: int, rng: random.Random,
              client: docker.DockerClient) -> dict[str, int | str]:
    task_file(tmp / "tasks.toml", tasks, rng)
    fault = rng.choice(["none", "sigkill", *STEPS])
    env = {**os.environ}
    if fault in STEPS:
        env["AGENTRT_CRASH_AT"] = fault
    proc = subprocess.Popen([sys.executable, "-m", "runtime.cli", "run", str(tmp / "tasks.toml"),
                             "--repo", str(repo), "--json"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if fault == "sigkill":
        time.sleep(rng.uniform(0.3, 4.0))
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=300)
    subprocess.run([sys.executable, "-m", "runtime.cli", "gc", "--repo", str(repo), "--json"],
                   capture_output=True, timeout=300, check=False)
    lost = pending = deleting = 0
    with Store(MainRepo(repo).state_dir / "state.db") as store:
        rows = store.list_sessions(store.latest_run().id)  # type: ignore[union-attr]
    for row in rows:
        if not row.status.is_final:
            pending += 1
        head = row.result.head_commit
        if not row.branch or not head:
            continue
        files = set(git(repo, "ls-tree", "-r", "--name-only", head).split())
        if "README.md" not in files:
            deleting += 1
        # An agent that finished its script (its exit was recorded) must have both files home;
        # one killed mid-script may not have written them yet.
        finished = row.result.exit_code == 0
        i = row.task_id[1:]
        if finished and not {f"committed-{i}.txt", f"uncommitted-{i}.txt"} <= files:
            lost += 1
    return {"fault": fault, "sessions": len(rows), "lost": lost, "pending": pending,
            "deleting": deleting, "left": len(leftovers(client, repo))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    rng = random.Random(args.seed)
    client = docker.from_env()
    totals = {"sessions": 0, "lost": 0, "pending": 0, "deleting": 0, "left": 0}
    with tempfile.TemporaryDirectory(prefix="agentrt-soak-") as tmpdir:
        tmp = Path(tmpdir)
        repo = tmp / "repo"
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        (repo / "README.md").write_text("# soak\n")
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "initial")
        started = time.time()
        for n in range(1, args.rounds + 1):
            result = one_round(repo, tmp, args.tasks, rng, client)
            print(json.dumps({"round": n, **result}), flush=True)
            for key in totals:
                totals[key] += int(result[key])
        print(json.dumps({"rounds": args.rounds, **totals,
                          "seconds": round(time.time() - started, 1)}))


if __name__ == "__main__":
    main()
