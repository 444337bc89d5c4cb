"""Is each Swarm node set up for agentrt? What a node reports, and one line per problem.

A node set up wrong today fails every session placed there with a reason that does not say
why: a node whose engine listens on another socket than ``/var/run/docker.sock`` makes each
session ``crashed`` ("bind source path does not exist: /var/run/docker.sock", from its node
helper), and a node whose dockerd has a default bridge makes each ``failed`` with exit 97 (the
entry point's network guard). These checks run before a session is placed, so ``doctor`` and a
run's preflight can refuse with one line naming the node, what is wrong and the fix.

:func:`node_problems` and :func:`check_nodes` decide (pure, from :class:`NodeReport`\\ s).
:func:`collect_node_reports` asks every node at once: a one-shot helper service pinned to each
(:func:`runtime.backends.swarm.service.helper_service_spec`: root with every capability dropped,
read-only root, no network, 64 MiB) that runs :data:`PROBE_SCRIPT` with the node's socket
directory and ``/dev`` bound read-only, so a missing socket is *reported* rather than making
the helper's own bind fail. It reports:

* whether the engine socket is there and a socket;
* the network interfaces a service given no network gets there: ``lo`` alone on a node whose
  dockerd runs with ``--bridge=none``; anything more is exactly what fails the session guard;
* whether ``/dev/loop-control`` is a character device (session volumes are loop devices);
* the id of each image asked about, from the node's engine through that socket.

:func:`report_from_engine` is the same report from a node's engine at an address the user
gives (``--node`` of ``push-nodes``): its images and whether its engine has a default
``bridge`` network; socket and loop devices cannot be seen from there and stay unchecked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import docker
import docker.errors
from docker.types import Mount

from runtime.backends.swarm.nodes import SwarmNode
from runtime.backends.swarm.service import OneShot, helper_service_spec
from runtime.engine.discovery import engine_errors
from runtime.engine.labels import LABEL_ROLE
from runtime.errors import ConfigError, EngineError

NODE_SOCKET = "/var/run/docker.sock"
PROBE_IMAGE = "agentrt/base:latest"
ROLE_NODE_CHECK = "node-check"
PROBE_TIMEOUT_S = 60
PROBE_MARK = "agentrt-node-check "
_HOST_SOCKET_DIR = "/agentrt-host/sock"
_HOST_DEV = "/agentrt-host/dev"

# Runs in agentrt/base on the node (root, capabilities dropped, no network). argv[1]: JSON
# {"socket": the socket's path in the probe, "dev": the node's /dev there, "images": [refs],
# "api": "1.41", "mark": the report line's prefix}.
PROBE_SCRIPT = r'''
import http.client, json, os, socket, stat, sys, urllib.parse
job = json.loads(sys.argv[1])
def kind(path, test):
    try:
        return test(os.stat(path).st_mode)
    except OSError:
        return False
class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(job["socket"])
out = {"socket": kind(job["socket"], stat.S_ISSOCK), "images": {}, "error": "",
       "loop_control": kind(job["dev"] + "/loop-control", stat.S_ISCHR),
       "interfaces": sorted(os.listdir("/sys/class/net"))}
if out["socket"]:
    try:
        for ref in job["images"]:
            conn = Conn("localhost")
            quoted = urllib.parse.quote(ref, safe="")
            conn.request("GET", "/v%s/images/%s/json" % (job["api"], quoted))
            resp = conn.getresponse()
            body = resp.read()
            out["images"][ref] = json.loads(body)["Id"] if resp.status == 200 else ""
            conn.close()
    except Exception as exc:
        out["error"] = "the engine socket does not answer: %s" % exc
print(job["mark"] + json.dumps(out), flush=True)
'''


@dataclass(frozen=True)
class NodeReport:
    """What one node says about its set-up. ``None``: not checked (could not be seen)."""

    hostname: str
    socket: str = NODE_SOCKET  # the socket path the check looked for
    socket_ok: bool | None = None
    #: Interfaces of a service given no network there (``("lo",)`` when set up right).
    interfaces: tuple[str, ...] | None = None
    #: Whether the engine has a default ``bridge`` network (from the engine's API).
    default_bridge: bool | None = None
    loop_control: bool | None = None
    #: Image ref → the id the node's engine holds under it ("" when missing).
    images: Mapping[str, str] = field(default_factory=dict)
    #: Why the node could not be checked at all ("" when it was).
    error: str = ""


def parse_probe_output(hostname: str, socket_path: str, output: str) -> NodeReport:
    """Pure: the :class:`NodeReport` in a probe's output (its last :data:`PROBE_MARK` line);
    one with ``error`` set when there is none."""
    lines = [line for line in output.splitlines() if line.startswith(PROBE_MARK)]
    if not lines:
        return NodeReport(hostname, socket_path,
                          error=f"the node check printed no report: {output.strip()[-300:]}")
    try:
        data = json.loads(lines[-1][len(PROBE_MARK):])
    except ValueError:
        return NodeReport(hostname, socket_path, error="the node check's report is unreadable")
    return NodeReport(hostname, socket_path, socket_ok=bool(data.get("socket")),
                      interfaces=tuple(str(i) for i in data.get("interfaces") or ()),
                      loop_control=bool(data.get("loop_control")),
                      images={str(k): str(v) for k, v in (data.get("images") or {}).items()},
                      error=str(data.get("error") or ""))


def _image_fix(ref: str) -> str:
    return (f"run `agentrt images push-nodes {ref} --node <the node's engine address>` "
            "(or pull it there from your registry)")


def node_problems(report: NodeReport, images: Mapping[str, str]) -> list[str]:
    """Pure: one line per problem of ``report`` (``node <name>: what is wrong: the fix``),
    given the image ids every node must hold (``images``: ref → id); none when set up right."""
    node = f"node {report.hostname}"
    if report.error:
        if "No such image" in report.error:
            return [f"{node}: the node check could not start there ({report.error}): the node "
                    f"lacks agentrt's base image: {_image_fix(PROBE_IMAGE)}"]
        return [f"{node}: could not be checked: {report.error}"]
    problems: list[str] = []
    if report.socket_ok is False:
        problems.append(
            f"{node}: no Docker engine socket at {report.socket} (every session placed there "
            "would crash: \"bind source path does not exist\"): make the node's dockerd also "
            f"listen on unix://{report.socket} (\"hosts\" in /etc/docker/daemon.json)")
    extra = [i for i in report.interfaces or () if i != "lo"]
    if extra or report.default_bridge:
        seen = (f"a service given no network gets {', '.join(extra)}" if extra
                else "its engine has a default bridge network")
        problems.append(
            f"{node}: {seen}, so every session placed there would fail its network guard "
            "(exit 97): run the node's dockerd with --bridge=none (\"bridge\": \"none\" in "
            "/etc/docker/daemon.json) and restart it")
    if report.loop_control is False:
        problems.append(f"{node}: no /dev/loop-control, so no session volume can be made "
                        "there: load the loop module (`modprobe loop`) and run dockerd as root "
                        "(not rootless)")
    if report.socket_ok is not False:
        for ref, want in sorted(images.items()):
            if ref not in report.images:
                continue  # not asked (e.g. the socket did not answer: reported above)
            held = report.images[ref]
            if held != want:
                state = f"holds {held[:19]}" if held else "is missing"
                problems.append(f"{node}: image {ref} {state}, not {want[:19]}: "
                                f"{_image_fix(ref)}")
    return problems


def check_nodes(reports: Iterable[NodeReport], images: Mapping[str, str]) -> list[str]:
    """Pure: every node's problems, nodes in the order given (empty: all set up right)."""
    return [line for report in reports for line in node_problems(report, images)]


