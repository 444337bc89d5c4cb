"""Replay a session: the same task from the recorded image digest, base commit and limits."""

from __future__ import annotations

from runtime.config import RunConfig, Task
from runtime.errors import ConfigError, ImageNotFoundError
from runtime.git.safe_git import MainRepo
from runtime.models import RunReport
from runtime.state.store import SessionRow


def replay_config(row: SessionRow) -> tuple[RunConfig, Task]:
    """The run settings and task that reproduce ``row`` (pure)."""
    manifest = row.manifest
    if manifest is None:
        raise ConfigError(f"session {row.id} has no manifest to replay from")
    task = Task.model_validate(manifest.task)
    image = manifest.image_digest or manifest.image
    config = RunConfig(
        max_concurrent_agents=1, base=manifest.base_commit, merge="none",
        image=image, network=manifest.network,
        egress_allow=manifest.egress_allow if manifest.network == "allowlist" else [],
        egress_networks=manifest.egress_networks if manifest.network == "allowlist" else [],
        runtime=manifest.runtime,
        database_strategy=manifest.database_strategy,
        resource_limits=manifest.limits,
        services=manifest.services,
    )
    # The digest pins the image; the task's own image name must not override it, and its
    # dependencies are already merged into the recorded base commit.
    # The recorded image is the built environment itself: it is not built again.
    return config, task.model_copy(update={"image": image, "deps": [], "environment": None})


def replay_session(repo: MainRepo, row: SessionRow) -> RunReport:
    """Run ``row``'s task again as a new session; the report has one session."""
    from runtime.run.coordinator import AgentCoordinator

    config, task = replay_config(row)
    try:
        return AgentCoordinator(config=config, repo=repo).run_agents([task])
    except ImageNotFoundError as exc:
        from runtime.engine.images import build_command

        tag = row.manifest.image if row.manifest is not None else config.image
        command = build_command(tag)
        again = (f"rebuild it with `{command}` if its recipe is unchanged" if command else
                 f"pull or build {tag} again (`docker pull {tag}`)")
        raise ImageNotFoundError(
            f"image {config.image} of session {row.id} is not on this engine: {again}, or "
            f"`docker load` the file saved by `agentrt images export {row.id} FILE`") from exc
