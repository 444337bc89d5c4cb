"""Session volumes on a Swarm node, made through that node's own engine.

On one engine, :mod:`runtime.engine.engine_volumes` loop-mounts a session's volume with a helper
*container* that needs ``/dev/loop-control``, a device cgroup rule, ``SYS_ADMIN`` and an
AppArmor exception. A Swarm *service* can have none of these (no devices, no security
options on Docker API 1.41), and agentrt talks only to the manager, never to a node's engine.
So a one-shot helper *service* pinned to the node
(:func:`runtime.engine.swarm_service.run_one_shot`) binds the node's ``/var/run/docker.sock``
and has that engine run exactly the loop helper container of
:mod:`runtime.engine.engine_volumes` (same script, capabilities, devices, rules and ``rshared``
bind of the state directory): the mount it makes appears in the node engine's mount namespace,
where a session service on that node binds it (:meth:`EngineVolume.mounts`).

Why a few lines of stdlib Python (:data:`NODE_SCRIPT`) in ``agentrt/base`` speaking the Engine
API over the socket, rather than the docker CLI or the SDK: ``agentrt/base`` is the one image
every node must have anyway, and it has ``python3`` but neither the CLI nor the SDK;
``agentrt/dind`` has the CLI but is a test image. The container's create body is computed here,
by the SDK's own conversion of the very keyword arguments :func:`volume_helpers.loop_helper_spec`
gives ``containers.create``, so both paths make the same container. What only the node knows is
filled in there: its state directory (``AGENTRT_ENGINE_STATE_DIR`` if set here, else the node's
``<DockerRootDir>/agentrt``) and the AppArmor/SELinux exception its engine needs. The helper
service runs as root with every capability dropped (the socket is root's), no network, a
read-only root and 128 MiB; it is labelled ``agentrt.role=volume-helper`` and removed when it
ends. Whoever may create services on the manager is root on every node anyway.

Like on one engine, each volume has a labelled named Docker volume ``agentrt-vol-<session>``
*on its node* (a bind of the mounted image), made by the same helper before the loop helper
runs and removed after it. Loop mode only: a node that cannot loop-mount makes the helper fail
with its error (soft volumes on nodes are not done).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import docker
from docker.types import Mount

from runtime.engine.engine_volumes import (
    STATE_DIR_ENV,
    EngineVolume,
    _check_session_id,
    volume_name,
)
from runtime.engine.labels import LABEL_ROLE, LABEL_SESSION
from runtime.engine.swarm_service import helper_service_spec, run_one_shot
from runtime.engine.volume_helpers import (
    CREATE_SCRIPT,
    HELPER_IMAGE,
    JOURNAL_MIN_MB,
    REMOVE_SCRIPT,
    ROLE_HELPER,
    loop_helper_spec,
)
from runtime.errors import EngineError, VolumeError

NODE_SOCKET = "/var/run/docker.sock"
STATE_PLACEHOLDER = "@STATE@"
NODE_HELPER_TIMEOUT_S = 180
_STATE_LINE = "agentrt-node: state="

# Runs in agentrt/base on the node, root, the node engine's socket at NODE_SOCKET. argv[1]: the
# job (JSON): api, state ("" = the node's default), lift_lsm, container (a create body with
# @STATE@), volume (a named volume to make first, or null), remove_volume (a name to remove
# after success, or null), timeout, and optionally then: further steps once the container
# succeeded, each {"gate": {"url", "go", "stop", "timeout", "on_timeout"} or null,
# "container": a body (@STATE@, and @SELF@ for this task's own container, whose network it
# may share) or null, "remove_volume": a name or null, "ok": exit codes that go on}, and undo:
# a body run (and the named volume removed) when a step after the first fails. A gate waits
# until the exchange at url has the ref go (then the step runs) or stop (then the job ends
# here, successfully); at its timeout it fails, or ends the job if on_timeout is "stop".
# Prints the state line, each step's output and an "agentrt-node: step N exit=C" line; exits
# with the first failing step's code, 0 when all went on, or 70 if the job itself failed.
NODE_SCRIPT = r'''
import http.client, json, os, socket, subprocess, sys, time
job = json.loads(sys.argv[1])
V = "/v" + job["api"]

class Conn(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect("/var/run/docker.sock")

def call(method, path, body=None, ok=(200, 201, 204), timeout=60):
    conn = Conn("localhost", timeout=timeout)
    data = None if body is None else json.dumps(body).encode()
    conn.request(method, V + path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    conn.close()
    if resp.status not in ok:
        text = raw.decode(errors="replace")[:500]
        raise RuntimeError("%s %s: %s %s" % (method, path, resp.status, text))
    return resp.status, raw

def demux(raw):
    out, i = [], 0
    while i + 8 <= len(raw):
        size = int.from_bytes(raw[i + 4:i + 8], "big")
        out.append(raw[i + 8:i + 8 + size])
        i += 8 + size
    return b"".join(out)

def filled(doc, fill):
    text = json.dumps(doc)
    for key, value in fill.items():
        text = text.replace(key, value)
    return json.loads(text)

def run(body):
    cid = json.loads(call("POST", "/containers/create", body)[1])["Id"]
    try:
        call("POST", "/containers/%s/start" % cid)
        done = call("POST", "/containers/%s/wait" % cid, timeout=job["timeout"])[1]
        logs = call("GET", "/containers/%s/logs?stdout=1&stderr=1" % cid)[1]
        sys.stdout.write(demux(logs).decode(errors="replace"))
        sys.stdout.flush()
        return int(json.loads(done)["StatusCode"])
    finally:
        call("DELETE", "/containers/%s?force=1&v=1" % cid, ok=(204, 404))

def gate(g):
    env = dict(os.environ, HOME="/tmp", GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null",
               GIT_TERMINAL_PROMPT="0")
    end = time.monotonic() + g["timeout"]
    while time.monotonic() < end:
        refs = [g["go"]] + ([g["stop"]] if g.get("stop") else [])
        got = subprocess.run(["git", "ls-remote", g["url"]] + refs, env=env, cwd="/tmp",
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
        names = [line.split()[-1] for line in got.stdout.decode().splitlines() if line.strip()]
        if g["go"] in names:
            return "go"
        if g.get("stop") in names:
            return "stop"
        time.sleep(0.1)
    return "stop" if g.get("on_timeout") == "stop" else "timeout"

def main():
    info = json.loads(call("GET", "/info")[1])
    root = str(info.get("DockerRootDir") or "/var/lib/docker").rstrip("/")
    state = job["state"] or root + "/agentrt"
    if not state.startswith("/") or "/.." in state or any(c in state for c in "\"\\:,"):
        raise RuntimeError("unusable state directory %r" % state)
    print("agentrt-node: state=" + state, flush=True)
    me = json.loads(call("GET", "/containers/%s/json" % socket.gethostname(),
                         ok=(200, 404))[1] or b"{}").get("Id", "")
    fill = {"@STATE@": state, "@SELF@": me}
    lsm = " ".join(str(o) for o in info.get("SecurityOptions") or [])
    def loop_body(doc):
        body = filled(doc, fill)
        opts = body["HostConfig"].setdefault("SecurityOpt", [])
        if job["lift_lsm"] and "name=apparmor" in lsm:
            opts.append("apparmor=unconfined")
        if job["lift_lsm"] and "name=selinux" in lsm:
            opts.append("label=disable")
        return body
    steps = [{"gate": None, "container": job["container"], "loop": True,
              "remove_volume": job["remove_volume"], "ok": [0]}] + job.get("then", [])
    volume = filled(job["volume"], fill) if job["volume"] else None
    if volume:
        if call("GET", "/volumes/" + volume["Name"], ok=(200, 404))[0] == 200:
            raise RuntimeError("named volume %s already exists on this node" % volume["Name"])
        call("POST", "/volumes/create", volume)
    made, code = False, 70
    try:
        for i, step in enumerate(steps):
            code = 70
            if step["gate"]:
                how = gate(step["gate"])
                print("agentrt-node: gate %d %s" % (i, how), flush=True)
                if how == "stop":
                    code = 0
                    return code
                if how == "timeout":
                    code = 75
                    print("agentrt-node: step %d exit=%d" % (i, code), flush=True)
                    return code
            code = 0
            if step["container"]:
                body = filled(step["container"], fill) if not step.get("loop") \
                    else loop_body(step["container"])
                if not me and "@SELF@" in json.dumps(step["container"]):
                    raise RuntimeError("this task's own container is not on this engine")
                code = run(body)
            print("agentrt-node: step %d exit=%d" % (i, code), flush=True)
            if code not in step["ok"]:
                return code
            made = True
            code = 0
            if step["remove_volume"]:
                call("DELETE", "/volumes/%s?force=1" % step["remove_volume"], ok=(204, 404))
        return 0
    finally:
        if volume and code != 0:
            if made and job.get("undo"):
                run(loop_body(job["undo"]))
            call("DELETE", "/volumes/%s?force=1" % volume["Name"], ok=(204, 404))

try:
    sys.exit(main())
except Exception as exc:
    print("agentrt-node: %s" % exc, file=sys.stderr, flush=True)
    sys.exit(70)
'''


def container_body(spec: Mapping[str, Any], api_version: str) -> dict[str, Any]:
    """The Engine API body of ``POST /containers/create`` for ``containers.create(**spec)``:
    the SDK's own conversion (what ``client.containers.create`` sends)."""
    from docker.models.containers import _create_container_args
    from docker.types import ContainerConfig

    kwargs = {k: v for k, v in spec.items() if k not in ("detach", "name")}
    kwargs["version"] = api_version
    args = _create_container_args(kwargs)
    return dict(ContainerConfig(api_version, **args))


