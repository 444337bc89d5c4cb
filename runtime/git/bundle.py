"""Verify a session's bundle and bring it onto its branch: fsck, size and secret policies.

A bundle is one regular file made by the harvest container (:mod:`runtime.git.harvest`). Before a
single object reaches the user's repository, the host

1. reads its header (exactly one ref, one agentrt asked for; prerequisites that are all
   ancestors of the session's base) and runs ``git bundle verify``;
2. indexes its pack into a *quarantine* object directory (``index-pack --fix-thin``, bounded
   by ``max_import_mb``);
3. refuses any object holding a secret's value (raw, hex or base64), naming the secret, never
   its value, *before* anything quotes an object's content, and any blob over ``max_file_mb``;
4. runs ``index-pack --strict`` on the quarantined pack: the same fsck ``transfer.fsckObjects``
   runs on a fetch (``.GIT`` trees, ``..`` paths, ``.gitmodules`` with ``update = !cmd``,
   broken objects), plus a connectivity check against the user's store;
5. checks that the tip is a commit descending from the session's base (never another line
   of history, such as another branch's commit);
6. only then moves the pack into ``.git/objects/pack``; the caller moves the branch (compare
   and swap from its current head).

Git 2.39 (Debian 12) does not fsck objects fetched from a bundle, hence the explicit
``index-pack``: the result is the same on every git version.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import resource
import secrets as pysecrets
import shutil
import signal
import subprocess
import threading
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtime import paths
from runtime.errors import BundleRefusedError, GitError
from runtime.git.safe_git import MainRepo, git_argv, git_env

SIGNATURE = b"# v2 git bundle\n"
MAX_HEADER = 64 * 1024
_OID = re.compile(rb"^[0-9a-f]{40}$")
# index-pack failures that say the host cannot write, not that the objects are bad.
_ENVIRONMENT = re.compile(r"No space left|Out of diskspace|Disk quota|Read-only file system|"
                          r"unable to (create|write)|write error|cannot (create|write)|"
                          r"Too many open files|Cannot allocate memory", re.IGNORECASE)


class SecretInBundleError(BundleRefusedError):
    """A bundle held a secret's value: refused, and not kept on disk either."""


@dataclass(frozen=True)
class ImportPolicy:
    """What a bundle may bring: total size, size of one file, and secrets it must not hold."""

    max_import_bytes: int = 1024 * 1024 * 1024
    max_file_bytes: int = 100 * 1024 * 1024
    secrets: Mapping[str, str] = field(default_factory=dict)
    #: What a checkout of the tip may write (every path counted); 0: no limit.
    max_checkout_bytes: int = 0


@dataclass(frozen=True)
class BundleHeader:
    """The parsed header of a v2 bundle."""

    prerequisites: list[str]
    refs: dict[str, str]
    pack_offset: int


def read_header(path: Path) -> BundleHeader:
    """Parse the header of the bundle at ``path``; BundleRefusedError if it is not one."""
    with open(path, "rb") as handle:
        head = handle.read(MAX_HEADER)
    if not head.startswith(SIGNATURE):
        raise BundleRefusedError(f"{path.name} is not a v2 git bundle")
    end = head.find(b"\n\n", len(SIGNATURE) - 1)
    if end < 0:
        raise BundleRefusedError(f"{path.name}: bundle header too long or truncated")
    prerequisites: list[str] = []
    refs: dict[str, str] = {}
    for line in head[len(SIGNATURE):end].split(b"\n"):
        if not line:
            continue
        if line.startswith(b"-"):
            oid = line[1:].split(b" ", 1)[0]
            if not _OID.match(oid):
                raise BundleRefusedError(f"{path.name}: bad prerequisite line")
            prerequisites.append(oid.decode())
            continue
        parts = line.split(b" ", 1)
        if len(parts) != 2 or not _OID.match(parts[0]):
            raise BundleRefusedError(f"{path.name}: bad ref line")
        refs[parts[1].decode(errors="replace")] = parts[0].decode()
    return BundleHeader(prerequisites, refs, end + 2)


def secret_needles(value: str) -> list[bytes]:
    """The byte strings that reveal ``value``: itself, its hex (both cases) and its base64
    forms at every alignment.

    A secret base64-encoded inside a longer text appears as one of three stable substrings
    (its encoding at byte offsets 0, 1 and 2, with the partial characters at both ends cut).
    """
    raw = value.encode()
    needles = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw)
        start = (offset * 4 + 2) // 3 if offset else 0
        usable = (len(raw) + offset) // 3 * 4
        core = encoded[start:usable]
        if len(core) >= 8:
            needles.append(core)
    return needles


