"""Per-session services (``[[run.services]]``): containers next to one session only.

Each session with services gets its own *internal* network ``agentrt-svc-<session>`` (no
route out); its services join it under their ``name`` as network alias, and the session's
container joins it too. Sessions of one run never share it, so a session reaches its own
services and no other session's. With ``network = "none"`` the session's container is on this
network alone; with ``bridge`` or ``allowlist`` it is connected to it as well.

Services are hardened like sessions: a **read-only root**; the only places a service writes are
tmpfs of a fixed size (``/tmp``, :data:`TMP_MB` MiB; each path its image declares as a
``VOLUME`` and each of its ``writable`` paths, ``disk_mb`` MiB each), whose pages count in its
memory limit, so nothing it writes reaches the engine's disk (a tmpfs starts empty: an image
whose data directory must hold files from the image cannot run this way). **Capabilities**:
none for an image that runs as a user other than root; an image that starts as root (an entry
point that prepares its data directory and then switches user, as the official database
images do) keeps only :data:`ROOT_IMAGE_CAPS`. ``no-new-privileges``, an init, memory (no
swap), CPU and pids limits, capped logs. They are labelled ``agentrt.role=service`` with the
run, the session and the owner, so the session removes them when it ends and ``agentrt gc``
finds leftovers of dead runs. A service that exits, turns unhealthy or is not healthy within
its healthcheck's ``interval × (retries + 2)`` seconds fails the session, naming the service.
"""

from __future__ import annotations

import contextlib
import io
import re
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import docker
import docker.errors
from docker.types import LogConfig

from runtime.engine.discovery import engine_errors
from runtime.engine.labels import LABEL_ROLE, LABEL_RUN
from runtime.engine.networks import create_internal_network
from runtime.environments import Service
from runtime.errors import EngineError, SessionError, WaitTimeoutError
from runtime.waiting import wait_until

ROLE_SERVICE = "service"
LABEL_SERVICE = "agentrt.service"
LABEL_SERVICE_SESSION = "agentrt.service.session"
SERVICE_PIDS = 512
NO_HEALTHCHECK_WAIT_S = 10
#: What an image that starts as root keeps: enough for its entry point to own its data
#: directory and switch to its own user (the official postgres, mysql and redis images do
#: exactly that); a process that then runs as that user holds none of them.
ROOT_IMAGE_CAPS = ["CHOWN", "SETUID", "SETGID", "DAC_OVERRIDE", "FOWNER"]
#: Size of a service's /tmp, MiB.
TMP_MB = 64


@dataclass(frozen=True)
class ImageFacts:
    """What a service's container needs to know of its image: the user it starts as
    (``Config.User``, "" for root), that user's uid and gid (who owns its writable places)
    and the paths it declares as ``VOLUME``."""

    user: str = ""
    volumes: tuple[str, ...] = ()
    uid: int = 0
    gid: int = 0

    @classmethod
    def of(cls, client: docker.DockerClient, image: str) -> ImageFacts:
        """Read from the local image (``docker.errors.ImageNotFound`` when it is missing); a
        user named rather than numbered is looked up in the image's ``/etc/passwd``."""
        config = client.images.get(image).attrs.get("Config") or {}
        user = str(config.get("User") or "")
        volumes = tuple(sorted(config.get("Volumes") or {}))
        ids = numeric_ids(user)
        if ids is None:
            ids = passwd_ids(user, _image_file(client, image, "/etc/passwd"),
                             _image_file(client, image, "/etc/group"))
        if ids is None:
            raise SessionError(f"image {image!r}: its user {user!r} is not in its /etc/passwd")
        return cls(user=user, volumes=volumes, uid=ids[0], gid=ids[1])


def numeric_ids(user: str) -> tuple[int, int] | None:
    """``uid:gid`` of an image's ``Config.User`` when it needs no lookup (root, or numbers;
    a uid alone has its own number as gid), else None. Pure."""
    name, _, group = user.partition(":")
    if name in ("", "root", "0") and group in ("", "root", "0"):
        return 0, 0
    if name.isdigit() and (group == "" or group.isdigit()):
        return int(name), int(group or name)
    return None


