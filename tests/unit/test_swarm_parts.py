"""The pure decisions of the Swarm backend's building blocks (issue #26): secrets, node checks
and the egress proxy's spec. Their effects are proven in tests/integration/test_swarm_parts.py."""

from __future__ import annotations

import pytest

from runtime.backends.swarm.egress import (
    EGRESS_GUARD,
    SwarmEgressProxy,
    internal_network_name,
    proxy_service_spec,
    with_egress,
)
from runtime.backends.swarm.env_images import ImageOnNodes, addresses_for, placeable_nodes
from runtime.backends.swarm.node_checks import (
    PROBE_MARK,
    NodeReport,
    check_nodes,
    node_problems,
    parse_probe_output,
    probe_spec,
)
from runtime.backends.swarm.nodes import SwarmNode
from runtime.backends.swarm.secrets import (
    MAX_NAME,
    SECRET_FILE,
    SECRET_READER,
    LabelledSecret,
    SessionSecret,
    secret_labels,
    secret_name,
    secret_reference,
    secrets_left_over,
    with_secret,
)
from runtime.backends.swarm.service import NETWORK_GUARD
from runtime.egress_rules import PROXY_ALIAS, parse_targets
from runtime.engine.container import ENTRYPOINT
from runtime.engine.labels import LABEL_ROLE, LABEL_RUN, LABEL_SESSION
from runtime.errors import ConfigError, SessionError


def test_a_secret_name_fits_docker_and_differs_per_call() -> None:
    long = "t" * 80
    assert secret_name("abc", "0f0f") == "agentrt-abc-0f0f"
    assert len(secret_name(long)) <= MAX_NAME
    assert secret_name("abc") != secret_name("abc")


def test_a_secret_is_labelled_with_role_session_and_run_which_callers_cannot_override() -> None:
    labels = secret_labels("s1", "r1", {"agentrt.repo": "/r", LABEL_RUN: "other"})
    assert labels == {"agentrt.repo": "/r", LABEL_ROLE: "secret", LABEL_SESSION: "s1",
                      LABEL_RUN: "r1"}


def test_the_reference_is_a_0400_file_of_the_agent_and_never_carries_data() -> None:
    ref = secret_reference(SessionSecret("id1", "agentrt-s1-ab", "s1"), 1000, 1001)
    assert ref == {"SecretID": "id1", "SecretName": "agentrt-s1-ab",
                   "File": {"Name": SECRET_FILE, "UID": "1000", "GID": "1001", "Mode": 0o400}}


def test_with_secret_reads_the_file_after_the_guard_and_keeps_the_rest_of_the_spec() -> None:
    script = NETWORK_GUARD + ENTRYPOINT
    spec = {"name": "svc", "command": ["sh", "-c", script, "agentrt-entry", "61", "1",
                                       "agent"], "env": {"A": "1"}}
    ref = secret_reference(SessionSecret("id1", "n", "s1"), 1000, 1000)
    out = with_secret(spec, ref)
    assert out["command"][2] == NETWORK_GUARD + SECRET_READER + ENTRYPOINT
    assert out["command"][3:] == spec["command"][3:]
    assert out["secrets"] == [ref] and out["env"] == {"A": "1"}
    assert spec["command"][2] == script  # the input is left alone
    with pytest.raises(SessionError, match="svc"):
        with_secret({"name": "svc", "command": ["agent"]}, ref)
    # With the egress proxy too, in either order: its guard, then the reader.
    proxy = SwarmEgressProxy("sid", "p", "in-net", "out-net", parse_targets(["a.b"]))
    both = [with_egress(with_secret(spec, ref), proxy), with_secret(with_egress(spec, proxy), ref)]
    assert both[0] == both[1]
    assert both[0]["command"][2] == EGRESS_GUARD + SECRET_READER + ENTRYPOINT