def redact_secrets(text: str, secrets: Mapping[str, str]) -> str:
    """``text`` with every form of every secret value (:func:`secret_needles`) replaced by
    ``[REDACTED:<name>]``. Pure; the one pass every work message goes through."""
    for name, value in secrets.items():
        if len(value) < 4:
            continue
        for needle in sorted(secret_needles(value), key=len, reverse=True):
            text = text.replace(needle.decode(errors="replace"), f"[REDACTED:{name}]")
    return text


#: The budget of every host git step on imported objects: CPU seconds (``RLIMIT_CPU``: a
#: delta bomb makes ``index-pack`` inflate far more than the bundle's size) and wall time.
IMPORT_CPU_SECONDS = 300
IMPORT_WALL_SECONDS = 900


def _budget(pid: int) -> None:
    """Give the git process ``pid`` its CPU budget (SIGXCPU, then SIGKILL a second later).

    Set from outside once it runs (``prlimit``), not by a ``preexec_fn``: that would make
    every spawn a full fork of this process."""
    with contextlib.suppress(AttributeError, OSError, ProcessLookupError):
        resource.prlimit(pid, resource.RLIMIT_CPU, (IMPORT_CPU_SECONDS, IMPORT_CPU_SECONDS + 1))


def _git(
    repo: MainRepo, *args: str, env: Mapping[str, str] | None = None, stdin: int | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    cmd = git_argv(args, git_dir=repo.git_dir)
    try:
        with subprocess.Popen(cmd, env=git_env(env), cwd=repo.git_dir,
                              stdin=subprocess.PIPE if input is not None else stdin,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            _budget(proc.pid)
            try:
                out, err = proc.communicate(input, timeout=IMPORT_WALL_SECONDS)
            except subprocess.TimeoutExpired as exc:
                proc.kill()
                proc.communicate()
                raise BundleRefusedError(
                    f"git {args[0]} on the imported objects took longer than its budget "
                    f"({IMPORT_WALL_SECONDS} s): refused") from exc
    except OSError as exc:
        raise GitError(f"git {args[0]} could not run: {exc}") from exc
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _quarantine_env(repo: MainRepo, quarantine: Path) -> dict[str, str]:
    return {"GIT_OBJECT_DIRECTORY": str(quarantine),
            "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(repo.objects_dir)}


def import_bundle(repo: MainRepo, bundle: Path, *, branch: str, base_commit: str,
                  policy: ImportPolicy, refs: Collection[str] | None = None) -> str:
    """Verify ``bundle`` and move ``branch`` to its one ref; return the new head.

    ``refs``: the ref names agentrt asked the harvest for (the bundle's one ref must be one of
    them). The tip must be a commit descending from ``base_commit``: a bundle naming any other
    commit (another branch's, say) is refused before its pack leaves the quarantine.
    Raises :class:`BundleRefusedError` (nothing moved, nothing added to the repository) when
    any check fails; the message names the check (fsck's own words, sizes, secret names).
    """
    size = bundle.stat().st_size
    if size > policy.max_import_bytes:
        raise BundleRefusedError(f"{bundle.name} is {_mib(size)} MiB, over "
                                 f"max_import_mb={_mib(policy.max_import_bytes)}")
    header = read_header(bundle)
    if len(header.refs) != 1:
        raise BundleRefusedError(f"{bundle.name} must carry exactly one ref")
    ref, tip = next(iter(header.refs.items()))
    if refs is not None and ref not in refs:
        raise BundleRefusedError(f"{bundle.name} carries a ref agentrt did not ask for")
    for prerequisite in header.prerequisites:
        ancestor = _git(repo, "merge-base", "--is-ancestor", prerequisite, base_commit)
        if ancestor.returncode != 0:
            raise BundleRefusedError(
                f"{bundle.name} needs {prerequisite[:10]}, which is not in the session's base")
    verify = _git(repo, "bundle", "verify", "-q", str(bundle))
    if verify.returncode != 0:
        raise BundleRefusedError(f"{bundle.name}: git bundle verify failed: "
                                 f"{_words(verify.stderr)}")
    quarantine = paths.quarantine_root(repo.state_dir) / pysecrets.token_hex(6)
    (quarantine / "pack").mkdir(parents=True)
    try:
        packs = _index_pack(repo, bundle, header, quarantine, policy)
        # Secrets first: fsck quotes what it refuses (a .gitmodules `update = !<secret>`).
        _check_objects(repo, quarantine, packs, policy)
        _fsck_packs(repo, bundle.name, quarantine, packs)
        _check_descends(repo, quarantine, bundle.name, tip, base_commit)
        _check_checkout_size(repo, quarantine, bundle.name, base_commit, tip, policy)
        _adopt_packs(repo, packs)
    finally:
        shutil.rmtree(quarantine, ignore_errors=True)
    return tip


def _check_descends(repo: MainRepo, quarantine: Path, name: str, tip: str, base: str) -> None:
    """The bundle's tip is a commit that descends from the session's base, else refused."""
    env = _quarantine_env(repo, quarantine)
    ancestor = _git(repo, "merge-base", "--is-ancestor", base, tip, env=env)
    if ancestor.returncode != 0:
        kind = _git(repo, "cat-file", "-t", tip, env=env)
        if kind.stdout.strip() != b"commit":
            raise BundleRefusedError(f"{name}: its ref is not a commit")
        raise BundleRefusedError(
            f"{name}: its tip {tip[:10]} does not descend from the session's base "
            f"{base[:10]} (another line of history): refused, never merged")


def written_blobs(diff_tree: bytes) -> list[str]:
    """The blob of every path a checkout from base to tip writes, from ``diff-tree -r -z``
    (added, modified or retyped files; one entry per path: the same blob at a thousand paths
    is written a thousand times). Gitlinks and deletions write nothing. Pure."""
    fields = diff_tree.split(b"\0")
    blobs: list[str] = []
    for i in range(0, len(fields) - 1, 2):
        meta = fields[i].split()
        if len(meta) != 5 or meta[4][:1] not in (b"A", b"M", b"T"):
            continue
        if meta[1] in (b"160000", b"000000"):
            continue
        blobs.append(meta[3].decode())
    return blobs


def _check_checkout_size(repo: MainRepo, quarantine: Path, name: str, base: str, tip: str,
                         policy: ImportPolicy) -> None:
    """Refuse a tip whose checkout over its base would write more than
    ``policy.max_checkout_bytes`` (a hardlink bomb: one blob at many paths), before any merge
    can write it out."""
    if not policy.max_checkout_bytes:
        return
    env = _quarantine_env(repo, quarantine)
    diff = _git(repo, "diff-tree", "-r", "-z", "--no-renames", "--no-commit-id", base, tip,
                env=env)
    if diff.returncode != 0:
        raise BundleRefusedError(f"{name}: cannot compare it with its base: "
                                 f"{_words(diff.stderr)}")
    blobs = written_blobs(diff.stdout)
    if not blobs:
        return
    sizes = _git(repo, "cat-file", "--batch-check=%(objectsize)", env=env,
                 input="".join(f"{oid}\n" for oid in blobs).encode())
    size = sum(int(line) for line in sizes.stdout.split() if line.isdigit())
    if size > policy.max_checkout_bytes:
        raise BundleRefusedError(
            f"{name}: its files would take {_mib(size)} MiB once checked out, over the "
            f"{_mib(policy.max_checkout_bytes)} MiB a session's volume allows (twice its "
            "disk_mb; the same content at many paths?): refused before anything is written")


def _mib(size: int) -> int:
    return -(-size // (1024 * 1024))


def _words(stderr: bytes) -> str:
    return " ".join(stderr.decode(errors="replace").split())[:600] or "no message"


def _index_pack(repo: MainRepo, bundle: Path, header: BundleHeader, quarantine: Path,
                policy: ImportPolicy) -> list[Path]:
    """index-pack the bundle's pack into the quarantine (completing it against the user's
    store); return the .idx files. Not yet fsck'd: see :func:`_fsck_packs`."""
    with open(bundle, "rb") as handle:
        handle.seek(header.pack_offset)
        proc = _git(repo, "index-pack", "--stdin", "--fix-thin",
                    f"--max-input-size={policy.max_import_bytes}",
                    env=_quarantine_env(repo, quarantine), stdin=handle.fileno())
    _refuse_on_failure(proc, bundle.name, "index")
    return sorted((quarantine / "pack").glob("pack-*.idx"))


def _fsck_packs(repo: MainRepo, name: str, quarantine: Path, idx_files: list[Path]) -> None:
    """``index-pack --strict`` of the quarantined packs: the fsck a fetch with
    ``transfer.fsckObjects`` runs (``.GIT`` trees, ``..`` paths, bad ``.gitmodules``, broken
    links), on every git version."""
    for idx in idx_files:
        check = idx.with_name("fsck.idx")
        proc = _git(repo, "index-pack", "--strict", "-o", str(check), str(idx.with_suffix(".pack")),
                    env=_quarantine_env(repo, quarantine))
        check.unlink(missing_ok=True)
        _refuse_on_failure(proc, name, "fsck")


def _refuse_on_failure(proc: subprocess.CompletedProcess[bytes], name: str, step: str) -> None:
    if proc.returncode == 0:
        return
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        raise BundleRefusedError(f"{step} of {name} ran out of its CPU budget "
                                 f"({IMPORT_CPU_SECONDS} s): refused")
    words = _words(proc.stderr)
    if _ENVIRONMENT.search(words):
        # The host, not the work: keep everything and try again later.
        raise GitError(f"cannot {step} {name} on this host: {words}")
    raise BundleRefusedError(f"fsck refused {name}: {words}")


def _pack_objects(repo: MainRepo, idx: Path) -> list[str]:
    with open(idx, "rb") as handle:
        proc = _git(repo, "show-index", stdin=handle.fileno())
    if proc.returncode != 0:
        raise BundleRefusedError(f"cannot list the objects of {idx.name}")
    return [line.split()[1].decode() for line in proc.stdout.splitlines() if line.strip()]


def _check_objects(repo: MainRepo, quarantine: Path, packs: list[Path],
                   policy: ImportPolicy) -> None:
    """Refuse blobs over the per-file limit and any object holding a secret."""
    oids = [oid for idx in packs for oid in _pack_objects(repo, idx)]
    env = _quarantine_env(repo, quarantine)
    check = _git(repo, "cat-file", "--batch-check=%(objectname) %(objecttype) %(objectsize)",
                 env=env, input="".join(f"{o}\n" for o in oids).encode())
    total = 0
    for line in check.stdout.splitlines():
        fields = line.split()
        if len(fields) != 3:
            continue
        size = int(fields[2])
        total += size
        if fields[1] == b"blob" and size > policy.max_file_bytes:
            raise BundleRefusedError(
                f"a file of {_mib(size)} MiB (blob {fields[0][:10].decode()}) is over "
                f"max_file_mb={_mib(policy.max_file_bytes)}")
        if total > policy.max_import_bytes:
            raise BundleRefusedError(
                f"the work's new objects expand to more than max_import_mb="
                f"{_mib(policy.max_import_bytes)} (a small bundle of highly compressible or "
                "delta-packed objects): refused")
    needles = {name: secret_needles(value) for name, value in policy.secrets.items()
               if len(value) >= 4}
    if not needles or not oids:
        return
    for data in _object_contents(repo, env, oids):
        for name, forms in needles.items():
            if any(form in data for form in forms):
                raise SecretInBundleError(
                    f"the work holds the value of secret {name}: refused so that it never "
                    "reaches the repository (the bundle was deleted, not kept)")


def _object_contents(repo: MainRepo, env: Mapping[str, str], oids: list[str]) -> Iterator[bytes]:
    cmd = git_argv(["cat-file", "--batch"], git_dir=repo.git_dir)
    with subprocess.Popen(cmd, env=git_env(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, cwd=repo.git_dir) as proc:
        _budget(proc.pid)
        stdin, stdout = proc.stdin, proc.stdout
        assert stdin is not None and stdout is not None

        def feed() -> None:
            # From a thread: git answers while it reads, so writing every id before reading
            # would fill both pipes and wait forever on a large bundle.
            with contextlib.suppress(BrokenPipeError):
                stdin.write("".join(f"{o}\n" for o in oids).encode())
                stdin.close()

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        for _ in oids:
            line = stdout.readline()
            fields = line.split()
            if len(fields) != 3:
                continue
            data = stdout.read(int(fields[2]))
            stdout.read(1)
            yield data
        writer.join()


def _adopt_packs(repo: MainRepo, idx_files: list[Path]) -> None:
    """Move verified packs into the repository (the .pack first, its .idx last)."""
    target = repo.objects_dir / "pack"
    target.mkdir(parents=True, exist_ok=True)
    for idx in idx_files:
        pack = idx.with_suffix(".pack")
        for source in (pack, idx):
            destination = target / source.name
            if destination.exists():
                continue
            try:
                os.rename(source, destination)
            except OSError:
                shutil.copy2(source, destination)
            with contextlib.suppress(OSError):
                destination.chmod(0o444)
