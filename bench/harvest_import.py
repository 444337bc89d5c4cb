"""The harvest and import of one session's tree alone: harvest container + bundle import.

A 2,000-file repository and a session tree of it (one commit of the agent's, one uncommitted
file; the agent's uid), brought home ``--runs`` times by
:func:`runtime.git.work_home.bring_work_home` on the local engine, the way a session's end does
(the bundles taken as files on an engine that shares this disk). Runs against whatever
``runtime`` it imports, so two checkouts can be compared run for run, alternating:

    python bench/harvest_import.py --runs 3          # this checkout
    python /copy/of/other/bench/harvest_import.py --runs 3

Prints one JSON line: the runtime's path and every run's seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker  # noqa: E402
from docker.types import Mount  # noqa: E402

import runtime  # noqa: E402
import runtime.git.harvest as harvest  # noqa: E402
from runtime.git.bundle import ImportPolicy  # noqa: E402
from runtime.git.safe_git import MainRepo  # noqa: E402
from runtime.git.work_home import bring_work_home  # noqa: E402

ENV = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
       "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
       "GIT_COMMITTER_EMAIL": "b@b"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=ENV).stdout.strip()


def make_trees(root: Path, files: int) -> tuple[Path, Path]:
    repo, tree = root / "repo", root / "tree"
    git(root, "init", "-q", "-b", "main", str(repo))
    rng = __import__("random").Random(1)
    for i in range(files):
        path = repo / f"d{i % 40}" / f"f{i}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(rng.choice("abcdef \n") for _ in range(6000)))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    git(root, "clone", "-q", str(repo), str(tree))
    (tree / "new.txt").write_text("the agent's commit\n")
    git(tree, "add", "new.txt")
    git(tree, "commit", "-qm", "agent")
    (tree / "dirty.txt").write_text("uncommitted\n")
    for dirpath, _dirs, names in os.walk(tree):
        os.chown(dirpath, 1000, 1000)
        for name in names:
            os.lchown(os.path.join(dirpath, name), 1000, 1000)
    return repo, tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    client = docker.from_env()
    root = Path(tempfile.mkdtemp(prefix="agentrt-bench-harvest-"))
    try:
        repo, tree = make_trees(root, args.files)
        base = git(repo, "rev-parse", "main")
        plan = harvest.HarvestPlan(
            session_id="bench-harvest", base_commit=base, store=None, uid=1000, gid=1000,
            memory_mb=256, mounts=(Mount("/workspace", str(tree), type="bind", read_only=True),))
        takes_files = "shares_disk" in inspect.signature(harvest.run_harvest).parameters

        def harvester(p: harvest.HarvestPlan, dest: Path, limit: int) -> harvest.Harvest:
            if takes_files:
                return harvest.run_harvest(client, p, dest, limit, shares_disk=True)
            # Before issue 27: the bundles written into a bound directory of this host.
            return harvest.run_harvest(client, dataclasses.replace(p, bundles_dir=dest), dest,
                                       limit)

        times = []
        for i in range(args.runs):
            branch = f"agent/bench/{i}"
            git(repo, "branch", "-f", branch, base)
            began = time.perf_counter()
            outcome = bring_work_home(client, MainRepo(repo), plan, branch=branch,
                                      policy=ImportPolicy(), harvester=harvester)
            times.append(round(time.perf_counter() - began, 3))
            if outcome.state.value != "home":
                raise SystemExit(f"the work did not come home: {outcome.warnings}")
        print(json.dumps({"runtime": str(Path(runtime.__file__).parent), "times": times}))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
