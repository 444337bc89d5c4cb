"""Runs the code blocks of the docs that are marked for it, so an example cannot rot unseen.

A fenced block whose info string is ``<language> test`` is checked (the convention is stated at
the top of docs/task-file.md):

* ``toml test``: a complete task file; it must load with agentrt's own loader
  (:func:`runtime.config.load_task_file`, the one ``agentrt run`` uses).
* ``sh test``: shell commands that need no Docker engine; run with ``bash -euo pipefail`` in an
  empty directory, with ``agentrt`` on PATH running this checkout's ``runtime`` package, and
  they must exit 0.

Any other language marked ``test`` is an error, so a typo cannot make a block silently skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from runtime.config import load_task_file
from runtime.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
MARK = "test"
RUNNERS = ("toml", "sh")
SH_TIMEOUT_S = 60

# An opening fence: three or more backticks, then the info string (CommonMark allows up to three
# spaces of indentation).
_FENCE = re.compile(r"^ {0,3}(`{3,})(.*)$")


class DocSnippetError(AssertionError):
    """A marked block failed as written; the message names the file and line."""


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    source: str  # path relative to the repository root, for messages
    line: int  # 1-based line of the opening fence
    info: str  # the info string, e.g. "toml test"
    text: str

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def marked(self) -> bool:
        words = self.info.split()
        return len(words) >= 2 and words[-1] == MARK

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


def extract_blocks(text: str, source: str) -> list[Block]:
    """Every fenced (backtick) code block of ``text``, marked or not, in order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None or "`" in match.group(2):
            i += 1
            continue
        fence, info, start = match.group(1), match.group(2).strip(), i
        body: list[str] = []
        i += 1
        # The block ends at a line of at least as many backticks and nothing else.
        while i < len(lines) and not re.fullmatch(rf" {{0,3}}`{{{len(fence)},}}\s*", lines[i]):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise DocSnippetError(f"{source}:{start + 1}: code fence is never closed")
        blocks.append(Block(source, start + 1, info, "\n".join(body) + "\n"))
        i += 1
    return blocks


def doc_files(root: Path = ROOT) -> list[Path]:
    """The Markdown files users read: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def marked_blocks(root: Path = ROOT) -> list[Block]:
    """Every block marked for testing in the docs under ``root``."""
    found: list[Block] = []
    for path in doc_files(root):
        rel = path.relative_to(root).as_posix()
        found += [b for b in extract_blocks(path.read_text(encoding="utf-8"), rel) if b.marked]
    return found


def check_block(block: Block, workdir: Path | None = None) -> None:
    """Run one marked block; DocSnippetError if it fails as written."""
    if block.language not in RUNNERS:
        raise DocSnippetError(
            f"{block.where}: no runner for a `{block.info}` block (known: "
            f"{', '.join(f'{lang} {MARK}' for lang in RUNNERS)})"
        )
    with tempfile.TemporaryDirectory(prefix="agentrt-docs-") as scratch:
        work = workdir or Path(scratch)
        if block.language == "toml":
            _check_toml(block, work)
        else:
            _check_sh(block, work)


def _check_toml(block: Block, work: Path) -> None:
    path = work / "tasks.toml"
    path.write_text(block.text, encoding="utf-8")
    try:
        load_task_file(path)
    except ConfigError as exc:
        raise DocSnippetError(f"{block.where}: task file does not load: {exc}") from None


def _check_sh(block: Block, work: Path) -> None:
    bin_dir = work / ".bin"
    bin_dir.mkdir(exist_ok=True)
    # `agentrt` in a snippet is this checkout's CLI, whatever else is installed.
    shim = bin_dir / "agentrt"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m runtime.cli "$@"\n', encoding="utf-8")
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTRT_", "COLIMA_"))}
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        HOME=str(work),
        XDG_CONFIG_HOME=str(work / ".config"),
    )
    try:
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.text],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=SH_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise DocSnippetError(f"{block.where}: still running after {SH_TIMEOUT_S}s") from None
    if proc.returncode != 0:
        raise DocSnippetError(
            f"{block.where}: exit code {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-2000:]}--- stderr\n{proc.stderr[-2000:]}"
        )
