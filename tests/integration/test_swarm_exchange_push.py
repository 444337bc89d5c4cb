"""The Swarm harvest obeys nothing the agent wrote, and no one can push work under another
session's name into the run's exchange (issue #27), on the real three-node Swarm of
:mod:`tests.integration.swarm` (the shared ``swarm_cluster`` fixture)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import docker.errors
import pytest
from docker.types import Mount

from runtime.backends.swarm.exchange import Exchange, exchange_name
from runtime.backends.swarm.node_jobs import NodeFinish
from runtime.backends.swarm.service import helper_service_spec, run_one_shot
from runtime.backends.swarm.volumes import NodeStep, create_node_volume, remove_node_volume
from runtime.errors import HarvestError
from runtime.git.harvest import HarvestPlan
from runtime.waiting import wait_until
from tests.integration.swarm import SwarmCluster, SwarmNodeEngine

pytestmark = pytest.mark.docker

BASE = "agentrt/base:latest"

# $1 the attacker's own push URL, $2 the exchange's host; one line per attempt.
ATTACK = r"""
set -u
own=$1; x=git://$2:9418
export HOME=/tmp GIT_CONFIG_NOSYSTEM=1
git init -q /tmp/r && cd /tmp/r
git -c user.name=a -c user.email=a@b commit -q --allow-empty -m forged
try() { if git push -q "$2" "$3" >/tmp/err 2>&1; then echo "$1: pushed";
        else echo "$1: refused $(tr '\n' ' ' < /tmp/err)"; fi; }
try bases "$x/x.git" HEAD:refs/work/sw-b/work
try verdicts "$x/v.git" HEAD:refs/sw-b/home
try guessed "$x/w/sw-b.git" HEAD:refs/work/sw-b/work
try dotdot "$x/w/../x.git" HEAD:refs/work/sw-b/work
try own-as-b "$own" HEAD:refs/work/sw-b/work
try own "$own" HEAD:refs/work/sw-a/work
head -c 1048576 /dev/urandom > big && git add big && \
  git -c user.name=a -c user.email=a@b commit -q -m big
