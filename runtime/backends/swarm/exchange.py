"""The exchange: how a base reaches a Swarm node and work comes home, with plain git.

On one engine agentrt ships bundles in and out of containers with ``put_archive`` and
``get_archive``. On Swarm it talks only to a manager, whose API cannot reach a container on a
worker. So a run on Swarm gets one small service, ``agentrt-x-<run>``: agentrt's base image
running ``git daemon`` over bare repositories, pinned to the manager agentrt talks to, on an
*internal* overlay network of the run that only agentrt's own helper tasks join (the checkout
and the harvest), never a session.

**Who may push where.** ``git daemon`` knows no one, so nothing it serves takes a push unless
agentrt made it to: the bases' repository ``x.git`` and the verdicts' ``v.git`` refuse every
push (only agentrt's ``exec`` writes them), and each harvest pushes into a repository of its
session's own, ``w/<128-bit random>.git`` (:meth:`Exchange.open_session`), whose name only
agentrt and that session's harvest helper know (``git daemon`` lists nothing), which borrows
the bases' objects (``objects/info/alternates``), checks what it receives
(``receive.fsckObjects``) and takes at most ``max_import_mb`` in one push
(``receive.maxInputSize``). agentrt bundles a session's work from that repository only, so no
helper, and nothing on the network, can put work under another session's name.

* **Base in**: the host makes a bundle of the session's branch (the user's repository, trusted),
  ``put_archive``\\ s it into the exchange's container through the manager and fetches it there
  into ``refs/base/<commit>`` (once per base commit). The checkout helper on the node fetches
  that ref over ``git://`` into the session's volume.
* **Work out**: the harvest helper on the node runs the same script, in the same container,
  as on one machine (:mod:`runtime.backends.swarm.node_jobs`), then pushes its ``work`` (and
  ``files``) commit to ``refs/work/<session>/...`` of the session's push repository. The exchange
  fsck's what it receives; the host then has the exchange ``git bundle create`` that ref
  against the base, copies the bundle out with
  ``get_archive`` and verifies and imports it exactly as on one machine
  (:func:`runtime.git.bundle.import_bundle`).

The exchange starts in the background (:meth:`Exchange.begin`): the run's first node helpers
make their volumes meanwhile and wait for the base (:mod:`runtime.backends.swarm.node_jobs`). At the
run's end :meth:`Exchange.stop_in_background` removes it without holding the run up.

What a session wrote is only ever read by git in containers (the node's harvest, the
exchange) and by the host's bundle checks, never by host git in the session's tree.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
from pathlib import Path

import docker
import docker.errors

from runtime.backends.swarm.service import helper_service_spec
from runtime.backends.swarm.teardown import (
    end_container,
    get_or_none,
    remove_service_and_network,
    wait_for_container,
)
from runtime.engine.discovery import engine_errors
from runtime.engine.labels import LABEL_ROLE, LABEL_RUN
from runtime.engine.volume_helpers import HELPER_IMAGE
from runtime.errors import EngineError, HarvestError, WorkspaceError
from runtime.git.engine_checkout import create_base_bundle, tar_one_file
from runtime.git.harvest import (
    ADD_ERRORS,
    EXIT_UNCHANGED,
    HEAD_UNREADABLE,
    Harvest,
    HarvestPlan,
    fetch_file,
)
from runtime.git.safe_git import MainRepo

log = logging.getLogger(__name__)

ROLE_EXCHANGE = "exchange"
PORT = 9418
REPO = "/srv/x.git"
START_TIMEOUT_S = 90
HELPER_TIMEOUT_S = 600
EXCHANGE_MEMORY = 512 * 1024 * 1024
STOP_GRACE_NS = 1_000_000_000

START_SCRIPT = r"""
set -eu
export HOME=/srv GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
mkdir -p /srv/in /srv/out
git init -q --bare /srv/x.git
git --git-dir=/srv/x.git config receive.fsckObjects true
git --git-dir=/srv/x.git config gc.auto 0
git --git-dir=/srv/x.git config core.hooksPath /dev/null
git --git-dir=/srv/x.git config daemon.receivepack false
mkdir -p /srv/w
# The verdicts (is a session's work home?): written by agentrt alone (exec), read by nodes.
git init -q --bare /srv/v.git
git --git-dir=/srv/v.git config daemon.receivepack false
t=$(git --git-dir=/srv/v.git hash-object -t tree -w /dev/null)
c=$(git --git-dir=/srv/v.git -c user.name=agentrt -c user.email=agentrt@agentrt.invalid \
  commit-tree -m verdict "$t")
