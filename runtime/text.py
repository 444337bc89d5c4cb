"""Text an agent can influence, made safe to show: the one sanitiser of every terminal view.

Agents choose file names, output lines and commit subjects, and those reach the live table, the
plain progress lines, the summary, ``ps``, ``report``, ``logs`` and the radar warnings. Shown
raw, an escape sequence (``ESC ] 0 ; title BEL``, ``ESC [2J``) would drive the user's terminal,
a newline would forge a line of the progress stream, and a ``[/b]`` would be read as rich
markup (and raise ``MarkupError``). So every such string passes through :func:`terminal_safe`
(plain output) or :func:`markup_safe` (inside rich markup) at the boundary:

* C0 and C1 control characters, DEL, Unicode bidirectional overrides and isolates, line and
  paragraph separators, the byte-order mark and lone surrogates (undecodable bytes) are shown
  as visible escapes: ``\\x1b``, ``\\n``, ``\\u202e``, ``\\udcff``;
* in one record (the default), newlines and tabs are escaped too, so a record is one line;
  ``multiline=True`` keeps ``\\n`` and ``\\t`` (and turns ``\\r\\n`` into ``\\n``) for
  streams that are many lines by nature (logs, diffs);
* :func:`markup_safe` also escapes rich markup, so ``[bold red]`` prints as itself.

The result is plain text: printable characters only, never a sequence a terminal acts on.

Output of a tool agentrt runs (``docker build``'s steps, whose classic builder colours a step's
stderr with ``ESC [91m``) first goes through :func:`strip_ansi`: its colour and cursor
sequences are removed rather than shown as ``\\x1b[91m`` noise.
"""

from __future__ import annotations

import re

from rich.markup import escape as _escape_markup

__all__ = ["markup_safe", "strip_ansi", "terminal_safe"]

# C0, DEL and C1 controls; bidi embeddings, overrides and isolates (LRE..RLO, LRI..PDI) and marks;
# line and paragraph separators; the BOM; lone surrogates (what surrogateescape leaves).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff"
    "\ud800-\udfff]"
)
_UNSAFE_MULTILINE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff"
    "\ud800-\udfff]"
)
# ECMA-48 sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), the 8-bit CSI, and the
# two-character escapes (ESC followed by one byte of 0x40-0x5f, e.g. ESC c).
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b[@-Z\\-_]"
)
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: object, *, multiline: bool = False) -> str:
    """``text`` (any value, as ``str``) with every control character shown as a visible escape.

    Safe to write to a terminal as plain text. One line unless ``multiline``, which keeps
    newlines and tabs. Never raises; idempotent on its own output.
    """
    value = str(text)
    if multiline:
        return _UNSAFE_MULTILINE.sub(_visible, value.replace("\r\n", "\n"))
    return _UNSAFE.sub(_visible, value)


def markup_safe(text: object) -> str:
    """``text`` made :func:`terminal_safe` (one line) and escaped for rich markup.

    Meant to sit inside a markup string (a table cell, between style tags): it prints as
    ``terminal_safe(text)``. Like :func:`rich.markup.escape` it doubles a trailing backslash so
    that a tag after it still closes.
    """
    return _escape_markup(terminal_safe(text))


def strip_ansi(text: object) -> str:
    """``text`` without terminal escape sequences (colours, cursor moves, titles).

    For output of tools agentrt runs, before it is shown: the sequences are dropped, not
    escaped; whatever control characters remain are left to :func:`terminal_safe`.
    """
    return _ANSI.sub("", str(text))
