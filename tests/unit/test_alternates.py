"""The session repository's alternates line: literal where git reads it literally, C-quoted
where it would not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runtime.git.workspace import alternates_line


@pytest.mark.parametrize("path", ["/agentrt/objects", "/root/my repo/.git/agentrt/objects",
                                  "/home/zoë/プロジェクト/objects", '/a "b" \\c/objects'])
def test_ordinary_paths_are_written_as_they_are(path: str) -> None:
    assert alternates_line(path) == path


def test_a_path_git_would_misread_is_quoted_and_git_reads_it_back(tmp_path: Path) -> None:
    store = tmp_path / 'two\nlines "and" \\ quotes' / "objects"
    line = alternates_line(str(store))
    assert line.startswith('"') and line.endswith('"')
    # git itself resolves the quoted line to the store: a blob only the store has is found.
    subprocess.run(["git", "init", "-q", "--bare", str(store.parent)], check=True)
    blob = subprocess.run(["git", f"--git-dir={store.parent}", "hash-object", "-w", "--stdin"],
                          input="only in the store\n", capture_output=True, text=True,
                          check=True).stdout.strip()
    borrower = tmp_path / "borrower.git"
    subprocess.run(["git", "init", "-q", "--bare", str(borrower)], check=True)
    alternates = borrower / "objects" / "info" / "alternates"
    # The control: the path written as it is, git reads two lines and finds nothing.
    alternates.write_text(str(store) + "\n")
    assert show(borrower, blob).returncode != 0
    alternates.write_text(line + "\n")
    shown = show(borrower, blob)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "only in the store\n"


def show(git_dir: Path, blob: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", f"--git-dir={git_dir}", "cat-file", "-p", blob],
                          capture_output=True, text=True)
