"""Environment images on the engine: listing them (``agentrt images ls``) and pruning the
unused ones (``agentrt images prune``).

Pruning removes ``agentrt/env:*`` images created more than ``days`` days ago whose id is not
in ``keep`` (the image ids recorded by the sessions still in a repository's state database,
so ``agentrt replay`` of a kept run still finds its exact environment). An image a container
still uses is left alone (the engine refuses to remove it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime

import docker
import docker.errors

from runtime.engine.discovery import engine_errors
from runtime.engine.environment_build import (
    ENV_REPO,
    LABEL_ENV,
    LABEL_ENV_AGENT,
    LABEL_ENV_SOURCE,
)


@dataclass(frozen=True)
class EnvImageInfo:
    """One environment image."""

    key: str
    ref: str
    id: str
    source: str
    agent: str
    created: str
    size_bytes: int


def list_env_images(client: docker.DockerClient) -> list[EnvImageInfo]:
    """Every environment image (label ``agentrt.env``), newest first."""
    with engine_errors("list environment images"):
        images = client.images.list(filters={"label": LABEL_ENV})
    found = []
    for image in images:
        labels = image.labels or {}
        tags = [t for t in image.tags if t.startswith(f"{ENV_REPO}:")]
        found.append(EnvImageInfo(
            key=str(labels.get(LABEL_ENV, "")), ref=tags[0] if tags else "",
            id=str(image.id), source=str(labels.get(LABEL_ENV_SOURCE, "")),
            agent=str(labels.get(LABEL_ENV_AGENT, "")),
            created=str(image.attrs.get("Created", "")),
            size_bytes=int(image.attrs.get("Size", 0))))
    return sorted(found, key=lambda i: i.created, reverse=True)


def _age_days(created: str, now: datetime) -> float:
    try:
        stamp = datetime.fromisoformat(created[:26].rstrip("Z") + "+00:00")
    except ValueError:
        return 0.0
    return (now - stamp.astimezone(UTC)).total_seconds() / 86400


def prune_env_images(client: docker.DockerClient, keep: set[str], days: float,
                     now: datetime | None = None) -> tuple[list[str], list[str]]:
    """Remove environment images older than ``days`` whose id is not in ``keep``; return
    (removed refs or ids, messages about those left because the engine refused)."""
    now = now or datetime.now(UTC)
    removed: list[str] = []
    refused: list[str] = []
    for info in list_env_images(client):
        if info.id in keep or _age_days(info.created, now) < days:
            continue
        try:
            with engine_errors(f"remove {info.ref or info.id}"), \
                    contextlib.suppress(docker.errors.NotFound):
                client.images.remove(info.id, force=False, noprune=False)
            removed.append(info.ref or info.id)
        except Exception as exc:  # noqa: BLE001 - in use: reported, the rest goes on
            refused.append(f"{info.ref or info.id}: {exc}")
    return removed, refused