def probe_spec(node_id: str, images: Sequence[str], api_version: str,
               socket_path: str = NODE_SOCKET, labels: Mapping[str, str] | None = None
               ) -> dict[str, object]:
    """Pure: the one-shot helper service that checks the node ``node_id`` (see the module
    docstring): the socket's directory and ``/dev`` bound read-only, nothing else."""
    job = {"socket": f"{_HOST_SOCKET_DIR}/{os.path.basename(socket_path)}", "dev": _HOST_DEV,
           "images": list(images), "api": api_version, "mark": PROBE_MARK}
    return helper_service_spec(
        image=PROBE_IMAGE, command=["python3", "-c", PROBE_SCRIPT, json.dumps(job)],
        node_id=node_id, labels={**(labels or {}), LABEL_ROLE: ROLE_NODE_CHECK},
        mounts=[Mount(_HOST_SOCKET_DIR, os.path.dirname(socket_path), type="bind",
                      read_only=True),
                Mount(_HOST_DEV, "/dev", type="bind", read_only=True)],
        memory_bytes=64 * 1024 * 1024, name_prefix="agentrt-node-check",
        session_id=node_id[:12])


def collect_node_reports(client: docker.DockerClient, nodes: Sequence[SwarmNode],
                         images: Sequence[str], socket_path: str = NODE_SOCKET,
                         labels: Mapping[str, str] | None = None,
                         timeout: float = PROBE_TIMEOUT_S) -> list[NodeReport]:
    """Ask every node in ``nodes`` at once through the manager ``client`` (a probe service
    pinned to each, removed after); a node that is not ready, or whose probe could not run
    (e.g. the base image is missing there), gets a report with ``error`` set."""
    api = str(client.api.api_version)
    reports: dict[str, NodeReport] = {}
    probes: dict[str, OneShot] = {}
    try:
        for node in nodes:
            if not node.schedulable:
                reports[node.id] = NodeReport(
                    node.hostname, socket_path,
                    error=f"it is {node.state} and {node.availability}, not ready and active")
                continue
            try:
                probes[node.id] = OneShot(client, probe_spec(node.id, images, api, socket_path,
                                                             labels))
            except EngineError as exc:
                reports[node.id] = NodeReport(node.hostname, socket_path, error=str(exc))
        for node in nodes:
            probe = probes.get(node.id)
            if probe is None:
                continue
            try:
                _code, output = probe.wait(timeout)
            except EngineError as exc:
                reports[node.id] = NodeReport(node.hostname, socket_path, error=str(exc))
                continue
            reports[node.id] = parse_probe_output(node.hostname, socket_path, output)
    finally:
        for probe in probes.values():
            probe.remove()
    return [reports[node.id] for node in nodes]


