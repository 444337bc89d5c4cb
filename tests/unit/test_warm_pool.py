"""The warm pool forgets what it prepared and never ran: a failed preparation, a drain."""

from __future__ import annotations

from types import SimpleNamespace

from runtime.errors import VolumeError
from runtime.run.warm_pool import WarmPool


class _Session:
    """A session whose preparation fails or succeeds; counts its releases."""

    def __init__(self, task_id: str, fails: bool) -> None:
        self.task = SimpleNamespace(id=task_id)
        self.session_id = f"{task_id}-abc123"
        self.fails = fails
        self.discarded = 0

    def prepare(self) -> None:
        if self.fails:
            raise VolumeError("no space for the volume")

    def stand_by(self) -> None:
        pass

    def discard(self) -> None:
        self.discarded += 1


def test_a_failed_preparation_is_released_and_its_row_forgotten_at_once() -> None:
    made = {"a": _Session("a", fails=True), "b": _Session("b", fails=False)}
    pool = WarmPool(2, made.__getitem__)  # type: ignore[arg-type]
    pool.fill(["a", "b"])
    assert pool.take("a") is None  # prepared again when it starts
    assert made["a"].discarded == 1  # its branch and its "prepared" row go with it
    assert pool.take("b") is made["b"] and made["b"].discarded == 0


def test_a_drain_releases_each_session_never_taken_once() -> None:
    made = {t: _Session(t, fails=False) for t in ("a", "b")}
    pool = WarmPool(2, made.__getitem__)  # type: ignore[arg-type]
    pool.fill(["a", "b"])
    assert pool.take("a") is made["a"]
    pool.drain()
    assert made["a"].discarded == 0 and made["b"].discarded == 1
