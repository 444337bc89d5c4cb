"""The pure decisions of the Swarm backend's building blocks (issue #26): secrets, node checks
and the egress proxy's spec. Their effects are proven in tests/integration/test_swarm_parts.py."""

from __future__ import annotations

import pytest

from runtime.engine.labels import LABEL_ROLE, LABEL_RUN, LABEL_SESSION
from runtime.engine.swarm_secrets import (
    MAX_NAME,
    SECRET_FILE,
    SECRET_READER,
    LabelledSecret,
    SessionSecret,
    secret_labels,
    secret_name,
    secret_reference,
    secrets_left_over,
    with_secret,
)
from runtime.errors import SessionError


def test_a_secret_name_fits_docker_and_differs_per_call() -> None:
    long = "t" * 80
    assert secret_name("abc", "0f0f") == "agentrt-abc-0f0f"
    assert len(secret_name(long)) <= MAX_NAME
    assert secret_name("abc") != secret_name("abc")


def test_a_secret_is_labelled_with_role_session_and_run_which_callers_cannot_override() -> None:
    labels = secret_labels("s1", "r1", {"agentrt.repo": "/r", LABEL_RUN: "other"})
    assert labels == {"agentrt.repo": "/r", LABEL_ROLE: "secret", LABEL_SESSION: "s1",
                      LABEL_RUN: "r1"}


def test_the_reference_is_a_0400_file_of_the_agent_and_never_carries_data() -> None:
    ref = secret_reference(SessionSecret("id1", "agentrt-s1-ab", "s1"), 1000, 1001)
    assert ref == {"SecretID": "id1", "SecretName": "agentrt-s1-ab",
                   "File": {"Name": SECRET_FILE, "UID": "1000", "GID": "1001", "Mode": 0o400}}


def test_with_secret_puts_the_reader_first_and_keeps_the_rest_of_the_spec() -> None:
    spec = {"name": "svc", "command": ["sh", "-c", "GUARD; ENTRY", "agentrt-entry", "61", "1",
                                       "agent"], "env": {"A": "1"}}
    ref = secret_reference(SessionSecret("id1", "n", "s1"), 1000, 1000)
    out = with_secret(spec, ref)
    assert out["command"][2] == SECRET_READER + "GUARD; ENTRY"
    assert out["command"][3:] == spec["command"][3:]
    assert out["secrets"] == [ref] and out["env"] == {"A": "1"}
    assert spec["command"][2] == "GUARD; ENTRY"  # the input is left alone
    with pytest.raises(SessionError, match="svc"):
        with_secret({"name": "svc", "command": ["agent"]}, ref)


def test_gc_takes_only_agentrts_secrets_of_runs_that_are_over() -> None:
    found = [LabelledSecret("1", "over", {LABEL_ROLE: "secret", LABEL_RUN: "r-over"}),
             LabelledSecret("2", "live", {LABEL_ROLE: "secret", LABEL_RUN: "r-live"}),
             LabelledSecret("3", "other", {LABEL_RUN: "r-over"}),
             LabelledSecret("4", "no-run", {LABEL_ROLE: "secret"})]
    taken = secrets_left_over(found, lambda labels: labels.get(LABEL_RUN) != "r-live")
    assert [s.name for s in taken] == ["over"]
