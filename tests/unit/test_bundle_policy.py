"""The bundle import policy's pure parts (no Docker): how secrets are recognised."""

from __future__ import annotations

import base64

from runtime.git.bundle import secret_needles


def test_base64_forms_of_a_secret_are_found_at_every_alignment() -> None:
    value = "hunter2-very-secret"
    for prefix in ("", "a", "ab", "abc", "abcd"):
        encoded = base64.b64encode((prefix + value + "tail").encode())
        assert any(n in encoded for n in secret_needles(value)[1:]), prefix
