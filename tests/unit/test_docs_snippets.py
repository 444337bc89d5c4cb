"""The docs' marked examples work as written (see tests/docs_runner.py for the convention)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs_runner import (
    ROOT,
    Block,
    DocSnippetError,
    check_block,
    doc_files,
    extract_blocks,
    marked_blocks,
)

BLOCKS = marked_blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_every_marked_doc_example_works_as_written(block: Block) -> None:
    check_block(block)


def test_the_docs_mark_their_task_files_and_runnable_commands() -> None:
    marked = {(b.source, b.language) for b in BLOCKS}
    assert ("README.md", "toml") in marked
    assert ("docs/task-file.md", "toml") in marked
    assert ("docs/task-file.md", "sh") in marked
    assert ("docs/merging.md", "toml") in marked
    assert ("docs/environments.md", "toml") in marked


def test_every_complete_task_file_in_the_docs_is_marked() -> None:
    unmarked = [
        b.where
        for path in doc_files()
        for b in extract_blocks(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
        if b.language == "toml" and re.search(r"^\[\[tasks\]\]", b.text, re.M) and not b.marked
    ]
    assert unmarked == [], f"mark these complete task files ```toml test: {unmarked}"


def test_docs_link_nothing_outside_the_repository() -> None:
    for path in doc_files():
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            resolved = (path.parent / target).resolve()
            assert resolved.is_relative_to(ROOT), f"{path.name} links outside the repo: {target}"
            assert resolved.exists(), f"{path.name} links to a missing file: {target}"



def _swallowed_headings(text: str, source: str) -> list[str]:
    # A stray fence turns the prose after it into code: its headings end up inside a block.
    return [
        f"{b.where}: {line}"
        for b in extract_blocks(text, source)
        for line in b.text.splitlines()
        if re.match(r"#{2,6} \S", line)
    ]


def test_no_code_block_swallows_the_prose_after_it() -> None:
    swallowed = [
        hit
        for path in doc_files()
        for hit in _swallowed_headings(path.read_text(encoding="utf-8"), path.name)
    ]
    assert swallowed == [], f"a stray code fence hides these headings: {swallowed}"
    stray = "## Stop\n\nCtrl-C stops it.\n```\n\n## Gc\n\n```\n"
    assert _swallowed_headings(stray, "stray.md") == ["stray.md:4: ## Gc"]

# -- the runner itself catches what fails as written ------------------------------------------

BROKEN_TASK_FILE = """\
# a doc example with a misspelt key
```toml test
[run]
max_concurrent_agent = 3

[[tasks]]
id = "parser"
command = ["true"]
```
"""


def test_a_task_file_example_with_an_unknown_key_fails() -> None:
    (block,) = extract_blocks(BROKEN_TASK_FILE, "broken.md")
    assert block.marked and block.line == 2
    with pytest.raises(DocSnippetError, match=r"broken.md:2: .*max_concurrent_agent.*unknown key"):
        check_block(block)


def test_a_task_file_example_with_a_dependency_cycle_fails() -> None:
    text = '```toml test\n[[tasks]]\nid = "a"\ncommand = ["true"]\ndeps = ["a"]\n```\n'
    with pytest.raises(DocSnippetError, match="depends on itself"):
        check_block(extract_blocks(text, "cycle.md")[0])


def test_a_shell_example_that_exits_non_zero_fails() -> None:
    text = "```sh test\nagentrt --help >/dev/null\nagentrt colima up --agents 0 --dry-run\n```\n"
    with pytest.raises(DocSnippetError, match=r"shell.md:1: exit code 2"):
        check_block(extract_blocks(text, "shell.md")[0])


def test_a_shell_example_runs_this_checkouts_cli(tmp_path: Path) -> None:
    text = "```sh test\nagentrt colima up --agents 2 --dry-run > out.txt\n```\n"
    check_block(extract_blocks(text, "ok.md")[0], workdir=tmp_path)
    assert (tmp_path / "out.txt").read_text().startswith("colima start agentrt --cpu 2")


def test_a_block_marked_for_a_language_without_a_runner_fails() -> None:
    with pytest.raises(DocSnippetError, match="no runner"):
        check_block(extract_blocks("```python test\nprint(1)\n```\n", "py.md")[0])


def test_an_unclosed_fence_fails() -> None:
    with pytest.raises(DocSnippetError, match="never closed"):
        extract_blocks("text\n```\n$ agentrt ps\n", "open.md")


def test_unmarked_blocks_and_inline_backticks_are_not_run() -> None:
    text = "Use ```` ```toml test ```` to mark.\n\n```toml\n[[tasks]]\nbogus = 1\n```\n"
    blocks = extract_blocks(text, "plain.md")
    assert [(b.info, b.marked) for b in blocks] == [("toml", False)]
