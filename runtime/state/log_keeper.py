"""A session's saved log: written by the process that owns the run, read by every viewer.

The owner streams the container's output through a :class:`LogKeeper` as it arrives:

* secret values are redacted *here*, with the owner's environment, so what a viewer sees
  (``agentrt logs -f`` in another terminal, the HTML report) never depends on the viewer's own
  environment;
* the first ``head_bytes`` and the last ``tail_bytes`` are kept, with one marker line between
  them saying how many bytes were dropped, so a flood can neither fill the host disk nor push
  the agent's first lines out (the engine's json-file log keeps only its last 20 MB).

While the session runs the file grows past the head; once the part after the head exceeds
``tail_bytes + slack_bytes`` the keeper writes head + marker + the last ``tail_bytes`` to a new
file and renames it over the old one (a reader never sees half a file). Before each rename it
records in ``<log>.meta`` the new file's inode, the head's length, the marker's length and the
bytes dropped so far; :func:`follow_log` uses that to continue a reader at the same place in the
stream. Only the keeper writes these files: the agent chooses the bytes, never the layout.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

HEAD_BYTES = 4 * 1024 * 1024
TAIL_BYTES = 4 * 1024 * 1024
SLACK_BYTES = 8 * 1024 * 1024
REDACTED = b"[REDACTED]"
MIN_SECRET_LEN = 4
POLL_S = 0.2
READ_CHUNK = 1024 * 1024


def redact(data: bytes, secrets: list[str]) -> bytes:
    """Replace every secret value (4 characters or more) in ``data`` with ``[REDACTED]``."""
    for value in sorted(secrets, key=len, reverse=True):
        if len(value) >= MIN_SECRET_LEN:
            data = data.replace(value.encode(), REDACTED)
    return data


class StreamRedactor:
    """Redacts a byte stream fed in chunks, also where a value spans two chunks.

    Holds back at most the longest secret's length minus one byte until more arrives.
    """

    def __init__(self, secrets: list[str]) -> None:
        self.values = [v for v in secrets if len(v) >= MIN_SECRET_LEN]
        self.keep = max((len(v.encode()) for v in self.values), default=1) - 1
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        """The redacted bytes that can be released once ``chunk`` is added."""
        if not self.values:
            return chunk
        self.pending = redact(self.pending + chunk, self.values)
        cut = max(len(self.pending) - self.keep, 0)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out

    def flush(self) -> bytes:
        """Whatever is still held back (the stream ended)."""
        out, self.pending = redact(self.pending, self.values), b""
        return out


def marker(dropped: int) -> bytes:
    """The line that stands for the dropped middle of a log."""
    return f"\n[agentrt: {dropped} bytes of output dropped here]\n".encode()


def meta_path(path: Path) -> Path:
    """Where the keeper describes the current file's layout for readers."""
    return path.with_name(path.name + ".meta")


def _create(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, "w+b", buffering=0)


