"""Names and credentials of the ``shared`` strategy's databases: opaque random names, the
SCRAM-SHA-256 verifier the server gets instead of a password, and the agent's URL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from urllib.parse import quote

NAME_PREFIX = "agentrt_"
SCRAM_ITERATIONS = 4096  # PostgreSQL's own default (scram_iterations)


def random_database_name() -> str:
    """A fresh database and role name: ``agentrt_`` + 16 random hex digits (64 bits).

    Never derived from the session, task or run id: every role can read the names of every
    database and role on the server. Always matches ``[a-z0-9_]{1,63}``.
    """
    return NAME_PREFIX + secrets.token_hex(8)


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802/7677).

    Handing the server this instead of the password keeps the clear text out of SQL, psql's
    argv, the server's logs and ``pg_stat_activity``. ``password`` must be ASCII (SASLprep is
    then the identity), which ``secrets.token_urlsafe`` guarantees.
    """
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return (f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}"
            f"${b64(stored_key)}:{b64(server_key)}")


def database_url(role: str, password: str, host: str, port: int, db: str) -> str:
    """``postgresql://role:password@host:port/db`` with user and password percent-encoded."""
    return f"postgresql://{quote(role, safe='')}:{quote(password, safe='')}@{host}:{port}/{db}"