def passwd_ids(user: str, passwd: str, group_file: str) -> tuple[int, int] | None:
    """``uid:gid`` of ``user`` (``name[:group]``, either part a name or a number) from the
    texts of an image's ``/etc/passwd`` and ``/etc/group``; None if not there. Pure."""
    name, _, group = user.partition(":")
    found: tuple[int, int] | None = None
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and (fields[0] == name or fields[2] == name) \
                and fields[2].isdigit() and fields[3].isdigit():
            found = int(fields[2]), int(fields[3])
            break
    if found is None or not group:
        return found
    if group.isdigit():
        return found[0], int(group)
    for line in group_file.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[0] == group and fields[2].isdigit():
            return found[0], int(fields[2])
    return None


def _image_file(client: docker.DockerClient, image: str, path: str) -> str:
    """A small text file of ``image`` (never run: a created container's archive); ""."""
    container = client.containers.create(image, command=["true"], network_mode="none",
                                         labels={LABEL_ROLE: ROLE_SERVICE})
    try:
        chunks, _ = client.api.get_archive(container.id, path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)[:4 * 1024 * 1024])) as archive:
            member = archive.next()
            source = archive.extractfile(member) if member is not None else None
            return source.read(1024 * 1024).decode(errors="replace") if source else ""
    except (docker.errors.NotFound, tarfile.TarError):
        return ""
    finally:
        with contextlib.suppress(docker.errors.DockerException):
            container.remove(force=True)


def starts_as_root(user: str) -> bool:
    """Whether an image's ``Config.User`` means uid 0 (empty, ``root``, ``0``, ``0:...``)."""
    name = user.split(":", 1)[0]
    return name in ("", "root", "0")


def service_tmpfs(service: Service, facts: ImageFacts) -> dict[str, str]:
    """The service's writable places: path -> tmpfs options (size-capped, owned by the
    image's user; the engine keeps the mode of a directory the image already has). Pure."""
    places = {"/tmp": f"size={TMP_MB}m,mode=1777"}
    for path in (*facts.volumes, *service.writable):
        places[path.rstrip("/") or "/"] = (f"size={service.disk_mb}m,mode=0755,"
                                           f"uid={facts.uid},gid={facts.gid}")
    places.pop("/", None)  # never over the root itself
    return places


def _safe(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]", "-", text)[:100]


def services_network_name(session_id: str) -> str:
    """A session's private network for its services."""
    return f"agentrt-svc-{_safe(session_id)}"


def service_spec(service: Service, session_id: str, network: str,
                 labels: Mapping[str, str], facts: ImageFacts | None = None) -> dict[str, object]:
    """The keyword arguments of ``client.containers.create`` for ``service`` whose image is
    described by ``facts`` (default: one that starts as root and declares no volume). Pure."""
    facts = facts or ImageFacts()
    spec: dict[str, object] = {
        "image": service.image,
        "name": f"agentrt-svc-{_safe(session_id)}-{service.name}",
        "hostname": service.name,
        "environment": dict(service.env),
        "labels": {**labels, LABEL_ROLE: ROLE_SERVICE, LABEL_SERVICE: service.name,
                   LABEL_SERVICE_SESSION: session_id},
        "network": network,
        "cap_drop": ["ALL"], "cap_add": ROOT_IMAGE_CAPS if starts_as_root(facts.user) else [],
        "security_opt": ["no-new-privileges:true"], "init": True,
        "read_only": True, "tmpfs": service_tmpfs(service, facts),
        "mem_limit": service.memory_mb * 1024 * 1024,
        "memswap_limit": service.memory_mb * 1024 * 1024,
        "nano_cpus": service.cpu_percent * 10_000_000, "pids_limit": SERVICE_PIDS,
        "log_config": LogConfig(type="json-file", config={"max-size": "10m", "max-file": "2"}),
        "detach": True,
    }
    if service.command is not None:
        spec["command"] = list(service.command)
    if service.healthcheck is not None:
        interval_ns = int(service.healthcheck.interval * 1_000_000_000)
        spec["healthcheck"] = {"test": ["CMD", *service.healthcheck.cmd],
                               "interval": interval_ns, "timeout": max(interval_ns, 10**9),
                               "retries": service.healthcheck.retries}
    return spec


def wait_seconds(service: Service) -> float:
    """How long ``service`` has to become healthy."""
    check = service.healthcheck
    if check is None:
        return NO_HEALTHCHECK_WAIT_S
    return check.interval * (check.retries + 2) + 5


