"""The conflict radar's comparison is pure; its reading of live trees uses real git."""

from __future__ import annotations

from runtime.run.radar import Overlap, overlaps


def test_overlaps_are_reported_per_pair_and_path() -> None:
    found = overlaps({"a": {"x.py", "y.py"}, "b": {"y.py"}, "c": {"x.py", "z.py"}})
    assert found == [Overlap("y.py", "a", "b"), Overlap("x.py", "a", "c")]
    assert overlaps({"a": {"x"}, "b": {"y"}}) == []