def report_from_engine(hostname: str, client: docker.DockerClient,
                       images: Sequence[str]) -> NodeReport:
    """The report of a node's engine reached at its own address (``client``): its images and
    whether it has a default bridge network; the socket and loop devices stay unchecked."""
    try:
        with engine_errors(f"check the engine of node {hostname}"):
            # The name filter matches parts of names (docker_gwbridge): compare exactly.
            bridge = any(n.name == "bridge"
                         for n in client.networks.list(filters={"driver": "bridge"}))
            held: dict[str, str] = {}
            for ref in images:
                try:
                    held[ref] = str(client.images.get(ref).id)
                except docker.errors.ImageNotFound:
                    held[ref] = ""
    except EngineError as exc:
        return NodeReport(hostname, socket="", error=str(exc))
    return NodeReport(hostname, socket="", default_bridge=bridge, images=held)


def manager_image_ids(client: docker.DockerClient, refs: Iterable[str]) -> dict[str, str]:
    """The id of each image ``refs`` names on the manager ("" when it is not there)."""
    ids: dict[str, str] = {}
    for ref in sorted(set(refs)):
        with engine_errors(f"inspect the image {ref} on the manager"):
            try:
                ids[ref] = str(client.images.get(ref).id)
            except docker.errors.ImageNotFound:
                ids[ref] = ""
    return ids


def require_nodes_set_up(client: docker.DockerClient, nodes: Sequence[SwarmNode],
                         images: Iterable[str]) -> None:
    """A run's preflight: probe every node a session may be placed on (ready and active) for
    its socket, bridge, loop devices and the manager's ids of ``images`` (and of
    :data:`PROBE_IMAGE`, which every node helper runs); ConfigError (exit 2) with one line per
    problem, naming the node and the fix, before anything starts."""
    want = manager_image_ids(client, {PROBE_IMAGE, *images})
    usable = [node for node in nodes if node.schedulable]
    reports = collect_node_reports(client, usable, sorted(want))
    problems = check_nodes(reports, {ref: id_ for ref, id_ in want.items() if id_})
    if problems:
        raise ConfigError("[run] field engine: swarm: nodes not set up for agentrt:\n"
                          + "\n".join(problems))
