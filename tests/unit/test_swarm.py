"""The pure parts of the Swarm foundations: placement, admission, service specs, doctor rules."""

from __future__ import annotations

import json
from typing import Any

import pytest
from docker.types import Mount

from runtime.backends.swarm.agent import EndStats, TaskView
from runtime.backends.swarm.backend import task_end_facts
from runtime.backends.swarm.doctor import swarm_check, swarm_images_check
from runtime.backends.swarm.images import NodeImage, node_addresses
from runtime.backends.swarm.node_jobs import _harvest_code
from runtime.backends.swarm.nodes import (
    Need,
    Reserved,
    SwarmNode,
    check_fits,
    node_from_attrs,
    place,
    reserved_from_tasks,
    swarm_status,
)
from runtime.backends.swarm.service import (
    FAST_FOR_S,
    FAST_POLL_S,
    NETWORK_GUARD,
    POLL_S,
    helper_service_spec,
    poll_delay,
    require_api,
    session_service_spec,
    task_outcome,
)
from runtime.backends.swarm.teardown import end_container
from runtime.backends.swarm.volumes import NODE_SCRIPT, NodeStep, _node_job, container_body
from runtime.config import ResourceLimits
from runtime.engine.container import ENTRYPOINT, ContainerPlan
from runtime.engine.volume_helpers import REMOVE_SCRIPT
from runtime.errors import ConfigError, EngineError, SessionError
from runtime.models import SessionStatus
from runtime.state.classify import NODE_LOST, classify

GIB = 2**30
CPU = 1_000_000_000


def node(name: str, mem_gib: float, cpus: float, state: str = "ready",
         availability: str = "active", role: str = "worker") -> SwarmNode:
    return SwarmNode(id=f"id-{name}", hostname=name, role=role,  # type: ignore[arg-type]
                     state=state, availability=availability, nano_cpus=int(cpus * CPU),
                     memory_bytes=int(mem_gib * GIB))


NODES = [node("a", 8, 4), node("b", 16, 2), node("c", 4, 8)]


@pytest.mark.parametrize(("need_gib", "need_cpus", "reserved", "nodes", "expected"), [
    # the most free memory wins
    (1, 1, {}, NODES, "b"),
    # what is reserved counts: b has 16 - 12 = 4 left, a has 8
    (1, 1, {"id-b": Reserved(12 * GIB, 0)}, NODES, "a"),
    # CPU must fit too: only c has 5 CPUs free
    (1, 5, {}, NODES, "c"),
    # exactly full fits
    (16, 2, {}, NODES, "b"),
    # nothing fits
    (17, 1, {}, NODES, None),
    (1, 9, {}, NODES, None),
    # reservations fill a node's CPU
    (1, 1, {"id-b": Reserved(0, 2 * CPU), "id-a": Reserved(0, 4 * CPU)}, NODES, "c"),
    # not ready, drained or paused nodes are never chosen
    (1, 1, {}, [node("b", 16, 2, state="down"), node("a", 8, 4)], "a"),
    (1, 1, {}, [node("b", 16, 2, availability="drain"), node("a", 8, 4)], "a"),
    (1, 1, {}, [node("b", 16, 2, availability="pause")], None),
    # a tie on memory goes to more free CPU, then to the host name
    (1, 1, {}, [node("y", 8, 2), node("x", 8, 4)], "x"),
    (1, 1, {}, [node("y", 8, 4), node("x", 8, 4)], "x"),
    (1, 1, {}, [], None),
])
def test_place_picks_the_fitting_node_with_most_free_memory(
        need_gib: float, need_cpus: float, reserved: dict[str, Reserved],
        nodes: list[SwarmNode], expected: str | None) -> None:
    chosen = place(Need("t", int(need_gib * GIB), int(need_cpus * CPU)), nodes, reserved)
    assert (chosen.hostname if chosen else None) == expected


def test_need_of_limits_converts_mib_and_percent() -> None:
    assert Need.of_limits("t", 512, 150) == Need("t", 512 * 2**20, 1_500_000_000)


def test_check_fits_passes_when_every_task_fits_somewhere() -> None:
    check_fits([Need("small", GIB, CPU), Need("wide", GIB, 8 * CPU),
                Need("big", 16 * GIB, 2 * CPU)], NODES)