git --git-dir=/srv/v.git update-ref refs/heads/verdict "$c"
# No push by default: a repository takes one only if its config says daemon.receivepack
# (the sessions' push repositories, made by agentrt's exec).
exec git daemon --reuseaddr --export-all --informative-errors \
  --base-path=/srv --listen=0.0.0.0 --port=9418 /srv
"""

VERDICTS = "/srv/v.git"
PUSHES = "/srv/w"
# In the exchange: $0 a new push repository, $1 the most it may take in one push (bytes).
OPEN_SCRIPT = r"""
set -eu
git init -q --bare "$0"
for kv in daemon.receivepack=true receive.fsckObjects=true core.hooksPath=/dev/null \
          gc.auto=0 receive.denyDeletes=true "receive.maxInputSize=$1"; do
  git --git-dir="$0" config "${kv%%=*}" "${kv#*=}"
done
echo /srv/x.git/objects > "$0/objects/info/alternates"
"""
# In the exchange: $0 the session's push repository ("" if none), $1 the session; delete the
# repository and the session's verdicts.
FORGET_SCRIPT = r"""
case $0 in /srv/w/*.git) rm -rf -- "$0";; esac
for r in home keep; do
  git --git-dir=/srv/v.git -c core.hooksPath=/dev/null update-ref -d "refs/$1/$r" || :
done
"""
# In the exchange: $0 the repository, $1 the session, $2 the base; bundle each of the session's
# refs there is into /srv/out and say which.
BUNDLE_SCRIPT = r"""
set -eu
for r in work files; do
  if git --git-dir="$0" rev-parse -q --verify "refs/work/$1/$r" >/dev/null; then
    git --git-dir="$0" -c core.hooksPath=/dev/null bundle create -q "/srv/out/$1-$r.bundle" \
      "refs/work/$1/$r" --not "$2"
    echo "made:$r"
  fi
done
"""


def exchange_name(run_id: str) -> str:
    """The exchange service's name (its host name on the run's network) and network's."""
    return f"agentrt-x-{run_id}"[:63]


class Exchange:
    """A run's exchange: its service, network and container (on the manager's own engine).

    :meth:`begin` starts it in a thread and returns at once, so the run's other start-up work
    (and the first sessions' volumes on their nodes) overlap with it: what needs the network
    waits for the network only (:attr:`network_id`), what needs the repository waits until it
    answers (:meth:`wait`)."""

    def __init__(self, client: docker.DockerClient, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._service_id = self._network_id = self._container_id = ""
        self._network_made = threading.Event()
        self._error: BaseException | None = None
        self._starter: threading.Thread | None = None
        self._bases: set[str] = set()
        self._pushes: dict[str, str] = {}  # session -> its push repository's name
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The repository as the run's helper tasks reach it."""
        return f"git://{exchange_name(self.run_id)}:{PORT}/x.git"

    @classmethod
    def start(cls, client: docker.DockerClient, run_id: str, node_id: str,
              timeout: float = START_TIMEOUT_S) -> Exchange:
        """Start the run's exchange on ``node_id`` (the manager agentrt talks to) and wait
        until it answers; EngineError when it does not come up (nothing of it is left)."""
        exchange = cls(client, run_id)
        exchange._start(node_id, timeout)
        exchange.wait()
        return exchange

    @classmethod
    def begin(cls, client: docker.DockerClient, run_id: str, node_id: str,
              timeout: float = START_TIMEOUT_S) -> Exchange:
        """:meth:`start` in a thread: returns at once; its error is raised by what waits."""
        exchange = cls(client, run_id)
        exchange._starter = threading.Thread(target=exchange._start, args=(node_id, timeout),
                                             name=f"agentrt-exchange-{run_id}", daemon=True)
        exchange._starter.start()
        return exchange

    def wait(self) -> None:
        """Until the exchange answers; EngineError if it did not come up."""
        if self._starter is not None:
            self._starter.join()
        if self._error is not None:
            raise EngineError(f"the run's exchange did not start: {self._error}")

    @property
    def network_id(self) -> str:
        """The run's network (once it exists: helpers may join it before the exchange runs)."""
        self._network_made.wait()
        if not self._network_id:
            self.wait()
        return self._network_id

    @property
    def service_id(self) -> str:
        """The exchange's service."""
        self.wait()
        return self._service_id

    @property
    def container_id(self) -> str:
        """The exchange's container on the manager's engine."""
        self.wait()
        return self._container_id

    def _start(self, node_id: str, timeout: float) -> None:
        name = exchange_name(self.run_id)
        labels = {LABEL_RUN: self.run_id, LABEL_ROLE: ROLE_EXCHANGE}
        client = self.client
        network = service = None
        try:
            with engine_errors(f"start the exchange {name}"):
                try:
                    network = client.networks.create(name, driver="overlay", internal=True,
                                                     labels=labels)
                    self._network_id = str(network.id)
                finally:
                    self._network_made.set()
                spec = helper_service_spec(
                    image=HELPER_IMAGE, command=["sh", "-c", START_SCRIPT], node_id=node_id,
                    labels=labels, memory_bytes=EXCHANGE_MEMORY, pids=256,
                    name_prefix="agentrt-x", session_id=self.run_id)
                # Writable root (the repository lives there); reached by name on the run's
                # network, by DNS round robin (no IPVS virtual IP needed); git daemon ends on
                # SIGTERM, so the run's end does not wait out the default 10 s grace.
                spec.update(name=name, read_only=False, networks=[network.id],
                            endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
                            stop_grace_period=STOP_GRACE_NS)
                service = client.services.create(**spec)
                self._service_id = str(service.id)
                self._container_id = wait_for_container(client, service, timeout)
                self._exec_raw(["git", f"--git-dir={REPO}", "rev-parse", "--git-dir"],
                               "the exchange's repository")  # answers: it exists
        except BaseException as exc:
            self._error = exc
            with contextlib.suppress(EngineError):
                remove_service_and_network(service, network)
            self._service_id = self._network_id = self._container_id = ""
            if self._starter is None:
                raise

    def _exec(self, argv: list[str], what: str) -> str:
        self.wait()
        return self._exec_raw(argv, what)

    def _exec_raw(self, argv: list[str], what: str) -> str:
        with engine_errors(what):
            result = self.client.api.exec_create(self._container_id, argv, user="0:0",
                                                 environment={"HOME": "/srv",
                                                              "GIT_CONFIG_NOSYSTEM": "1",
                                                              "GIT_CONFIG_GLOBAL": "/dev/null"})
            out = self.client.api.exec_start(result["Id"])
            code = self.client.api.exec_inspect(result["Id"]).get("ExitCode")
        text = bytes(out or b"").decode(errors="replace")
        if code != 0:
            raise EngineError(f"{what}: exit {code}: {text.strip()[-500:]}")
        return text

    def _git(self, *args: str) -> str:
        return self._exec(["git", f"--git-dir={REPO}", "-c", "core.hooksPath=/dev/null", *args],
                          f"git {args[0]} in the exchange")

    def ship_base(self, repo: MainRepo, branch: str, commit: str, scratch: Path) -> str:
        """Make ``commit`` (the tip of ``branch``) available in the exchange; its ref there."""
        ref = f"refs/base/{commit}"
        with self._lock:
            if commit in self._bases:
                return ref
            # Made while the exchange may still be starting; then it is waited for.
            bundle = create_base_bundle(repo.git_dir, branch, commit, scratch / "base.bundle")
            inside = f"/srv/in/{commit}.bundle"
            try:
                self.wait()
                with engine_errors("ship the base into the exchange"):
                    if not self.client.api.put_archive(
                            self.container_id, "/srv/in",
                            tar_one_file(bundle, f"{commit}.bundle")):
                        raise EngineError("the exchange refused the base bundle")
                # One exec: fetch it into the repository, then delete it either way.
                self._exec(["sh", "-c", 'git --git-dir="$0" -c core.hooksPath=/dev/null fetch '
                            '-q --no-tags "$1" "$2"; rc=$?; rm -f "$1"; exit $rc', REPO,
                            inside, f"+refs/heads/{branch}:{ref}"], "git fetch in the exchange")
            except EngineError as exc:
                raise WorkspaceError(f"cannot ship the base to the exchange: {exc}") from exc
            finally:
                bundle.unlink(missing_ok=True)
            self._bases.add(commit)
            return ref

    def collect_harvest(self, node_id: str, plan: HarvestPlan, code: int, output: str,
                        dest: Path, max_bytes: int) -> Harvest:
        """The harvest that ended with ``code`` and ``output`` on ``node_id``: its bundles made
        in the exchange and copied out. HarvestError when it failed or cannot finish."""
        sid = plan.session_id
        try:
            if code not in (0, EXIT_UNCHANGED):
                raise HarvestError(f"the harvest failed (exit {code}): {output.strip()[-800:]}")
            bundles: dict[str, Path] = {}
            if code == 0:
                dest.mkdir(parents=True, exist_ok=True)
                # One exec makes the bundles of the refs there are; one removes them.
                made = self._exec(["sh", "-c", BUNDLE_SCRIPT, self._push_repo(sid), sid,
                                   plan.base_commit], "git bundle create in the exchange").split()
                try:
                    for name in ("work", "files"):
                        if f"made:{name}" not in made:
                            continue
                        path = fetch_file(self.client, self.container_id,
                                          f"/srv/out/{sid}-{name}.bundle", dest, max_bytes)
                        if path is not None:
                            bundles[f"{name}.bundle"] = path
                finally:
                    self._exec(["rm", "-f", f"/srv/out/{sid}-work.bundle",
                                f"/srv/out/{sid}-files.bundle"], "remove the made bundles")
                if "work.bundle" not in bundles:
                    raise HarvestError("the harvest finished but the exchange has no work")
        except EngineError as exc:
            raise HarvestError(f"the harvest could not run on node {node_id}: {exc}") from exc
        return Harvest(bundles=bundles, unchanged=code == EXIT_UNCHANGED,
                       head_unreadable=HEAD_UNREADABLE in output,
                       unreadable_files=ADD_ERRORS in output, log=output)

    @property
    def verdicts_url(self) -> str:
        """The verdicts' repository (read-only over git://) as the run's helpers reach it."""
        return f"git://{exchange_name(self.run_id)}:{PORT}/v.git"

    def verdict(self, session_id: str, home: bool) -> None:
        """Tell the node helper holding ``session_id``'s volume: its work is home (remove the
        volume) or not (keep it). Refs of ``v.git``, which nothing but this exec can write."""
        self._exec(["git", f"--git-dir={VERDICTS}", "-c", "core.hooksPath=/dev/null",
                    "update-ref", f"refs/{session_id}/{'home' if home else 'keep'}",
                    "refs/heads/verdict"], "write a verdict in the exchange")

    def open_session(self, session_id: str, max_bytes: int) -> str:
        """The URL of ``session_id``'s own push repository in the exchange, made on first
        use: the only repository its harvest helper can push to, under a random name that
        nobody else learns, taking at most ``max_bytes`` in one push. EngineError if the
        exchange cannot make it."""
        with self._lock:
            name = self._pushes.get(session_id)
            if name is None:
                name = f"{secrets.token_hex(16)}.git"
                self._exec(["sh", "-c", OPEN_SCRIPT, f"{PUSHES}/{name}",
                            str(max(1, max_bytes))], "make a push repository in the exchange")
                self._pushes[session_id] = name
        return f"git://{exchange_name(self.run_id)}:{PORT}/w/{name}"

    def _push_repo(self, session_id: str) -> str:
        with self._lock:
            name = self._pushes.get(session_id)
        if name is None:
            raise HarvestError(f"session {session_id} has no push repository in the exchange")
        return f"{PUSHES}/{name}"

    def forget(self, session_id: str) -> None:
        """Delete a session's push repository and verdicts from the exchange (its work is
        home)."""
        with self._lock:
            name = self._pushes.pop(session_id, None)
        with contextlib.suppress(EngineError):  # one exec for the repository and verdicts
            self._exec(["sh", "-c", FORGET_SCRIPT, f"{PUSHES}/{name}" if name else "",
                        session_id], "forget a session in the exchange")

    def stop(self) -> None:
        """Remove the exchange's service and network; idempotent (EngineError if it cannot).
        Waits for a start under way; a start that failed left nothing."""
        if self._starter is not None:
            self._starter.join()
        if self._error is not None:
            return
        # Ended from inside first: the task then leaves the network at once. Removing the
        # service of a running task took Swarm 3.2 s to stop it (measured), and the network
        # is only removed after that.
        end_container(self.client, self._container_id)
        with engine_errors("remove the exchange"):
            remove_service_and_network(get_or_none(self.client.services, self._service_id),
                                       get_or_none(self.client.networks, self._network_id))

    def stop_in_background(self) -> threading.Thread:
        """:meth:`stop` in a thread of its own and return it (about 0.4 s on a small Swarm,
        the network's removal waits for the task to leave it). Not a daemon: the process does
        not exit before the exchange is gone; a failure is logged (``agentrt gc`` finds what
        is left by its labels)."""

        def stop() -> None:
            try:
                self.stop()
            except EngineError as exc:
                log.warning("the exchange of run %s was not removed (%s); `agentrt gc` "
                            "removes it", self.run_id, exc)

        thread = threading.Thread(target=stop, name=f"agentrt-exchange-stop-{self.run_id}")
        thread.start()
        return thread


def remove_exchanges(client: docker.DockerClient, run_id: str | None = None) -> list[str]:
    """Remove the exchanges (services and networks) of ``run_id`` (of every run if None),
    found by label; their names."""
    filters = [f"{LABEL_ROLE}={ROLE_EXCHANGE}"]
    if run_id is not None:
        filters.append(f"{LABEL_RUN}={run_id}")
    removed: list[str] = []
    with engine_errors("list the exchanges"):
        services = client.services.list(filters={"label": filters})
        networks = client.networks.list(filters={"label": filters})
    for service in services:
        removed.append(str(service.name))
        remove_service_and_network(service, None)
    for network in networks:
        remove_service_and_network(None, network)
    return removed
