"""What ``egress_allow`` means: parsing its entries and the egress proxy's rules (pure).

``network = "allowlist"`` puts a session on an internal Docker network whose only way out is
the run's egress proxy (Debian's tinyproxy, ``runtime/engine/egress.py``). This module turns the
task file's ``egress_allow`` entries into that proxy's configuration, with no I/O:

* ``"host"`` allows plain HTTP to ``host`` on port 80 and CONNECT (HTTPS) to ``host:443``;
* ``"host:port"`` allows plain HTTP and CONNECT to ``host:port`` only;
* ``"*.example.com"`` allows every subdomain of ``example.com`` (not ``example.com`` itself).

Hosts are names (letters, digits, ``-``, ``_``, dots) or IPv4 addresses, compared without case.
The filter matches tinyproxy's whole request URL (``FilterURLs On``, extended regexes): plain
HTTP requests arrive as ``http://host[:port]/path`` and CONNECT requests as ``host:port``, so
every rule is anchored at both ends of the host and port, and ``http://allowed@evil/`` or
``allowed.evil.com`` never match.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

PROXY_PORT = 8888
PROXY_ALIAS = "agentrt-egress"  # the proxy's name on every session network
DEFAULT_HTTP_PORT = 80
DEFAULT_TLS_PORT = 443
MAX_HOST_LENGTH = 253
NO_PROXY = "localhost,127.0.0.1,::1"

_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_RE = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")


@dataclass(frozen=True)
class EgressTarget:
    """One allowed destination: a host (lower case, maybe ``*.``-prefixed) and a port or None
    (None: HTTP on 80 and HTTPS on 443)."""

    host: str
    port: int | None = None

    def sort_key(self) -> tuple[str, int]:
        """Host, then port (a bare host first)."""
        return self.host, self.port or 0

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def parse_target(entry: str) -> EgressTarget:
    """``"api.example.com"`` or ``"models.internal:8080"`` → :class:`EgressTarget`.

    Raises ValueError saying what is wrong (schemes, paths, IPv6 literals, bad ports and bad
    host names are refused rather than guessed at).
    """
    text = entry.strip()
    if not text:
        raise ValueError("an empty entry: write a host or host:port")
    if "://" in text or "/" in text:
        raise ValueError(f"{entry!r}: write a host or host:port, without a scheme or a path")
    if text.startswith("[") or text.count(":") > 1:
        raise ValueError(f"{entry!r}: IPv6 addresses are not supported; use a host name")
    host, sep, port_text = text.partition(":")
    port: int | None = None
    if sep:
        if not _PORT_RE.match(port_text) or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{entry!r}: the port must be a number from 1 to 65535")
        port = int(port_text)
    host = host.lower()
    if len(host) > MAX_HOST_LENGTH or not _HOST_RE.match(host):
        raise ValueError(f"{entry!r}: {host!r} is not a host name: use letters, digits, '-', "
                         "'_' and dots (optionally starting with '*.'), or an IPv4 address")
    return EgressTarget(host, port)


def parse_targets(entries: Iterable[str]) -> tuple[EgressTarget, ...]:
    """Every entry parsed, duplicates dropped, sorted (so equal policies compare equal)."""
    return tuple(sorted({parse_target(entry) for entry in entries}, key=EgressTarget.sort_key))


def _host_regex(host: str) -> str:
    if host.startswith("*."):
        return r"([a-z0-9_-]+\.)+" + re.escape(host[2:])
    return re.escape(host)


def filter_rules(targets: Iterable[EgressTarget]) -> list[str]:
    """The proxy's filter file: one anchored extended regex per line, each allowing one form.

    Matched (case-insensitively) against the request's URL: ``http://host[:port]/...`` for
    plain HTTP, ``host:port`` for CONNECT.
    """
    rules: list[str] = []
    for target in targets:
        host = _host_regex(target.host)
        if target.port is None:
            rules.append(rf"^http://{host}(:{DEFAULT_HTTP_PORT})?(/|$)")
            rules.append(rf"^{host}:{DEFAULT_TLS_PORT}$")
        else:
            if target.port == DEFAULT_HTTP_PORT:
                rules.append(rf"^http://{host}(:{DEFAULT_HTTP_PORT})?(/|$)")
            else:
                rules.append(rf"^http://{host}:{target.port}(/|$)")
            rules.append(rf"^{host}:{target.port}$")
    return list(dict.fromkeys(rules))


def connect_ports(targets: Iterable[EgressTarget]) -> list[int]:
    """The ports CONNECT may reach (tinyproxy's ``ConnectPort`` lines): 443 for a bare host,
    the given port otherwise."""
    return sorted({t.port if t.port is not None else DEFAULT_TLS_PORT for t in targets})


def proxy_config(targets: Iterable[EgressTarget], filter_path: str = "/tmp/filter",
                 port: int = PROXY_PORT) -> str:
    """tinyproxy's configuration: deny by default, allow what the filter matches, CONNECT only
    to the allowed ports, every request and refusal logged to stdout (``Connect``), no Via
    header."""
    targets = list(targets)
    if not targets:
        raise ValueError("an egress proxy needs at least one allowed host")
    lines = [
        f"Port {port}",
        "Timeout 600",
        "MaxClients 128",
        "LogLevel Connect",
        "DisableViaHeader Yes",
        "FilterDefaultDeny Yes",
        f'Filter "{filter_path}"',
        "FilterURLs On",
        "FilterType ere",
        "FilterCaseSensitive Off",
        *(f"ConnectPort {p}" for p in connect_ports(targets)),
    ]
    return "\n".join(lines) + "\n"


def proxy_env(host: str = PROXY_ALIAS, port: int = PROXY_PORT) -> dict[str, str]:
    """The variables that send a session's HTTP(S) clients through the proxy."""
    url = f"http://{host}:{port}"
    return {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url,
            "NO_PROXY": NO_PROXY, "no_proxy": NO_PROXY}


def policy_key(targets: Iterable[EgressTarget], networks: Iterable[str]) -> str:
    """A short stable key of one egress policy (sessions with equal keys share a proxy)."""
    hosts = "\0".join(str(t) for t in sorted(targets, key=EgressTarget.sort_key))
    text = hosts + "\0\0" + "\0".join(sorted(networks))
    return hashlib.sha256(text.encode()).hexdigest()[:12]

