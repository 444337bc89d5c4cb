"""One container start per session: the engine's own timings of the options, on this machine.

Nothing of agentrt's session runs here: each option is the bare engine work it would need,
timed through the Docker API (the SDK, one client), so the design choice is made with numbers.
Every container has the hardening and limits of a session (``container_spec``'s: read-only
root, every capability dropped, ``no-new-privileges``, no network, docker-init, uid 1000,
memory, CPU and pids limits). The options are measured interleaved, round-robin, in one run.

**(a) ready**: from the call that lets the agent go to the agent's first instruction (its own
``date +%s.%N``, written to a host directory bound into the container):

* ``docker run``: create + start (what a session without the warm pool does, no checkout);
* ``docker start``: of a container created ahead (today's warm pool);
* gated, signal: a container started ahead whose entry point waits for SIGUSR1 (``docker
  kill --signal USR1``: engine → containerd → shim → docker-init → the entry point);
* gated, exec: the same released by ``docker exec`` of ``kill -USR1 1`` (create + start of
  an exec: a runc exec per release);
* gated, FIFO: the entry point blocks opening a FIFO on its bound host directory; agentrt
  releases it by opening and writing the FIFO: no engine call at all (only where the engine
  shares this disk; a remote engine would fall back to the signal).

**(b) harvest after the agent exits**: the engine's cost of running a (trivial) command as
another uid once the agent is done:

* a second, fresh container (today's harvest): create + start + wait + remove;
* an exec in the session's own container, still running (a small init stays PID 1 after
  the agent exits): exec create + start (attached, until it ends) + inspect of its exit code.

Run: ``.venv/bin/python bench/one_start_options.py [--runs 20]``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _common as c
import docker

from runtime.config import ResourceLimits
from runtime.engine.container import HARDENING, create_container, tmpfs_mb

UID = "1000:1000"
STAMP = "date +%s.%N > /gate/t0"
#: The gated entry points: block until released, then run the agent's first instruction.
GATE_SIGNAL = ("trap 'go=1' USR1; while [ -z \"${go:-}\" ]; do sleep 30 & wait $!; done; "
               f"kill $! 2>/dev/null; {STAMP}")
GATE_FIFO = f"read -r _ < /gate/go; {STAMP}"
#: After the agent: the container stays up (its init keeps running) for the harvest's exec.
AGENT_THEN_WAIT = "true; exec sleep 600"


def spec(label: str, command: str, gate: Path | None, limits: ResourceLimits) -> dict[str, Any]:
    """A session's hardening and limits around ``sh -c command`` (``gate`` bound at /gate)."""
    mem = limits.memory_mb * 1024 * 1024
    mounts = [docker.types.Mount("/gate", str(gate), type="bind")] if gate else []
    return {
        **HARDENING, "image": c.IMAGE, "command": ["sh", "-c", command], "user": UID,
        "labels": {c.LABEL_BENCH: label}, "mounts": mounts, "mem_limit": mem,
        "memswap_limit": mem, "nano_cpus": limits.cpu_percent * 10_000_000,
        "pids_limit": limits.pids, "read_only": True, "network_mode": "none",
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={tmpfs_mb(limits)}m,mode=1777"},
        "detach": True,
    }


@contextlib.contextmanager
def gate_dir() -> Iterator[Path]:
    """A host directory the container (uid 1000) may write its timestamp into."""
    with tempfile.TemporaryDirectory(prefix="agentrt-gate-") as name:
        path = Path(name)
        path.chmod(0o777)
        yield path


def stamp(gate: Path, timeout: float = 30.0) -> float:
    """The container's timestamp, once it has written it (a bounded wait)."""
    from runtime.waiting import wait_until

    target = gate / "t0"
    wait_until(lambda: target.exists() and target.read_text().strip() != "", timeout=timeout,
               what="the container's first instruction")
    return float(target.read_text())


def remove(client: docker.DockerClient, container: Any) -> None:
    """Force-remove a container (and its anonymous volumes)."""
    with contextlib.suppress(docker.errors.DockerException):
        client.api.remove_container(container.id, force=True, v=True)


def ready_run(client: docker.DockerClient, label: str, limits: ResourceLimits) -> float:
    """create + start, to the first instruction."""
    with gate_dir() as gate:
        start = time.time()
        container = create_container(client, spec(label, STAMP, gate, limits))
        client.api.start(container.id)
        t0 = stamp(gate)
        remove(client, container)
    return t0 - start


def ready_start(client: docker.DockerClient, label: str, limits: ResourceLimits) -> float:
    """start of a container created ahead, to the first instruction."""
    with gate_dir() as gate:
        container = create_container(client, spec(label, STAMP, gate, limits))
        start = time.time()
        client.api.start(container.id)
        t0 = stamp(gate)
        remove(client, container)
    return t0 - start


