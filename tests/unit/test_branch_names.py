"""Branch names are validated before git sees them."""

from __future__ import annotations

import pytest

from runtime.errors import ConfigError
from runtime.git.safe_git import check_branch_name


@pytest.mark.parametrize("name", ["-x", "a..b", "a@{1}", "bad\x07name", "@", "x" * 256,
                                  "a b", "a~1", "a^", "a:b", "a/.lock", "end.lock", ""])
def test_bad_branch_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError):
        check_branch_name(name)


def test_session_branch_names_pass() -> None:
    assert check_branch_name("agent/parser/1a2b3c") == "agent/parser/1a2b3c"
