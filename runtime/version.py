"""agentrt's own version, as installed (``agentrt --version``, doctor, manifests)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version


@cache
def agentrt_version() -> str:
    """The installed distribution's version; ``unknown`` when running from a bare checkout."""
    try:
        return version("agentrt")
    except PackageNotFoundError:
        return "unknown"