@dataclass(frozen=True)
class NodeStep:
    """A further step of a node job, after its loop helper succeeded (see NODE_SCRIPT): a
    container (``containers.create`` arguments; ``@STATE@`` is the node's state directory,
    ``@SELF@`` the node helper's own container, e.g. ``network_mode="container:@SELF@"``),
    run once ``gate`` (if any) says go; exit codes in ``ok`` go on."""

    spec: Mapping[str, Any] | None
    gate: Mapping[str, Any] | None = None
    ok: tuple[int, ...] = (0,)
    remove_volume: str | None = None


class NodeStepFailed(VolumeError):
    """A step after the loop helper failed (its volume was undone on the node)."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


def _node_job(client: docker.DockerClient, state: str, script: str, args: list[str],
              session_id: str, volume: Mapping[str, Any] | None,
              remove_volume: str | None, then: Sequence[NodeStep] = ()) -> str:
    spec = loop_helper_spec(client, STATE_PLACEHOLDER, script, args, session_id)
    # The node adds its own AppArmor/SELinux exception (lift_lsm); the manager's says nothing
    # about the node's.
    spec["security_opt"] = ["no-new-privileges:true"]
    api = str(client.api.api_version)
    job: dict[str, Any] = {"api": api, "state": state, "lift_lsm": True,
                           "container": container_body(spec, api), "volume": volume,
                           "remove_volume": remove_volume, "timeout": NODE_HELPER_TIMEOUT_S}
    if then:
        job["then"] = [{"gate": dict(step.gate) if step.gate else None,
                        "container": container_body(step.spec, api) if step.spec else None,
                        "ok": list(step.ok), "remove_volume": step.remove_volume}
                       for step in then]
        if volume is not None:  # a later step failed: unmount and delete what the first made
            undo = loop_helper_spec(client, STATE_PLACEHOLDER, REMOVE_SCRIPT, [session_id],
                                    session_id)
            undo["security_opt"] = ["no-new-privileges:true"]
            job["undo"] = container_body(undo, api)
    return json.dumps(job)


def _run_on_node(client: docker.DockerClient, node_id: str, session_id: str, job: str,
                 what: str, networks: Sequence[str] = (),
                 abort: Callable[[], str | None] | None = None) -> str:
    """Run the node helper service (on ``networks``, for steps that share its network); its
    output, or VolumeError (NodeStepFailed when a step after the first failed)."""
    spec = helper_service_spec(
        image=HELPER_IMAGE, command=["python3", "-c", NODE_SCRIPT, job], node_id=node_id,
        labels={LABEL_SESSION: session_id, LABEL_ROLE: ROLE_HELPER},
        mounts=[Mount(NODE_SOCKET, NODE_SOCKET, type="bind")],
        name_prefix="agentrt-volume", session_id=session_id)
    if networks:
        spec["networks"] = list(networks)
    try:
        code, output = run_one_shot(client, spec, timeout=NODE_HELPER_TIMEOUT_S + 60,
                                    abort=abort)
    except EngineError as exc:
        raise VolumeError(f"{what} on node {node_id}: {exc}") from exc
    if code != 0:
        message = f"{what} on node {node_id} failed (exit {code}): {output.strip()[-800:]}"
        failed = [int(line.split()[2]) for line in output.splitlines()
                  if line.startswith("agentrt-node: step ") and len(line.split()) > 3]
        if failed and failed[-1] > 0:
            raise NodeStepFailed(message, failed[-1])
        raise VolumeError(message)
    return output


def _state_from(output: str, what: str) -> str:
    for line in output.splitlines():
        if line.startswith(_STATE_LINE):
            return line[len(_STATE_LINE):].strip()
    raise VolumeError(f"{what}: the node helper did not say where its state is: {output[-300:]}")


def create_node_volume(client: docker.DockerClient, node_id: str, session_id: str,
                       disk_mb: int, uid: int, gid: int,
                       labels: Mapping[str, str] | None = None,
                       then: Callable[[EngineVolume], Sequence[NodeStep]] | None = None,
                       networks: Sequence[str] = (),
                       abort: Callable[[], str | None] | None = None) -> EngineVolume:
    """Make session ``session_id``'s loop volume of ``disk_mb`` MiB on Swarm node ``node_id``
    (through the manager ``client``), owned by ``uid:gid``; undone on failure (VolumeError).

    ``labels`` go on the node's named volume only, as in
    :func:`runtime.engine.engine_volumes.create_engine_volume`. ``then`` gives further steps
    on the volume (its root with ``@STATE@``), run by the same helper service (one scheduling
    round trip, not two), which joins ``networks``; when one fails the volume is undone on the
    node (NodeStepFailed). ``abort`` is asked while the helper runs: a message ends it
    (VolumeError; the caller removes what may have been made)."""
    _check_session_id(session_id)
    if not 1 <= disk_mb <= 16 * 1024 * 1024:
        raise VolumeError(f"disk_mb={disk_mb} is out of range")
    state = _chosen_state()
    name = volume_name(session_id)
    limit = disk_mb * 1024 * 1024
    root = f"{STATE_PLACEHOLDER}/sessions/{session_id}/volume"
    record = EngineVolume(session_id, name, "loop", limit, root, uid)
    named = {"Name": name, "Driver": "local",
             "DriverOpts": {"type": "none", "o": "bind", "device": root},
             "Labels": {**dict(labels or {}), **record.labels()}}
    journal = "yes" if disk_mb >= JOURNAL_MIN_MB else "no"
    label = ("agentrt-" + session_id[-8:])[:16]
    job = _node_job(client, state, CREATE_SCRIPT,
                    [session_id, str(disk_mb), str(uid), str(gid), label, journal],
                    session_id, named, None, then(record) if then else ())
    what = f"create the volume of {session_id}"
    output = _run_on_node(client, node_id, session_id, job, what, networks, abort)
    node_state = _state_from(output, what)
    return EngineVolume(session_id, name, "loop", limit,
                        f"{node_state}/sessions/{session_id}/volume", uid)


def remove_node_volume(client: docker.DockerClient, node_id: str,
                       volume: EngineVolume) -> None:
    """Unmount and delete ``volume`` on node ``node_id``, and its named volume there;
    idempotent. Remove the services that bind it first."""
    _check_session_id(volume.session_id)
    state = volume.session_dir.rsplit("/sessions/", 1)[0] if volume.session_dir else ""
    if volume.mode != "loop" or not state.startswith("/") \
            or volume.root != f"{state}/sessions/{volume.session_id}/volume":
        raise VolumeError(f"node volume {volume.name} has an unexpected root {volume.root}")
    job = _node_job(client, state, REMOVE_SCRIPT, [volume.session_id], volume.session_id,
                    None, volume.name)
    _run_on_node(client, node_id, volume.session_id, job,
                 f"remove the volume of {volume.session_id}")


def undo_node_volume(client: docker.DockerClient, node_id: str, session_id: str) -> None:
    """Remove whatever :func:`create_node_volume` made of ``session_id``'s volume on node
    ``node_id`` when it was ended from outside (its state directory as chosen there);
    idempotent."""
    _check_session_id(session_id)
    job = _node_job(client, _chosen_state(), REMOVE_SCRIPT, [session_id], session_id, None,
                    volume_name(session_id))
    _run_on_node(client, node_id, session_id, job, f"undo the volume of {session_id}")


def _chosen_state() -> str:
    """``AGENTRT_ENGINE_STATE_DIR`` if set (the same directory on every node), else "" (each
    node's ``<DockerRootDir>/agentrt``)."""
    chosen = os.environ.get(STATE_DIR_ENV, "")
    if chosen and (not chosen.startswith("/") or "/.." in chosen or ":" in chosen):
        raise VolumeError(f"{STATE_DIR_ENV}={chosen!r} is not a plain absolute path")
    return chosen.rstrip("/")