try too-big "$own" HEAD:refs/work/sw-a/big
"""


def _attack(cluster: SwarmCluster, exchange: Exchange, own_url: str) -> dict[str, str]:
    worker = cluster.node("node1")
    spec = helper_service_spec(
        image=BASE, command=["sh", "-c", ATTACK, "attack", own_url,
                             exchange_name(exchange.run_id)],
        node_id=worker.node_id, labels={"agentrt.role": "test-attacker"}, user="1000:1000",
        mounts=[Mount("/tmp", None, type="tmpfs")], name_prefix="agentrt-attack",
        session_id="sw-a")
    spec["networks"] = [exchange.network_id]
    code, output = run_one_shot(cluster.manager.client, spec, timeout=120)
    assert code == 0, output
    return {line.split(":", 1)[0]: line.split(":", 1)[1].strip()
            for line in output.splitlines() if ":" in line}


def _refs(exchange: Exchange, repo: str) -> str:
    return exchange._exec(["git", f"--git-dir={repo}", "for-each-ref", "--format=%(refname)"],
                          "list refs")


def test_a_helper_cannot_push_to_another_sessions_ref_in_the_exchange(
        swarm_cluster: SwarmCluster, tmp_path: Path) -> None:
    """A task on the run's network that knows the exchange's name and its own push URL: it
    cannot write the bases, the verdicts, or any repository of another session (their names
    are random); what it pushes under another session's name lands in its own repository,
    which agentrt never reads for that session. Control: the same push to the bases'
    repository is taken once its config allows pushes (the old exchange's anonymous push)."""
    manager = swarm_cluster.manager.client
    exchange = Exchange.start(manager, "r-push", swarm_cluster.manager.node_id)
    try:
        own = exchange.open_session("sw-a", 64 * 1024)
        exchange.open_session("sw-b", 64 * 1024)
        results = _attack(swarm_cluster, exchange, own)
        for name in ("bases", "verdicts", "guessed", "dotdot"):
            assert results[name].startswith("refused"), results
        assert results["own"] == "pushed" and results["own-as-b"] == "pushed", results
        assert results["too-big"].startswith("refused"), results  # receive.maxInputSize
        b_repo = exchange._push_repo("sw-b")
        assert _refs(exchange, b_repo).strip() == ""
        assert "refs/work" not in _refs(exchange, "/srv/x.git")
        assert "refs/sw-b" not in _refs(exchange, "/srv/v.git")
        plan = HarvestPlan(session_id="sw-b", base_commit="0" * 40, mounts=(), store=None,
                           uid=1000, gid=1000, memory_mb=256)
        with pytest.raises(HarvestError, match="the exchange has no work"):
            exchange.collect_harvest("node1", plan, 0, "", tmp_path, 1024 * 1024)

        # Control: the attack is real; a repository that takes pushes takes this one.
        exchange._exec(["git", "--git-dir=/srv/x.git", "config", "daemon.receivepack", "true"],
                       "open the bases for the control")
        assert _attack(swarm_cluster, exchange, own)["bases"] == "pushed"
        assert "refs/work/sw-b/work" in _refs(exchange, "/srv/x.git")
    finally:
        exchange.stop()


# The agent: a base commit, its own commit and an uncommitted file (both 0600, in a 0700
# directory), and a .git/config that runs its code in any git that reads it. The control:
# git run as the agent does run it.
AGENT = r"""
set -eu
export HOME=/tmp
cd /workspace
git init -q -b main .
git -c user.name=a -c user.email=a@b commit -q --allow-empty -m base
git rev-parse HEAD > .git/test-base
mkdir -m 0700 private
echo committed > private/work.txt && chmod 0600 private/work.txt
git add -A && git -c user.name=a -c user.email=a@b commit -q -m work
echo uncommitted > private/new.txt && chmod 0600 private/new.txt
git config core.fsmonitor 'echo PWNED-FSMONITOR >&2; false'
git config core.hooksPath /workspace/.git/hooks
git status > /dev/null 2> .git/test-control || true
"""


def test_the_swarm_harvest_obeys_nothing_the_agent_wrote_and_reads_its_private_files(
        swarm_cluster: SwarmCluster, tmp_path: Path) -> None:
    """The node harvest runs agentrt's git in a private repository (the agent's fsmonitor
    payload never runs, while the agent's own git does run it: the control), as a uid the
    agent never had that can read the agent's 0600 files, and its work comes home through
    the session's own push repository."""
    manager = swarm_cluster.manager.client
    worker = swarm_cluster.node("node2")
    exchange = Exchange.start(manager, "r-harvest", swarm_cluster.manager.node_id)
    agent = NodeStep({"image": BASE, "command": ["sh", "-c", AGENT], "user": "1000:1000",
                      "cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"],
                      "network_mode": "none", "mounts": [], "detach": True})
    volume = None
    try:
        volume = create_node_volume(
            manager, worker.node_id, "sw-hv", 32, 1000, 1000,
            then=lambda v: [NodeStep({**dict(agent.spec or {}),
                                      "mounts": v.mounts(db_target=None)})])
        root = f"{volume.root}/workspace/.git"
        assert "PWNED-FSMONITOR" in worker.exec(f"cat {root}/test-control")  # the control
        base = worker.exec(f"cat {root}/test-base").strip()
        plan = HarvestPlan(session_id="sw-hv", base_commit=base,
                           mounts=tuple(volume.mounts(db_target=None, read_only=True)),
                           store=None, uid=1000, gid=1000, memory_mb=256)
        harvest, finish = NodeFinish.harvest(exchange, worker.node_id, volume, plan,
                                             tmp_path, 16 * 1024 * 1024)
        try:
            assert "PWNED" not in harvest.log, harvest.log
            assert not harvest.unreadable_files and not harvest.head_unreadable, harvest.log
            assert set(harvest.bundles) == {"work.bundle", "files.bundle"}
            heads = subprocess.run(["git", "bundle", "list-heads",
                                    str(harvest.bundles["work.bundle"])],
                                   capture_output=True, text=True, check=True).stdout
            assert heads.split()[1] == "refs/work/sw-hv/work", heads
            tree = exchange._exec(["git", f"--git-dir={exchange._push_repo('sw-hv')}",
                                   "ls-tree", "-r", "--name-only", "refs/work/sw-hv/work"],
                                  "list the harvested tree")
            assert set(tree.split()) == {"private/work.txt", "private/new.txt"}, tree
        finally:
            removed = finish.release(home=True)
        assert removed
        volume = None
        exchange.forget("sw-hv")
    finally:
        if volume is not None:
            remove_node_volume(manager, worker.node_id, volume)
        exchange.stop()
        _wait_gone(worker)