def test_gc_takes_only_agentrts_secrets_of_runs_that_are_over() -> None:
    found = [LabelledSecret("1", "over", {LABEL_ROLE: "secret", LABEL_RUN: "r-over"}),
             LabelledSecret("2", "live", {LABEL_ROLE: "secret", LABEL_RUN: "r-live"}),
             LabelledSecret("3", "other", {LABEL_RUN: "r-over"}),
             LabelledSecret("4", "no-run", {LABEL_ROLE: "secret"})]
    taken = secrets_left_over(found, lambda labels: labels.get(LABEL_RUN) != "r-live")
    assert [s.name for s in taken] == ["over"]


GOOD = NodeReport("n1", socket_ok=True, interfaces=("lo",), loop_control=True,
                  images={"img:1": "sha256:aa"})


def test_a_node_set_up_right_has_no_problem() -> None:
    assert node_problems(GOOD, {"img:1": "sha256:aa"}) == []


@pytest.mark.parametrize(("change", "expected"), [
    ({"socket_ok": False}, ["node n1: no Docker engine socket at /var/run/docker.sock",
                            "listen on unix:///var/run/docker.sock"]),
    ({"interfaces": ("eth0", "lo")}, ["node n1: a service given no network gets eth0",
                                      "exit 97", "--bridge=none"]),
    ({"default_bridge": True}, ["node n1: its engine has a default bridge", "--bridge=none"]),
    ({"loop_control": False}, ["node n1: no /dev/loop-control", "modprobe loop"]),
    ({"images": {"img:1": ""}}, ["node n1: image img:1 is missing, not sha256:aa",
                                 "agentrt images push-nodes img:1 --node"]),
    ({"images": {"img:1": "sha256:bb"}}, ["node n1: image img:1 holds sha256:bb, not"]),
    ({"error": "its task ended rejected: No such image: agentrt/base:latest"},
     ["node n1: the node check could not start there", "push-nodes agentrt/base:latest"]),
    ({"error": "it is down and active, not ready and active"},
     ["node n1: could not be checked: it is down"]),
])
def test_each_problem_is_one_line_naming_the_node_what_is_wrong_and_the_fix(
        change: dict[str, object], expected: list[str]) -> None:
    report = NodeReport(**{**GOOD.__dict__, **change})  # type: ignore[arg-type]
    problems = node_problems(report, {"img:1": "sha256:aa"})
    assert len(problems) == 1, problems
    for part in expected:
        assert part in problems[0]


def test_a_missing_socket_is_not_also_blamed_for_images_and_unchecked_parts_pass() -> None:
    report = NodeReport("n2", socket_ok=False, interfaces=("lo",), loop_control=True)
    assert len(check_nodes([GOOD, report], {"img:1": "sha256:aa"})) == 1
    assert node_problems(NodeReport("n3"), {"img:1": "sha256:aa"}) == []


def test_the_probe_report_is_read_from_its_last_marked_line() -> None:
    out = (f"{PROBE_MARK}{{}}\nnoise\n{PROBE_MARK}"
           '{"socket": true, "interfaces": ["lo"], "loop_control": true, '
           '"images": {"img:1": "sha256:aa"}, "error": ""}\n')
    assert parse_probe_output("n1", "/var/run/docker.sock", out) == GOOD
    assert "printed no report" in parse_probe_output("n1", "/s", "boom").error


def test_the_probe_binds_only_the_sockets_directory_and_dev_read_only() -> None:
    spec = probe_spec("node-id", ["img:1"], "1.41", socket_path="/run/docker/engine.sock")
    mounts = {(m["Target"], m["Source"], m["ReadOnly"]) for m in spec["mounts"]}  # type: ignore[attr-defined]
    assert mounts == {("/agentrt-host/sock", "/run/docker", True),
                      ("/agentrt-host/dev", "/dev", True)}
    assert spec["constraints"] == ["node.id==node-id"]
    assert spec["cap_drop"] == ["ALL"] and spec["read_only"] is True
    assert '"/agentrt-host/sock/engine.sock"' in spec["command"][3]  # type: ignore[index]