@dataclass
class SessionServices:
    """The services of one session and their network."""

    client: docker.DockerClient
    session_id: str
    network: str
    containers: dict[str, str] = field(default_factory=dict)  # name -> container id

    def connect(self, container_id: str) -> None:
        """Attach the session's (created, not started) container to the services network."""
        with engine_errors(f"connect the session to {self.network}"):
            self.client.networks.get(self.network).connect(container_id)

    def remove(self) -> None:
        """Remove the services and their network; quiet for what is already gone."""
        remove_services(self.client, session_id=self.session_id)


def start_services(client: docker.DockerClient, services: Sequence[Service], session_id: str,
                   labels: Mapping[str, str]) -> SessionServices:
    """Make the session's network, start its services, wait until each is healthy.

    SessionError naming the service when one exits, turns unhealthy or is not healthy in
    time; everything made is removed first.
    """
    name = services_network_name(session_id)
    all_labels = {**labels, LABEL_ROLE: ROLE_SERVICE, LABEL_SERVICE_SESSION: session_id}
    made = SessionServices(client, session_id, name)
    try:
        with engine_errors(f"create network {name}"):
            create_internal_network(client, name, all_labels)
        for service in services:
            with engine_errors(f"start service {service.name}"):
                try:
                    facts = ImageFacts.of(client, service.image)
                    container = client.containers.create(
                        **service_spec(service, session_id, name, labels, facts))
                except docker.errors.ImageNotFound:
                    raise SessionError(f"service {service.name!r}: image {service.image!r} "
                                       "not found locally") from None
                made.containers[service.name] = str(container.id)
                # The alias is the service's name on this network (the create above joined
                # it without one): reconnect with it before the start.
                network = client.networks.get(name)
                network.disconnect(container)
                network.connect(container, aliases=[service.name])
                container.start()
        for service in services:
            _wait_healthy(client, service, made.containers[service.name])
    except BaseException:
        with contextlib.suppress(EngineError):
            made.remove()
        raise
    return made


def _wait_healthy(client: docker.DockerClient, service: Service, container_id: str) -> None:
    def healthy() -> bool:
        with engine_errors(f"inspect service {service.name}"):
            state = client.api.inspect_container(container_id).get("State", {})
        health = (state.get("Health") or {}).get("Status")
        if not state.get("Running"):
            raise SessionError(f"service {service.name!r} never became healthy: it exited "
                               f"with code {state.get('ExitCode')}: "
                               f"{_last_lines(client, container_id)}")
        if health == "unhealthy" and service.healthcheck is not None:
            raise SessionError(f"service {service.name!r} never became healthy (its "
                               f"healthcheck failed {service.healthcheck.retries} times in a "
                               "row)")
        return service.healthcheck is None or health == "healthy"

    interval = 0.2 if service.healthcheck is None else min(0.2, service.healthcheck.interval)
    try:
        wait_until(healthy, timeout=wait_seconds(service), what=f"service {service.name}",
                   max_interval=interval)
    except WaitTimeoutError:
        raise SessionError(f"service {service.name!r} never became healthy (not healthy "
                           f"after {wait_seconds(service):.0f}s)") from None


def _last_lines(client: docker.DockerClient, container_id: str) -> str:
    with contextlib.suppress(docker.errors.DockerException):
        return bytes(client.api.logs(container_id, tail=5)).decode(errors="replace").strip()
    return ""


def remove_services(client: docker.DockerClient, *, session_id: str | None = None,
                    run_id: str | None = None) -> list[str]:
    """Remove the services (and networks) of a session or of a whole run; return the
    removed containers' names. Found by label only."""
    filters = [f"{LABEL_ROLE}={ROLE_SERVICE}"]
    if session_id is not None:
        filters.append(f"{LABEL_SERVICE_SESSION}={session_id}")
    if run_id is not None:
        filters.append(f"{LABEL_RUN}={run_id}")
    removed: list[str] = []
    with engine_errors("remove services"):
        for container in client.containers.list(all=True, filters={"label": filters}):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
            removed.append(str(container.name))
        for network in client.networks.list(filters={"label": filters}):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                network.reload()
                for attached in (network.attrs.get("Containers") or {}):
                    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                        network.disconnect(attached, force=True)
                network.remove()
    return removed