PROBE = r"""
echo "uid=$(id -u)"
grep -E '^(CapEff|NoNewPrivs)' /proc/self/status
touch /owned 2>/dev/null && echo "root=writable" || echo "root=read-only"
touch /workspace/owned 2>/dev/null && echo "tree=writable" || echo "tree=read-only"
cat /workspace/private/secret.txt
echo "cpu=$(cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)"
echo "pids=$(cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max)"
"""


def test_the_swarm_harvest_container_runs_as_specified_on_the_node(
        swarm_cluster: SwarmCluster) -> None:
    """The harvest's container as the node's engine makes it (the same create body, a probe
    for a command): uid 0 with CAP_DAC_READ_SEARCH alone (it reads the agent's 0600 file),
    no new privileges, a read-only root and tree, one core, its pids limit."""
    from runtime.backends.swarm.node_jobs import node_harvest_spec
    from runtime.backends.swarm.volumes import start_node_steps

    manager = swarm_cluster.manager.client
    worker = swarm_cluster.node("node1")
    private = ("mkdir -m 0700 /workspace/private && echo s3cret > /workspace/private/secret.txt"
               " && chmod 0600 /workspace/private/secret.txt")
    volume = create_node_volume(
        manager, worker.node_id, "sw-probe", 16, 1000, 1000,
        then=lambda v: [NodeStep({"image": BASE, "command": ["sh", "-c", private],
                                  "user": "1000:1000", "cap_drop": ["ALL"],
                                  "network_mode": "none", "mounts": v.mounts(db_target=None),
                                  "detach": True})])
    try:
        plan = HarvestPlan(session_id="sw-probe", base_commit="0" * 40,
                           mounts=tuple(volume.mounts(db_target=None, read_only=True)),
                           store=None, uid=1000, gid=1000, memory_mb=256)
        spec = node_harvest_spec("r-probe", "git://nowhere.invalid/x.git", plan, 8 * 1024 * 1024)
        spec["command"] = ["sh", "-c", PROBE]
        spec["network_mode"] = "none"
        one_shot = start_node_steps(manager, worker.node_id, "sw-probe", [NodeStep(spec)], [],
                                    60)
        try:
            code, output = one_shot.wait(120)
        finally:
            one_shot.remove()
        assert code == 0, output
        facts = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
        assert facts["uid"] == "0" and facts["root"] == "read-only", output
        assert facts["tree"] == "read-only", output
        caps = [line.split()[1] for line in output.splitlines() if line.startswith("CapEff")]
        assert caps == [f"{1 << 2:016x}"], output  # CAP_DAC_READ_SEARCH (bit 2) alone
        assert "NoNewPrivs:\t1" in output and "s3cret" in output, output
        assert facts["cpu"].split()[0] == "100000" and facts["pids"] == "256", output
    finally:
        remove_node_volume(manager, worker.node_id, volume)
        _wait_gone(worker)


def _wait_gone(node: SwarmNodeEngine) -> None:
    """Until the node's engine has no container left (the helpers end on their own)."""
    def names() -> list[str]:
        try:
            return [str(c.name) for c in node.client.containers.list(all=True)]
        except docker.errors.NotFound:  # one went while it was listed
            return ["(going)"]

    wait_until(lambda: not names(), timeout=30, what=f"the containers on {node.hostname}")