def test_the_swarm_proxy_has_one_engines_rules_an_alias_on_the_internal_network_and_dnsrr(
        ) -> None:
    from runtime.engine.egress import IMAGE, PROXY_COMMAND

    targets = parse_targets(["models.internal:8080"])
    spec = proxy_service_spec("r1", targets, "in-net", "out-net", ["user-net"], "node-a",
                              {"agentrt.repo": "/r"})
    assert (spec["image"], spec["command"]) == (IMAGE, PROXY_COMMAND)
    assert "models\\.internal:8080" in spec["env"]["AGENTRT_EGRESS_FILTER"]
    assert "FilterDefaultDeny Yes" in spec["env"]["AGENTRT_EGRESS_CONFIG"]
    assert [(n["Target"], n.get("Aliases")) for n in spec["networks"]] == [
        ("in-net", [PROXY_ALIAS]), ("out-net", None), ("user-net", None)]
    assert spec["endpoint_spec"]["Mode"] == "dnsrr"
    assert spec["constraints"] == ["node.id==node-a"]
    assert spec["labels"] == {"agentrt.repo": "/r", LABEL_RUN: "r1", LABEL_ROLE: "egress"}
    assert spec["cap_drop"] == ["ALL"] and spec["read_only"] is True
    with pytest.raises(ConfigError, match="at least one"):
        proxy_service_spec("r1", (), "in", "out")


def test_two_policies_of_a_run_and_a_session_of_its_own_get_their_own_internal_networks(
        ) -> None:
    names = {internal_network_name("r1", "aaa"), internal_network_name("r1", "bbb"),
             internal_network_name("r1", "aaa", "s1")}
    assert len(names) == 3
    spec = proxy_service_spec("r1", parse_targets(["a.b"]), "in", "out", session_id="s" * 90)
    assert len(spec["name"]) <= 63 and spec["labels"][LABEL_SESSION] == "s" * 90


def test_with_egress_puts_a_session_on_the_internal_network_alone_with_the_route_guard(
        ) -> None:
    proxy = SwarmEgressProxy("sid", "svc", "in-net", "out-net", parse_targets(["a.b"]))
    spec = {"name": "s", "command": ["sh", "-c", NETWORK_GUARD + "ENTRY", "agent"],
            "env": {"HOME": "/tmp"}}
    out = with_egress(spec, proxy)
    assert out["command"][2] == EGRESS_GUARD + "ENTRY"
    assert [n["Target"] for n in out["networks"]] == ["in-net"]
    assert out["env"]["HOME"] == "/tmp" and out["env"]["https_proxy"].startswith("http://")
    with pytest.raises(SessionError, match="network guard"):
        with_egress({"name": "s", "command": ["sh", "-c", "ENTRY"]}, proxy)
    with pytest.raises(SessionError, match="already has networks"):
        with_egress({**spec, "networks": ["x"]}, proxy)


NODES = [SwarmNode(f"id{i}", f"node{i}", "worker", "ready", "active", 10**9, 2**30)
         for i in range(3)]


def test_a_session_with_an_environment_image_is_placed_only_where_its_id_is() -> None:
    found = ImageOnNodes("agentrt/env:x", "sha256:aa", frozenset({"id0", "id2"}), ())
    assert [n.hostname for n in placeable_nodes(NODES, found)] == ["node0", "node2"]


def test_delivery_needs_an_engine_address_for_each_node_and_names_those_without() -> None:
    assert addresses_for(NODES[:2], {"id0": "tcp://a:2375", "id1": "tcp://b:2375"}) == [
        "tcp://a:2375", "tcp://b:2375"]
    with pytest.raises(ConfigError, match="no engine address for node node1, node2"):
        addresses_for(NODES, {"id0": "tcp://a:2375"})
