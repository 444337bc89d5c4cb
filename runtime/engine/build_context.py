"""The build context of an image: its recipe plus the CA bundle builds may trust.

Behind a TLS-intercepting proxy, npm and pip inside an image build fail unless they trust the
proxy's CA. Every build context therefore holds ``agentrt-build-ca.crt``: the bundle named by
``AGENTRT_BUILD_CA_BUNDLE``, else the host's ``/etc/ssl/certs/ca-certificates.crt`` when it
exists, else an empty file (``AGENTRT_BUILD_CA_BUNDLE=none`` forces that). Recipes that download
over HTTPS use it only in a build stage and copy just what they installed into the final stage,
so the bundle is in no layer of the image and agents never trust it. The file is not part of
the recipe's hash: a host's bundle changing does not rebuild the images.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from runtime.errors import ConfigError

BUILD_CA_ENV = "AGENTRT_BUILD_CA_BUNDLE"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA_NAME = "agentrt-build-ca.crt"


def build_ca_bundle(environ: Mapping[str, str] | None = None,
                    host_bundle: Path = HOST_CA_BUNDLE) -> Path | None:
    """The CA bundle image builds trust: ``AGENTRT_BUILD_CA_BUNDLE`` (a file, or ``none``/empty
    for no bundle), else the host's bundle if it exists, else None."""
    env = os.environ if environ is None else environ
    value = env.get(BUILD_CA_ENV)
    if value is not None:
        if value.strip().lower() in ("", "none"):
            return None
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"{BUILD_CA_ENV}={value}: no such file (name a PEM CA bundle, "
                              "or set it to none)")
        return path
    return host_bundle if host_bundle.is_file() else None


@contextlib.contextmanager
def build_context(recipe: Path, ca_bundle: Path | None) -> Iterator[Path]:
    """A temporary copy of ``recipe`` with ``agentrt-build-ca.crt`` added (empty without a
    bundle); removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="agentrt-context-") as tmp:
        context = Path(tmp) / "context"
        shutil.copytree(recipe, context)
        (context / BUILD_CA_NAME).write_bytes(ca_bundle.read_bytes() if ca_bundle else b"")
        yield context
