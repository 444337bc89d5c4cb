"""Shared PostgreSQL: names, URLs and the SCRAM verifier are pure functions (no Docker)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from urllib.parse import unquote, urlsplit

from runtime.databases.postgres_credentials import (
    database_url,
    random_database_name,
    scram_verifier,
)

IDENTIFIER = re.compile(r"^[a-z0-9_]{1,63}$")
OPAQUE = re.compile(r"^agentrt_[0-9a-f]{16}$")


def test_names_are_random_opaque_identifiers() -> None:
    names = {random_database_name() for _ in range(1000)}
    assert len(names) == 1000
    assert all(OPAQUE.match(name) and IDENTIFIER.match(name) for name in names)


def test_url_names_the_role_password_host_and_database() -> None:
    url = database_url("agentrt_a_1", "p@ss/w:rd", "agentrt-db-r1", 5432, "agentrt_a_1")
    parts = urlsplit(url)
    assert parts.scheme == "postgresql"
    assert parts.username == "agentrt_a_1"
    assert unquote(parts.password or "") == "p@ss/w:rd"
    assert (parts.hostname, parts.port, parts.path) == ("agentrt-db-r1", 5432, "/agentrt_a_1")


def test_scram_verifier_matches_rfc7677_example() -> None:
    # RFC 7677 section 3: password "pencil"; the server's proof computed from our ServerKey
    # must equal the one in the RFC's exchange.
    salt = "W22ZaJ0SNY7soEsUEjb6gQ=="
    verifier = scram_verifier("pencil", base64.b64decode(salt))
    head, keys = verifier.split("$", 1)[1].split("$")
    assert head == f"4096:{salt}"
    _stored, server_key = (base64.b64decode(k) for k in keys.split(":"))
    nonce = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    auth = f"n=user,r=rOprNGfwEbeRWgbNEkqO,r={nonce},s={salt},i=4096,c=biws,r={nonce}"
    signature = hmac.new(server_key, auth.encode(), hashlib.sha256).digest()
    assert base64.b64encode(signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


# -- integration ----------------------------------------------------------------------------
