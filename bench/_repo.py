"""A deterministic benchmark repository: about 2,000 files and 25 MB of source-like text.

The template is generated once per (seed, files, size) with ``git fast-import`` (fixed author
and dates, so the commit id is the same on every machine) and cached as a bare repository under
``$TMPDIR/agentrt-bench/``. Each benchmark works on its own clone in a scratch directory, so
the branches and state a run leaves never reach the template.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE = Path(tempfile.gettempdir()) / "agentrt-bench"
WORDS = [
    "self", "value", "result", "index", "count", "items", "config", "session", "branch",
    "worker", "buffer", "token", "parse", "render", "update", "create", "delete", "handle",
    "request", "response", "error", "retry", "limit", "offset", "cursor", "stream", "record",
    "schema", "column", "table", "query", "cache", "lock", "event", "state", "status",
]
STATEMENTS = (
    "    {a} = {b}.{c}({d}, {e})",
    "    if {a} is None:\n        return {b}",
    "    for {a} in {b}.{c}:\n        {d}.append({a})",
    "    {a}[{n}] = {b} + {n}",
    "    # {a} {b} {c} {d} {e}",
    "    return {a}({b}, {c}={n})",
)
GIT_ENV = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}


def git(*args: str, cwd: Path | None = None, data: bytes | None = None) -> str:
    """Run git with no user or system config; raise on failure."""
    proc = subprocess.run(["git", *args], cwd=cwd, input=data, capture_output=True,
                          env=GIT_ENV, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


def _line_pool(rng: random.Random, size: int = 4000) -> list[bytes]:
    lines = []
    for i in range(size):
        if i % 12 == 0:
            lines.append(f"\n\ndef {rng.choice(WORDS)}_{i}({rng.choice(WORDS)}):".encode())
            continue
        words = {k: rng.choice(WORDS) for k in "abcde"}
        lines.append(rng.choice(STATEMENTS).format(n=rng.randrange(1000), **words).encode())
    return lines


def _files(seed: int, files: int, total_bytes: int) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    pool = _line_pool(rng)
    weights = [rng.lognormvariate(0, 1) for _ in range(files)]
    scale = total_bytes / sum(weights)
    out = []
    for i, weight in enumerate(weights):
        target = max(64, int(weight * scale))
        chunks, size = [], 0
        while size < target:
            line = rng.choice(pool) + b"\n"
            chunks.append(line)
            size += len(line)
        path = f"src/pkg{i // 400:02d}/sub{(i // 20) % 20:02d}/mod{i:04d}.py"
        out.append((path, b"".join(chunks)[:target]))
    return out


def _fast_import_stream(entries: list[tuple[str, bytes]]) -> bytes:
    parts = []
    for mark, (_, content) in enumerate(entries, start=1):
        parts.append(b"blob\nmark :%d\ndata %d\n%s\n" % (mark, len(content), content))
    who = b"Bench <bench@agentrt.invalid> 1700000000 +0000"
    message = b"benchmark repository"
    parts.append(b"commit refs/heads/main\nauthor %s\ncommitter %s\ndata %d\n%s\n"
                 % (who, who, len(message), message))
    parts += [b"M 100644 :%d %s\n" % (mark, path.encode())
              for mark, (path, _) in enumerate(entries, start=1)]
    return b"".join(parts) + b"\n"


def template(seed: int = 1, files: int = 2000, megabytes: int = 25) -> Path:
    """The cached bare template repository (generated on first use)."""
    path = CACHE / f"repo-s{seed}-f{files}-m{megabytes}.git"
    if (path / "refs" / "heads" / "main").exists() or (path / "packed-refs").exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=path.name + ".", dir=CACHE))
    try:
        git("init", "-q", "--bare", "-b", "main", str(building))
        entries = _files(seed, files, megabytes * 1024 * 1024)
        git("fast-import", "--quiet", cwd=building, data=_fast_import_stream(entries))
        git("repack", "-adq", cwd=building)
        os.replace(building, path)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return path


def clone(dest: Path, seed: int = 1, files: int = 2000, megabytes: int = 25,
          source: Path | None = None) -> Path:
    """A fresh working clone at ``dest``, on ``main``: of the synthetic template (objects
    hard-linked), or of a real repository ``source`` (``--repo``: e.g. python/mypy, whose
    history and pack sizes a synthetic repository does not have; its HEAD becomes ``main``)."""
    if source is not None:
        git("clone", "-q", "--no-local", str(source.resolve()), str(dest))
        git("switch", "-q", "-C", "main", cwd=dest)
        git("config", "user.name", "bench", cwd=dest)
        git("config", "user.email", "bench@agentrt.invalid", cwd=dest)
        return dest
    git("clone", "-q", "--local", str(template(seed, files, megabytes)), str(dest))
    git("config", "user.name", "bench", cwd=dest)
    git("config", "user.email", "bench@agentrt.invalid", cwd=dest)
    return dest


if __name__ == "__main__":
    repo = template()
    head = git("rev-parse", "main", cwd=repo).strip()
    count = len(git("ls-tree", "-r", "--name-only", "main", cwd=repo).splitlines())
    print(f"{repo}: {count} files at {head}")