class LogKeeper:
    """Writes one session's redacted output to ``path``, keeping its head and its tail.

    Thread-safe: one thread writes, others may call :meth:`recent`. Raises OSError only from
    the constructor; a later write error (disk full) is remembered in ``error`` and the rest of
    the output is counted as dropped.
    """

    def __init__(self, path: Path, secrets: list[str], *, head_bytes: int = HEAD_BYTES,
                 tail_bytes: int = TAIL_BYTES, slack_bytes: int = SLACK_BYTES) -> None:
        self.path = path
        self.head_bytes, self.tail_bytes, self.slack_bytes = head_bytes, tail_bytes, slack_bytes
        self.total = 0  # bytes of (redacted) output received
        self.dropped = 0  # bytes between head and tail no longer in the file
        self.error: str | None = None
        self._redactor = StreamRedactor(secrets)
        self._head = 0  # length of the head in the file
        self._marker = 0  # length of the marker after it (0 until the first compaction)
        self._size = 0  # file size
        self._lock = threading.Lock()
        self._closed = False
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = _create(path)

    def write(self, chunk: bytes) -> None:
        """Add raw output; secret values are redacted before anything reaches the file."""
        with self._lock:
            if not self._closed:
                self._add(self._redactor.feed(chunk))

    def note(self, text: str) -> None:
        """Add a line of agentrt's own (e.g. that the log stream broke)."""
        with self._lock:
            if not self._closed:
                self._add(self._redactor.flush() + f"\n[agentrt: {text}]\n".encode())

    def close(self) -> None:
        """Flush, leave the final head + marker + tail in place, close; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._add(self._redactor.flush())
            if self._size - self._head - self._marker > self.tail_bytes:
                self._compact()
            self._file.close()
            self._closed = True

    def recent(self, size: int = 4096) -> bytes:
        """The last ``size`` bytes of the saved (redacted) output."""
        with self._lock:
            if self._closed:
                with contextlib.suppress(OSError), self.path.open("rb") as f:
                    f.seek(max(0, os.fstat(f.fileno()).st_size - size))
                    return f.read(size)
                return b""
            start = max(0, self._size - size)
            return os.pread(self._file.fileno(), self._size - start, start)

    def _add(self, data: bytes) -> None:
        if not data:
            return
        self.total += len(data)
        if self.error is not None:
            self.dropped += len(data)
            return
        self._head += min(len(data), max(0, self.head_bytes - self._head))
        try:
            self._file.write(data)
            self._size += len(data)
            if self._size - self._head - self._marker > self.tail_bytes + self.slack_bytes:
                self._compact()
        except OSError as exc:
            self.error = str(exc)
            self.dropped += len(data)

    def _compact(self) -> None:
        fd = self._file.fileno()
        keep = min(self.tail_bytes, self._size - self._head - self._marker)
        head = os.pread(fd, self._head, 0)
        tail = os.pread(fd, keep, self._size - keep)
        dropped = self.total - self._head - keep
        mark = marker(dropped)
        tmp = self.path.with_name(self.path.name + ".tmp")
        new = _create(tmp)
        try:
            new.write(head + mark + tail)
            layout = {"inode": os.fstat(new.fileno()).st_ino, "head": self._head,
                      "marker": len(mark), "dropped": dropped}
            meta_tmp = meta_path(tmp)
            meta_tmp.write_text(json.dumps(layout))
            # The layout is in place before the file it describes: a reader that finds the
            # old file with the new layout waits for the rename (inodes differ).
            os.replace(meta_tmp, meta_path(self.path))
            os.replace(tmp, self.path)
        except OSError:
            new.close()
            raise
        self._file.close()
        self._file = new
        self._marker, self.dropped = len(mark), dropped
        self._size = self._head + len(mark) + keep


@dataclass
class _Layout:
    """How one version of a saved log maps onto the agent's output stream."""

    head: int = 0
    marker: int = 0
    dropped: int = 0

    def stream_offset(self, file_offset: int) -> int:
        if not self.marker or file_offset <= self.head:
            return file_offset
        return max(file_offset - self.marker, self.head) + self.dropped

    def file_offset(self, stream_offset: int) -> int:
        if not self.marker or stream_offset <= self.head:
            return stream_offset
        if stream_offset < self.head + self.dropped:
            return self.head  # that part is gone: the marker says so
        return stream_offset - self.dropped + self.marker


def _open_current(path: Path) -> tuple[BinaryIO, _Layout] | None:
    """The log file and its layout, or None if missing or being replaced right now."""
    try:
        f = path.open("rb")
    except OSError:
        return None
    try:
        meta = json.loads(meta_path(path).read_text())
    except FileNotFoundError:
        return f, _Layout()
    except (OSError, ValueError):
        meta = {}
    if not isinstance(meta, dict) or meta.get("inode") != os.fstat(f.fileno()).st_ino:
        f.close()
        return None
    return f, _Layout(int(meta["head"]), int(meta["marker"]), int(meta["dropped"]))


def _replaced(path: Path, f: BinaryIO) -> bool:
    with contextlib.suppress(OSError):
        return os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
    return False


def follow_log(path: Path, done: Callable[[], bool], poll: float = POLL_S) -> Iterator[bytes]:
    """The saved log from its start, then what is added, until ``done()`` and all is read.

    Follows the keeper's rewrites: after one, reading goes on where the stream left off (or at
    the marker, if that part was dropped meanwhile).
    """
    stream = 0
    current: tuple[BinaryIO, _Layout] | None = None
    finished = False
    try:
        while True:
            if current is None:
                current = _open_current(path)
                if current is None:
                    if finished:
                        return
                    finished = done()
                    time.sleep(poll / 4 if finished else poll)
                    continue
                current[0].seek(current[1].file_offset(stream))
            f, layout = current
            data = f.read(READ_CHUNK)
            if data:
                stream = layout.stream_offset(f.tell())
                yield data
                continue
            if _replaced(path, f):
                f.close()
                current = None
                continue
            if finished:
                return
            finished = done()
            if not finished:
                time.sleep(poll)
    finally:
        if current is not None:
            current[0].close()