@pytest.mark.parametrize(("needs", "names"), [
    ([Need("ok", GIB, CPU), Need("huge", 32 * GIB, CPU)], ["task huge", "32768 MiB", "1 CPUs"]),
    ([Need("greedy", GIB, 16 * CPU)], ["task greedy", "16 CPUs"]),
    # fits a node's memory and another's CPU, but no single node's both
    ([Need("both", 10 * GIB, 6 * CPU)], ["task both"]),
])
def test_check_fits_names_the_task_and_the_biggest_node(needs: list[Need],
                                                        names: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        check_fits(needs, NODES)
    message = str(caught.value)
    for name in [*names, "biggest is b (16384 MiB, 2 CPUs)"]:
        assert name in message


def test_check_fits_ignores_nodes_that_cannot_take_tasks() -> None:
    with pytest.raises(ConfigError, match="no Swarm node is ready and active: b"):
        check_fits([Need("t", GIB, CPU)], [node("b", 16, 2, state="down")])
    with pytest.raises(ConfigError, match="biggest is a"):
        check_fits([Need("t", 12 * GIB, CPU)],
                   [node("b", 16, 2, availability="drain"), node("a", 8, 4)])


def test_reserved_sums_only_tasks_that_hold_resources() -> None:
    def task(node_id: str, state: str, mem: int, cpu: int,
             desired: str = "running") -> dict[str, Any]:
        return {"NodeID": node_id, "DesiredState": desired, "Status": {"State": state},
                "Spec": {"Resources": {"Reservations": {"MemoryBytes": mem, "NanoCPUs": cpu}}}}

    tasks = [task("n1", "running", 100, 10), task("n1", "pending", 50, 5),
             task("n1", "complete", 1000, 1000), task("n2", "running", 7, 0),
             task("n2", "running", 1000, 1000, desired="shutdown"), task("", "pending", 9, 9),
             {"NodeID": "n3", "Status": {"State": "running"}}]
    assert reserved_from_tasks(tasks) == {"n1": Reserved(150, 15), "n2": Reserved(7, 0),
                                          "n3": Reserved(0, 0)}


def test_node_from_the_api_document() -> None:
    attrs = {"ID": "abc", "Spec": {"Role": "manager", "Availability": "drain"},
             "Description": {"Hostname": "h1",
                             "Resources": {"NanoCPUs": 2 * CPU, "MemoryBytes": GIB}},
             "Status": {"State": "ready"}}
    assert node_from_attrs(attrs) == SwarmNode("abc", "h1", "manager", "ready", "drain",
                                               2 * CPU, GIB)
    assert not node_from_attrs(attrs).schedulable


class FakeInfo:
    def __init__(self, swarm: dict[str, Any]) -> None:
        self.swarm = swarm

    def info(self) -> dict[str, Any]:
        return {"Swarm": self.swarm}


def test_swarm_status_requires_a_manager() -> None:
    with pytest.raises(EngineError, match="not part of a Docker Swarm.*inactive"):
        swarm_status(FakeInfo({"LocalNodeState": "inactive"}))  # type: ignore[arg-type]
    with pytest.raises(EngineError, match="is a Swarm worker .*node n2"):
        swarm_status(FakeInfo({"LocalNodeState": "active", "NodeID": "n2",  # type: ignore[arg-type]
                               "ControlAvailable": False}))
    status = swarm_status(FakeInfo({  # type: ignore[arg-type]
        "LocalNodeState": "active", "NodeID": "n1", "ControlAvailable": True,
        "Cluster": {"ID": "c1"}, "Managers": 1, "Nodes": 3}))
    assert (status.node_id, status.cluster_id, status.managers, status.nodes) == \
        ("n1", "c1", 1, 3)


def plan(**kw: Any) -> ContainerPlan:
    fields: dict[str, Any] = dict(
        session_id="a-123456", run_id="r1", image="agentrt/base:latest", command=["agent", "go"],
        limits=ResourceLimits(memory_mb=512, cpu_percent=150, pids=64, disk_mb=100,
                              time_seconds=600),
        uid=1000, gid=1000,
        mounts=(Mount("/workspace", "/var/lib/docker/agentrt/sessions/a/volume/workspace",
                             type="bind"),),
        labels={"agentrt.repo": "/r"}, env={"A": "1"}, grace_seconds=7,
    )
    fields.update(kw)
    return ContainerPlan(**fields)


def test_session_service_spec_limits_reserves_and_pins() -> None:
    spec = session_service_spec(plan(), "node-7", "1.41")
    resources = spec["resources"]
    assert resources["Limits"] == {"MemoryBytes": 512 * 2**20, "NanoCPUs": 1_500_000_000,
                                   "Pids": 64}
    assert resources["Reservations"] == {"MemoryBytes": 512 * 2**20, "NanoCPUs": 1_500_000_000}
    assert spec["constraints"] == ["node.id==node-7"]
    assert spec["mode"]["replicated"] == {"Replicas": 1}
    assert spec["restart_policy"]["Condition"] == "none"
    assert spec["cap_drop"] == ["ALL"] and spec["init"] is True and spec["read_only"] is True
    assert spec["user"] == "1000:1000"
    assert spec["env"] == {"HOME": "/tmp", "TMPDIR": "/tmp", "A": "1"}
    for labels in (spec["labels"], spec["container_labels"]):
        assert labels["agentrt.session"] == "a-123456" and labels["agentrt.run"] == "r1"
        assert labels["agentrt.repo"] == "/r" and labels["agentrt.time_seconds"] == "600"
    assert spec["mounts"][0]["Source"].endswith("/workspace")
    assert spec["mounts"][-1]["Type"] == "tmpfs" and spec["mounts"][-1]["Target"] == "/tmp"
    assert "networks" not in spec
    assert spec["stop_grace_period"] == 7 * 10**9
    # the guard first, then the local entry point, around the agent's argv
    assert spec["command"][:2] == ["sh", "-c"]
    assert spec["command"][2] == NETWORK_GUARD + ENTRYPOINT
    assert spec["command"][3:] == ["agentrt-entry", "607", "7", "agent", "go"]
    assert len(spec["name"]) <= 63


@pytest.mark.parametrize(("changes", "error", "words"), [
    ({"uid": 0}, SessionError, "root"),
    ({"mounts": ()}, SessionError, "volume made on its node"),
    ({"runtime": "runsc"}, ConfigError, "runtime 'runsc'"),
    ({"network": "bridge"}, ConfigError, "no network"),
])
def test_session_service_spec_refuses_what_swarm_cannot_do(
        changes: dict[str, Any], error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        session_service_spec(plan(**changes), "node-7", "1.41")


def test_api_older_than_1_41_is_refused_by_name() -> None:
    require_api("1.41")
    require_api("1.43")
    with pytest.raises(EngineError, match=r"API 1\.40: .*pids limit.*API 1\.41"):
        session_service_spec(plan(), "n", "1.40")
    with pytest.raises(EngineError, match="unreadable"):
        require_api("latest")


def test_helper_service_spec_is_pinned_capless_and_limited() -> None:
    spec = helper_service_spec(image="i", command=["true"], node_id="n1",
                               labels={"agentrt.role": "volume-helper"})
    assert spec["constraints"] == ["node.id==n1"] and spec["cap_drop"] == ["ALL"]
    assert spec["resources"]["Limits"]["Pids"] == 64
    assert spec["container_labels"] == {"agentrt.role": "volume-helper"}


@pytest.mark.parametrize(("status", "expected"), [
    ({"State": "complete", "ContainerStatus": {"ContainerID": "c", "ExitCode": 0}},
     ("complete", 0, "")),
    ({"State": "failed", "Err": "task: non-zero exit (3)",
      "ContainerStatus": {"ContainerID": "c", "ExitCode": 3}},
     ("failed", 3, "task: non-zero exit (3)")),
    ({"State": "rejected", "Err": "No such image: x"}, ("rejected", None, "No such image: x")),
    ({"State": "failed", "Err": "starting container failed",
      "ContainerStatus": {"ContainerID": "", "ExitCode": 0}},
     ("failed", None, "starting container failed")),
    ({"State": "running", "Message": "started", "ContainerStatus": {"ContainerID": "c"}},
     ("running", None, "started")),
])
def test_task_outcome(status: dict[str, Any], expected: tuple[str, int | None, str]) -> None:
    assert task_outcome({"Status": status}) == expected


def test_node_addresses_from_flags_or_environment() -> None:
    assert node_addresses(["tcp://a:1", "tcp://b:2", "tcp://a:1"]) == ["tcp://a:1", "tcp://b:2"]
    assert node_addresses([], env="tcp://a:1, ssh://u@b  unix:///x.sock") == \
        ["tcp://a:1", "ssh://u@b", "unix:///x.sock"]
    assert node_addresses([], env="") == []
    with pytest.raises(ConfigError, match="not a URL"):
        node_addresses(["10.0.0.1:2375"])


def test_container_body_is_what_containers_create_sends() -> None:
    body = container_body({
        "image": "agentrt/base:latest", "command": ["sh", "-c", "x"], "user": "0:0",
        "cap_drop": ["ALL"], "cap_add": ["SYS_ADMIN"], "devices": ["/dev/loop-control:/dev/loop-control:rwm"],
        "device_cgroup_rules": ["b 7:* rwm"], "volumes": {"@STATE@": {"bind": "/state",
                                                                      "mode": "rw,rshared"}},
        "network_mode": "none", "mem_limit": 256, "pids_limit": 64,
        "labels": {"agentrt.role": "volume-helper"}, "detach": True}, "1.41")
    host = body["HostConfig"]
    assert body["Image"] == "agentrt/base:latest" and body["Cmd"] == ["sh", "-c", "x"]
    assert host["Binds"] == ["@STATE@:/state:rw,rshared"]
    assert host["Devices"] == [{"PathOnHost": "/dev/loop-control",
                                "PathInContainer": "/dev/loop-control",
                                "CgroupPermissions": "rwm"}]
    assert host["DeviceCgroupRules"] == ["b 7:* rwm"] and host["NetworkMode"] == "none"
    assert host["CapAdd"] == ["SYS_ADMIN"] and host["PidsLimit"] == 64


def test_doctor_swarm_check() -> None:
    assert swarm_check({"Swarm": {"LocalNodeState": "inactive"}}).detail.startswith(
        "swarm mode off")
    worker = swarm_check({"Swarm": {"LocalNodeState": "active", "ControlAvailable": False}})
    assert worker.status == "warn" and "worker" in worker.detail
    manager = {"Swarm": {"LocalNodeState": "active", "ControlAvailable": True}}
    ok = swarm_check(manager, [node("a", 8, 4, role="manager"), node("b", 16, 2)])
    assert ok.status == "ok"
    assert "a (manager, ready, active, 4 CPUs, 8192 MiB); b (worker" in ok.detail
    down = swarm_check(manager, [node("a", 8, 4), node("b", 16, 2, state="down")])
    assert down.status == "warn" and "b" in down.fix


def test_doctor_swarm_images_check() -> None:
    ref = "agentrt/base:latest"
    assert swarm_images_check(ref, "", [], 3).status == "fail"
    unchecked = swarm_images_check(ref, "sha256:aaa", [], 3)
    assert unchecked.status == "warn" and "not visible" in unchecked.detail
    assert swarm_images_check(ref, "sha256:aaa", [], 1).status == "ok"
    same = [NodeImage("tcp://a:1", "sha256:aaa", True), NodeImage("tcp://b:1", "sha256:aaa", True)]
    assert swarm_images_check(ref, "sha256:aaa", same, 3).status == "ok"
    differ = [NodeImage("tcp://a:1", "sha256:bbb", False), NodeImage("tcp://b:1", "", False),
              NodeImage("tcp://c:1", "", False, error="could not reach")]
    bad = swarm_images_check(ref, "sha256:aaa", differ, 3)
    assert bad.status == "fail"
    assert "tcp://a:1: sha256:bbb" in bad.detail and "tcp://b:1: missing" in bad.detail
    assert "tcp://c:1: could not reach" in bad.detail and "push-nodes" in bad.fix


def test_one_shots_are_polled_fast_at_first_then_every_quarter_second() -> None:
    assert poll_delay(0.0) == FAST_POLL_S < POLL_S
    assert poll_delay(FAST_FOR_S - 0.01) == FAST_POLL_S
    assert poll_delay(FAST_FOR_S + 0.01) == POLL_S == 0.25


class _FakeApi:
    api_version = "1.41"


class _FakeClient:
    api = _FakeApi()

    def info(self) -> dict[str, Any]:
        return {"SecurityOptions": ["name=apparmor"]}


def test_a_node_job_with_steps_carries_them_and_the_undo_of_its_volume() -> None:
    step = NodeStep({"image": "agentrt/base:latest", "command": ["true"], "user": "1000:1000",
                     "network_mode": "container:@SELF@", "detach": True},
                    {"url": "git://x/x.git", "go": "refs/base/c", "stop": None, "timeout": 5,
                     "on_timeout": "fail"})
    job = json.loads(_node_job(_FakeClient(), "", "echo create", ["s1"], "s1",  # type: ignore[arg-type]
                               {"Name": "agentrt-vol-s1"}, None, [step]))
    (then,) = job["then"]
    assert then["gate"]["go"] == "refs/base/c" and then["ok"] == [0]
    assert then["container"]["HostConfig"]["NetworkMode"] == "container:@SELF@"
    assert then["container"]["User"] == "1000:1000"
    assert job["undo"]["Cmd"][2] == REMOVE_SCRIPT
    # The node lifts its own LSM confinement: the manager's is not in the bodies.
    assert job["undo"]["HostConfig"]["SecurityOpt"] == ["no-new-privileges:true"]
    plain = json.loads(_node_job(_FakeClient(), "", "echo create", ["s1"], "s1",  # type: ignore[arg-type]
                                 {"Name": "agentrt-vol-s1"}, None))
    assert "then" not in plain and "undo" not in plain
    assert "def gate(" in NODE_SCRIPT and "@SELF@" in NODE_SCRIPT


def test_the_harvest_code_is_read_from_the_node_helpers_output() -> None:
    assert _harvest_code("agentrt-node: state=/s\nagentrt-harvest: pushed\n"
                         "agentrt-node: step 0 exit=3\n") == 3
    assert _harvest_code("agentrt-node: state=/s\n") is None
    assert _harvest_code("agentrt-node: step 0 exit=x\n") is None


def test_a_finishing_node_job_has_no_loop_helper_first_and_a_gated_removal() -> None:
    harvest = NodeStep({"image": "agentrt/base:latest", "command": ["true"], "detach": True},
                       ok=(0, 3))
    removal = NodeStep({"image": "agentrt/base:latest", "command": ["true"], "detach": True},
                       {"url": "git://x/v.git", "go": "refs/s/home", "stop": "refs/s/keep",
                        "timeout": 5, "on_timeout": "stop"}, loop=True, remove_volume="v")
    job = json.loads(_node_job(_FakeClient(), "/st", None, [], "s",  # type: ignore[arg-type]
                               None, None, [harvest, removal]))
    assert job["container"] is None and "undo" not in job
    assert [s["loop"] for s in job["then"]] == [False, True]
    assert job["then"][0]["ok"] == [0, 3] and job["then"][1]["gate"]["on_timeout"] == "stop"


def test_ending_a_task_container_sends_sigterm_and_waits_until_it_exited() -> None:
    calls: list[tuple[str, str]] = []

    class Api:
        running = 3

        def kill(self, container_id: str, signal: str) -> None:
            calls.append((container_id, signal))

        def inspect_container(self, container_id: str) -> dict[str, Any]:
            self.running -= 1
            return {"State": {"Running": self.running > 0}}

    class Client:
        api = Api()

    end_container(Client(), "c1")  # type: ignore[arg-type]
    assert calls == [("c1", "SIGTERM")] and Client.api.running == 0
    end_container(Client(), "")  # type: ignore[arg-type]
    assert calls == [("c1", "SIGTERM")]


@pytest.mark.parametrize(("stopped_for", "status", "reason"), [
    ("cancel", SessionStatus.CANCELLED, "stopped on request"),
    ("timeout", SessionStatus.TIMED_OUT, "ran past time_seconds=60"),
    ("", SessionStatus.CRASHED, NODE_LOST),  # control: a lost node alone crashes the session
])
def test_a_session_whose_node_dies_is_classified_by_the_precedence_table(
        stopped_for: str, status: SessionStatus, reason: str) -> None:
    """A lost node is one more fact for the classifier (it no longer skips it): a session
    agentrt was stopping on request when its node died is ``cancelled``, as the table says."""
    facts = task_end_facts(None, stopped_for, None, node_lost=True)
    assert facts.node_lost
    assert classify(facts, ResourceLimits(time_seconds=60)) == (status, reason)


def test_a_services_end_in_the_classifiers_vocabulary() -> None:
    """The task's view, why agentrt stopped it and the entry point's report: one EndFacts."""
    stats = EndStats(exit_code=1, oom_kills=0, peak_memory_bytes=5 << 20, cpu_seconds=1.5,
                     used_bytes=100, free_bytes=10)
    view = TaskView(state="failed", exit_code=1, detail="", node_id="n")
    facts = task_end_facts(view, "", stats, node_lost=False)
    assert (facts.exit_code, facts.volume_full, facts.peak_memory_bytes, facts.cpu_seconds,
            facts.disk_used_bytes) == (1, True, 5 << 20, 1.5, 100)
    assert classify(facts, ResourceLimits(disk_mb=64))[0] is SessionStatus.DISK_FULL
    rejected = task_end_facts(TaskView(state="rejected", exit_code=None, detail="no image",
                                       node_id="n"), "", None, node_lost=False)
    assert classify(rejected, ResourceLimits())[1] == \
        "the service's task ended rejected: no image"


def test_swarm_agent_spec_refers_to_the_secret_never_its_value() -> None:
    from runtime.backends.swarm.agent import SWARM_ENTRYPOINT, swarm_agent_spec
    from runtime.backends.swarm.secrets import SECRET_READER, SessionSecret

    value = "s3cr3t-value-never-in-a-spec"
    secret = SessionSecret("sid123", "agentrt-a-123456-beef", "a-123456")
    with_plan = plan(secrets_mount=Mount("/run/secrets/agentrt-env", secret.name, type="bind"),
                     env={"A": "1"})
    spec = swarm_agent_spec(with_plan, "node-7", "1.41", secret)
    assert value not in repr(spec)
    (reference,) = spec["secrets"]
    assert reference["SecretID"] == "sid123" and reference["SecretName"] == secret.name
    assert reference["File"] == {"Name": "agentrt-env", "UID": "1000", "GID": "1000",
                                 "Mode": 0o400}
    # the guard, the secret's reader, then the Swarm entry point around the agent's argv
    assert spec["command"][2] == NETWORK_GUARD + SECRET_READER + SWARM_ENTRYPOINT
    assert spec["command"][3:] == ["agentrt-entry", "607", "7", "agent", "go"]
    assert all(m["Target"] != "/run/secrets/agentrt-env" for m in spec["mounts"])
    plain = swarm_agent_spec(plan(), "node-7", "1.41")
    assert "secrets" not in plain
    assert plain["command"][2] == NETWORK_GUARD + SWARM_ENTRYPOINT


def test_nodes_check_fails_with_each_nodes_line_and_passes_when_none() -> None:
    from runtime.backends.swarm.doctor import nodes_check
    from runtime.backends.swarm.node_checks import NodeReport, check_nodes

    bad = NodeReport("node2", socket_ok=True, interfaces=("lo",), loop_control=True,
                     images={"agentrt/base:latest": ""})
    good = NodeReport("node1", socket_ok=True, interfaces=("lo",), loop_control=True,
                      images={"agentrt/base:latest": "sha256:abc"})
    found = nodes_check(check_nodes([good, bad], {"agentrt/base:latest": "sha256:abc"}), 2)
    assert found.status == "fail"
    assert "node node2: image agentrt/base:latest is missing" in found.detail
    assert "node1" not in found.detail and "push-nodes" in found.detail
    assert nodes_check([], 3) == nodes_check(check_nodes([good], {}), 3)
    assert nodes_check([], 3).status == "ok"
