"""Preflight of the tasks' networks: what must hold before a run with agents starts.

:func:`network_problem` is pure (the task file alone); :func:`check_networks_ready` asks the
engine (the egress networks exist, the egress proxy's image is built). Both raise ConfigError
naming the task and the field, so ``agentrt run`` exits 2 with nothing started.
"""

from __future__ import annotations

from collections.abc import Sequence

from runtime.config import RunConfig, Task, check_egress
from runtime.engine.types import EngineClient
from runtime.errors import ConfigError
from runtime.presets import needs_network


def network_problem(config: RunConfig, tasks: Sequence[Task]) -> str | None:
    """Why these tasks' network settings cannot work, or None. Pure.

    An agent preset on ``network = "none"`` could never reach its model API and would only
    hang until its deadline; an external ``database_url`` cannot be reached from the internal
    networks of the allowlist.
    """
    for task in tasks:
        network = config.network_for(task)
        if needs_network(task) and network == "none":
            return (f"task {task.id!r}: field network: the {task.agent} agent must reach its "
                    "model API, and network = \"none\" has no route (it would hang until its "
                    "deadline): use network = \"allowlist\" with egress_allow = [\"<api host>\"] "
                    "(or network = \"bridge\")")
        if (network == "allowlist" and config.database_strategy == "shared"
                and config.database_url):
            return (f"task {task.id!r}: field network: an allowlist session reaches only the "
                    "egress proxy (HTTP), so the server of [run] database_url is out of its "
                    "reach: leave database_url unset (agentrt's own server is reachable) or use "
                    "network = \"bridge\"")
    return None


def uses_allowlist(config: RunConfig, tasks: Sequence[Task]) -> bool:
    """Whether any task sits behind the egress proxy."""
    return any(config.network_for(t) == "allowlist" for t in tasks)


def check_network_settings(client: EngineClient, config: RunConfig,
                           tasks: Sequence[Task]) -> None:
    """Everything about the tasks' networks, before anything is created; ConfigError if not."""
    check_egress(config, tasks)
    problem = network_problem(config, tasks)
    if problem:
        raise ConfigError(problem)
    if not uses_allowlist(config, tasks):
        return
    from runtime.engine.egress import IMAGE_NAME, check_networks
    from runtime.engine.image_build import build_image

    for task in tasks:
        if config.network_for(task) != "allowlist":
            continue
        own = task.egress_networks is not None
        _, networks = config.egress_for(task)
        check_networks(client, networks, f"task {task.id!r}: field egress_networks" if own
                       else "[run] field egress_networks")
    build_image(client, IMAGE_NAME)  # a no-op when agentrt/egress is current