def ready_gated(how: str) -> Callable[[docker.DockerClient, str, ResourceLimits], float]:
    """A container started ahead, waiting at its gate; released by ``how``."""
    def measure(client: docker.DockerClient, label: str, limits: ResourceLimits) -> float:
        with gate_dir() as gate:
            if how == "fifo":
                os.mkfifo(gate / "go", 0o666)
            command = GATE_FIFO if how == "fifo" else GATE_SIGNAL
            container = create_container(client, spec(label, command, gate, limits))
            client.api.start(container.id)
            time.sleep(0.3)  # it waits at the gate (a prepared session waits much longer)
            start = time.time()
            if how == "signal":
                client.api.kill(container.id, signal="SIGUSR1")
            elif how == "exec":
                exec_id = client.api.exec_create(container.id, ["kill", "-USR1", "1"],
                                                 user=UID)["Id"]
                client.api.exec_start(exec_id)
            else:
                with open(gate / "go", "w", encoding="utf-8") as fifo:
                    fifo.write("go\n")
            t0 = stamp(gate)
            remove(client, container)
        return t0 - start
    return measure


def harvest_container(client: docker.DockerClient, label: str, limits: ResourceLimits) -> float:
    """A second, fresh container running ``true`` as another uid: create + start + wait +
    remove (the agent's container has exited and is left to its own removal)."""
    agent = create_container(client, spec(label, "true", None, limits))
    client.api.start(agent.id)
    client.api.wait(agent.id)
    start = time.time()
    harvest = create_container(client, {**spec(label, "true", None, limits), "user": "0:0"})
    client.api.start(harvest.id)
    code = client.api.wait(harvest.id)["StatusCode"]
    client.api.remove_container(harvest.id, force=True, v=True)
    elapsed = time.time() - start
    remove(client, agent)
    if code != 0:
        raise RuntimeError(f"harvest container exited {code}")
    return elapsed


def harvest_exec(client: docker.DockerClient, label: str, limits: ResourceLimits) -> float:
    """``true`` as another uid by exec in the session's own container, its init still up."""
    agent = create_container(client, spec(label, AGENT_THEN_WAIT, None, limits))
    client.api.start(agent.id)
    time.sleep(0.3)
    start = time.time()
    exec_id = client.api.exec_create(agent.id, ["true"], user="0:0")["Id"]
    client.api.exec_start(exec_id)
    code = client.api.exec_inspect(exec_id)["ExitCode"]
    elapsed = time.time() - start
    remove(client, agent)
    if code != 0:
        raise RuntimeError(f"harvest exec exited {code}")
    return elapsed


READY = {
    "docker run (create + start)": ready_run,
    "docker start (created ahead: today's warm pool)": ready_start,
    "gated, released by a signal (kill --signal USR1)": ready_gated("signal"),
    "gated, released by an exec (kill -USR1 1)": ready_gated("exec"),
    "gated, released through a FIFO (no engine call)": ready_gated("fifo"),
}
HARVEST = {
    "second container (create + start + wait + remove)": harvest_container,
    "exec in the session's container (create + start + inspect)": harvest_exec,
}


def main() -> None:
    p = c.parser(__doc__.splitlines()[0], runs=20)
    args = p.parse_args()
    limits = ResourceLimits(memory_mb=512, cpu_percent=100, pids=256, disk_mb=1024)
    c.header("one container start per session: the options, raw engine timings", args.runs)
    client = docker.from_env()
    samples: dict[str, list[float]] = {}
    options = {**READY, **HARVEST}
    with c.scratch("one-start") as root:
        for measure in options.values():  # warm-up: image, code paths
            measure(client, root.name, limits)
        for run in range(args.runs):
            names = list(options)
            shift = run % len(names)
            for name in names[shift:] + names[:shift]:  # round-robin, rotating who goes first
                samples.setdefault(name, []).append(options[name](client, root.name, limits))

    def rows(group: dict[str, Any], base: str) -> list[list[str]]:
        return [[name, f"{c.percentile(samples[name], 50) * 1000:.0f} ms",
                 f"{c.percentile(samples[name], 95) * 1000:.0f} ms", c.fmt(samples[name]),
                 c.ratio(samples[name], samples[base])] for name in group]

    print("\n(a) ready: from the release to the agent's first instruction")
    print(c.table(["option", "p50", "p95", "median (min–max)", "/ docker run"],
                  rows(READY, next(iter(READY)))))
    print("\n(b) the harvest's engine cost once the agent has exited (the command: true)")
    print(c.table(["option", "p50", "p95", "median (min–max)", "/ second container"],
                  rows(HARVEST, next(iter(HARVEST)))))
    for name in READY:
        p50, p95 = (c.percentile(samples[name], q) * 1000 for q in (50, 95))
        print(c.goal(f"ready p50 ≤ 50 ms: {name}", p50, 50, "ms"))
        print(c.goal(f"ready p95 ≤ 100 ms: {name}", p95, 100, "ms"))


if __name__ == "__main__":
    main()
