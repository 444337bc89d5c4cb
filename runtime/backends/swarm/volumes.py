"""Session volumes on a Swarm node, made through that node's own engine.

On one engine, :mod:`runtime.engine.engine_volumes` loop-mounts a session's volume with a helper
*container* that needs ``/dev/loop-control``, a device cgroup rule, ``SYS_ADMIN`` and an
AppArmor exception. A Swarm *service* can have none of these (no devices, no security
options on Docker API 1.41), and agentrt talks only to the manager, never to a node's engine.
So a one-shot helper *service* pinned to the node
(:func:`runtime.backends.swarm.service.run_one_shot`) binds the node's ``/var/run/docker.sock``
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

from runtime.backends.swarm.node_script import NODE_SCRIPT
from runtime.backends.swarm.service import OneShot, helper_service_spec, run_one_shot
from runtime.engine.engine_volumes import (
    STATE_DIR_ENV,
    EngineVolume,
    _check_session_id,
    volume_name,
)
from runtime.engine.labels import LABEL_ROLE, LABEL_SESSION
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
    loop: bool = False


class NodeStepFailed(VolumeError):
    """A step after the loop helper failed (its volume was undone on the node)."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


def _loop_spec(client: docker.DockerClient, script: str, args: list[str],
               session_id: str) -> dict[str, Any]:
    spec = loop_helper_spec(client, STATE_PLACEHOLDER, script, args, session_id)
    # The node adds its own AppArmor/SELinux exception (lift_lsm); the manager's says nothing
    # about the node's.
    spec["security_opt"] = ["no-new-privileges:true"]
    return spec


def _node_job(client: docker.DockerClient, state: str, script: str | None, args: list[str],
              session_id: str, volume: Mapping[str, Any] | None,
              remove_volume: str | None, then: Sequence[NodeStep] = (),
              timeout: int = NODE_HELPER_TIMEOUT_S) -> str:
    api = str(client.api.api_version)
    first = container_body(_loop_spec(client, script, args, session_id), api) if script \
        else None
    job: dict[str, Any] = {"api": api, "state": state, "lift_lsm": True, "container": first,
                           "volume": volume, "remove_volume": remove_volume, "timeout": timeout}
    if then:
        job["then"] = [{"gate": dict(step.gate) if step.gate else None,
                        "container": container_body(step.spec, api) if step.spec else None,
                        "ok": list(step.ok), "remove_volume": step.remove_volume,
                        "loop": step.loop} for step in then]
        if volume is not None:  # a later step failed: unmount and delete what the first made
            job["undo"] = container_body(_loop_spec(client, REMOVE_SCRIPT, [session_id],
                                                    session_id), api)
    return json.dumps(job)


def _node_spec(node_id: str, session_id: str, job: str,
               networks: Sequence[str] = ()) -> dict[str, Any]:
    spec = helper_service_spec(
        image=HELPER_IMAGE, command=["python3", "-c", NODE_SCRIPT, job], node_id=node_id,
        labels={LABEL_SESSION: session_id, LABEL_ROLE: ROLE_HELPER},
        mounts=[Mount(NODE_SOCKET, NODE_SOCKET, type="bind")],
        name_prefix="agentrt-volume", session_id=session_id)
    if networks:
        spec["networks"] = list(networks)
    return spec


def _run_on_node(client: docker.DockerClient, node_id: str, session_id: str, job: str,
                 what: str, networks: Sequence[str] = (),
                 abort: Callable[[], str | None] | None = None) -> str:
    """Run the node helper service (on ``networks``, for steps that share its network); its
    output, or VolumeError (NodeStepFailed when a step after the first failed)."""
    spec = _node_spec(node_id, session_id, job, networks)
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


def _state_of(volume: EngineVolume) -> str:
    _check_session_id(volume.session_id)
    state = volume.session_dir.rsplit("/sessions/", 1)[0] if volume.session_dir else ""
    if volume.mode != "loop" or not state.startswith("/") \
            or volume.root != f"{state}/sessions/{volume.session_id}/volume":
        raise VolumeError(f"node volume {volume.name} has an unexpected root {volume.root}")
    return state


def start_node_finish(client: docker.DockerClient, node_id: str, volume: EngineVolume,
                      first: NodeStep, gate: Mapping[str, Any], networks: Sequence[str],
                      timeout: int) -> OneShot:
    """Start ONE helper service on node ``node_id`` that runs ``first`` (the harvest), then,
    once ``gate`` says go, removes ``volume`` as :func:`remove_node_volume` does (a gate that
    says stop, or times out, keeps it). Returns it running: wait for ``agentrt-node: step 0
    exit=`` in its output, then for its end (:class:`OneShot`)."""
    state = _state_of(volume)
    remove = NodeStep(_loop_spec(client, REMOVE_SCRIPT, [volume.session_id],
                                 volume.session_id), gate, loop=True,
                      remove_volume=volume.name)
    job = _node_job(client, state, None, [], volume.session_id, None, None, [first, remove],
                    timeout)
    return OneShot(client, _node_spec(node_id, volume.session_id, job, networks))


def start_node_steps(client: docker.DockerClient, node_id: str, session_id: str,
                     steps: Sequence[NodeStep], networks: Sequence[str],
                     timeout: int) -> OneShot:
    """Start ONE helper service on node ``node_id`` that runs ``steps`` (containers of the
    node's engine, no volume made or removed), on ``networks``; each container may run
    ``timeout`` seconds. Returns it running (:class:`OneShot`)."""
    _check_session_id(session_id)
    job = _node_job(client, _chosen_state(), None, [], session_id, None, None, steps, timeout)
    return OneShot(client, _node_spec(node_id, session_id, job, networks))


def remove_node_volume(client: docker.DockerClient, node_id: str,
                       volume: EngineVolume) -> None:
    """Unmount and delete ``volume`` on node ``node_id``, and its named volume there;
    idempotent. Remove the services that bind it first."""
    state = _state_of(volume)
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
