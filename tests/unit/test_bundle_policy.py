"""The bundle import policy's pure parts (no Docker): how secrets are recognised."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from runtime.git.bundle import secret_needles
from tests.conftest import make_repo


def test_base64_forms_of_a_secret_are_found_at_every_alignment() -> None:
    value = "hunter2-very-secret"
    for prefix in ("", "a", "ab", "abc", "abcd"):
        encoded = base64.b64encode((prefix + value + "tail").encode())
        assert any(n in encoded for n in secret_needles(value)[1:]), prefix


@pytest.mark.timeout(60)
def test_reading_thousands_of_objects_for_the_secret_scan_never_waits_on_its_own_pipes(
    tmp_path: Path,
) -> None:
    # Thousands of ids in and their contents out overflow both pipes' buffers: the ids must be
    # fed while the answers are read, or the scan waits forever.
    from runtime.git.bundle import _object_contents
    from runtime.git.safe_git import MainRepo

    repo_path = make_repo(tmp_path / "repo")
    (tmp_path / "blobs").mkdir()
    paths = []
    for i in range(5000):
        path = tmp_path / "blobs" / f"{i}.txt"
        path.write_text(f"blob {i} " + "x" * 200 + "\n")
        paths.append(str(path))
    ids = subprocess.run(["git", "-C", str(repo_path), "hash-object", "-w", "--stdin-paths"],
                         input="\n".join(paths) + "\n", capture_output=True, text=True,
                         check=True).stdout.split()
    contents = list(_object_contents(MainRepo(repo_path), {}, ids))
    assert len(contents) == 5000 and contents[4999].startswith(b"blob 4999 ")
