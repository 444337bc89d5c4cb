"""Where a session's volume goes: a pure decision from what the engine and this host can do."""

from __future__ import annotations

import pytest

from runtime.backends.docker.disk_sharing import volume_on_engine


def never() -> str:
    raise AssertionError("the engine was probed although the answer did not depend on it")


@pytest.mark.parametrize(
    ("shares", "host", "engine", "allowed", "expected"),
    [
        (False, "loop", never, True, True),      # remote engine: always its host
        (False, "soft", never, False, True),     # ... even when the task would prefer ours
        (True, "loop", never, True, False),      # local engine, root on Linux: this host
        (True, "soft", lambda: "loop", True, True),    # macOS + Colima: hard limit in the VM
        (True, "soft", lambda: "soft", True, False),   # neither can: soft here
        (True, "soft", never, False, False),     # secrets or a shared database: stay here
    ],
)
def test_volume_placement(shares: bool, host: str, engine: object, allowed: bool,
                          expected: bool) -> None:
    assert volume_on_engine(shares, host, engine, allowed) is expected  # type: ignore[arg-type]
