"""A run's preflight: everything that can be checked before anything is created (tasks and
their dependencies, the base commit, the target of an automatic merge, secrets, network
settings, images, the container runtime, the shared database, Swarm or admission against the
engine's capacity), and last the build of the tasks' environments. Raises ConfigError naming
what is wrong."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from runtime.config import RunConfig, Task, validate_tasks
from runtime.engine.types import EngineClient
from runtime.errors import ConfigError
from runtime.git.safe_git import MainRepo
from runtime.git.workspace import resolve_base
from runtime.presets import resolve_image
from runtime.run.environments import EnvImage, prepare_environments
from runtime.run.identity import secret_env


def check_merge_target(repo: MainRepo, config: RunConfig) -> None:
    """With ``merge = "auto"``, raise ConfigError unless the target can be merged into now (a
    branch that exists, not checked out with uncommitted changes, no detached HEAD without a
    target, no rebase or merge in progress on it): found after the agents ran, their work
    would stay on their branches."""
    if config.merge != "auto":
        return
    from runtime.git.merge import auto_merge_blocker

    blocker = auto_merge_blocker(repo, config.target)
    if blocker is not None:
        raise ConfigError(f"[run] field merge: merge = \"auto\" cannot merge into the target: "
                          f"{blocker}; or run with merge = \"review\" (--merge review) and "
                          "merge later with `agentrt merge RUN`")


def check_run(get_client: Callable[[], EngineClient], repo: MainRepo, config: RunConfig,
              tasks: Sequence[Task], build_log: Callable[[str], None] | None = None,
              known: Sequence[Task] = (),
              ) -> tuple[str, dict[str, EnvImage]]:
    """Check ``tasks`` of a run with ``config`` in ``repo``; return the base commit and the
    built environments by task id. The engine is asked (``get_client``) only once the checks
    that need none have passed. ``known``: tasks already in the (live) run, which ``tasks``
    may depend on; they are not checked again."""
    from runtime.engine.images import require_image
    from runtime.run.network_preflight import check_network_settings

    validate_tasks([*known, *tasks])
    base_commit = resolve_base(repo, config.base)
    check_merge_target(repo, config)
    for task in tasks:
        secret_env(task)
    client = get_client()
    check_network_settings(client, config, tasks)
    for image in sorted({resolve_image(t, config.image) for t in tasks
                         if config.environment_for(t) is None}
                        | {s.image for s in config.services}):
        require_image(client, image)
    if config.runtime == "runsc":
        from runtime.engine.discovery import registered_runtimes, runtime_args

        runtimes = registered_runtimes(client)
        if "runsc" not in runtimes:
            raise ConfigError("[run] field runtime: runsc (gVisor) is not registered with "
                              "the Docker engine; see `agentrt doctor`")
        needs_network = config.database_strategy == "shared" or any(
            config.network_for(t) in ("bridge", "allowlist") for t in tasks)
        if needs_network and "--network=none" in runtime_args(client, "runsc"):
            raise ConfigError(
                "[run] field runtime: runsc is registered with --network=none on this engine, "
                "so network = \"bridge\" or \"allowlist\" and database_strategy = "
                "\"shared\" cannot work; "
                "use runc for this run or register runsc with networking")
    if config.database_strategy == "shared" and config.database_url:
        from runtime.databases.postgres import IMAGE as POSTGRES_IMAGE
        from runtime.databases.postgres import check_database_url
        from runtime.errors import DatabaseError

        require_image(client, POSTGRES_IMAGE)
        try:
            check_database_url(client, config.database_url)
        except DatabaseError as exc:
            raise ConfigError(f"[run] field database_url: cannot use it: {exc}") from None
    from runtime.backends.registry import preflight as backend_preflight

    backend_preflight(client, repo, config, tasks)
    # Last: builds can take minutes, and every cheaper refusal comes first.
    env_images = prepare_environments(client, repo, base_commit, config, tasks, build_log)
    return base_commit, env_images
