"""The saved log keeps a flood's beginning and end, redacts secrets, and can be followed."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from runtime.state.log_keeper import LogKeeper, StreamRedactor, follow_log, meta_path

SECRET = "sk-live-0123456789"


def lines(start: int, count: int) -> bytes:
    return b"".join(b"line %06d\n" % i for i in range(start, start + count))


def test_a_flood_keeps_its_head_and_tail_and_says_how_much_was_dropped(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    keeper = LogKeeper(path, [], head_bytes=1000, tail_bytes=2000, slack_bytes=3000)
    stream = lines(0, 10_000)  # 120,000 bytes
    for i in range(0, len(stream), 777):
        keeper.write(stream[i:i + 777])
    keeper.close()
    saved = path.read_bytes()
    found = re.search(rb"\n\[agentrt: (\d+) bytes of output dropped here\]\n", saved)
    assert found is not None
    head, tail = saved[:found.start()], saved[found.end():]
    assert head == stream[:1000] and tail == stream[-2000:]
    assert int(found.group(1)) == len(stream) - 3000 == keeper.dropped
    assert saved.startswith(b"line 000000\n") and saved.endswith(b"line 009999\n")


def test_output_that_fits_is_saved_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    keeper = LogKeeper(path, [], head_bytes=1000, tail_bytes=2000, slack_bytes=3000)
    keeper.write(lines(0, 200))  # 2,400 bytes: head + less than the tail
    keeper.close()
    assert path.read_bytes() == lines(0, 200)
    assert not meta_path(path).exists()


def test_secrets_are_redacted_even_across_chunk_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    keeper = LogKeeper(path, [SECRET])
    data = f"key={SECRET}\n".encode() * 50
    for i in range(0, len(data), 7):  # every split point of the value happens somewhere
        keeper.write(data[i:i + 7])
    keeper.close()
    saved = path.read_bytes()
    assert SECRET.encode() not in saved
    assert saved == b"key=[REDACTED]\n" * 50


def test_redactor_releases_everything_but_a_possible_prefix() -> None:
    redactor = StreamRedactor([SECRET])
    out = redactor.feed(b"hello " + SECRET[:5].encode())
    assert out == b"hello "[: len(out)] and len(out) <= 6
    out += redactor.feed(SECRET[5:].encode() + b" bye") + redactor.flush()
    assert out == b"hello [REDACTED] bye"


def test_a_follower_reads_the_whole_stream_across_rewrites(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    keeper = LogKeeper(path, [], head_bytes=500, tail_bytes=1000, slack_bytes=1000)
    stream = lines(0, 3000)
    done = threading.Event()
    got: list[bytes] = []

    def reader() -> None:
        got.extend(follow_log(path, done.is_set, poll=0.01))

    thread = threading.Thread(target=reader)
    thread.start()
    for i in range(0, len(stream), 600):
        keeper.write(stream[i:i + 600])
        if i % 6000 == 0:
            threading.Event().wait(0.05)  # let the reader catch up now and then
    keeper.close()
    done.set()
    thread.join(timeout=10)
    seen = b"".join(got)
    # Whatever the reader missed while the keeper dropped it is stood in for by a marker;
    # the beginning and end are there, and nothing appears twice out of order.
    assert seen.startswith(stream[:500]) and seen.endswith(stream[-1000:])
    numbers = [int(n) for n in re.findall(rb"line (\d{6})\n", seen)]
    assert numbers == sorted(numbers) and len(numbers) == len(set(numbers))


def test_a_slow_follower_skips_to_the_marker_not_to_garbage(tmp_path: Path) -> None:
    path = tmp_path / "s.log"
    keeper = LogKeeper(path, [], head_bytes=500, tail_bytes=1000, slack_bytes=1000)
    stream = lines(0, 3000)
    keeper.write(stream[:700])
    reader = follow_log(path, lambda: True, poll=0.01)
    assert next(reader) == stream[:700]  # the reader is at stream offset 700 ...
    for i in range(700, len(stream), 600):  # ... and the keeper rewrites the file many times
        keeper.write(stream[i:i + 600])
    keeper.close()
    rest = b"".join(reader)
    # The reader finishes the file it had open, then continues in the newest one: at the
    # marker, since the part of the stream it had reached is no longer kept.
    before, found, after = rest.partition(b"\n[agentrt: ")
    assert found and before == stream[700:700 + len(before)]
    assert after.endswith(stream[-1000:]) and b"bytes of output dropped here]" in after
