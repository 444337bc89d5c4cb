"""What an agent CLI says it used: tokens in, tokens out and, when it reports one, the cost.

Each preset runs its CLI in its machine-readable mode where it has one, and the numbers are
read on the host from the session's saved (redacted) log (:mod:`runtime.state.log_keeper`):

* ``claude -p --output-format json`` ends with one JSON object, ``{"type": "result", ...,
  "usage": {"input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
  "output_tokens", ...}, "total_cost_usd": ...}``;
* ``codex exec --json`` prints JSON Lines events; each ``turn.completed`` carries that turn's
  ``usage`` (``input_tokens``, ``cached_input_tokens``, ``output_tokens``); older versions sent
  ``token_count`` events with a running ``total_token_usage`` instead. Codex reports no cost;
* ``aider`` prints ``Tokens: 2.3k sent, 105 received. Cost: $0.01 message, $0.02 session.``
  after each exchange (``k``/``M`` abbreviations; cache reads and writes in between).

The log is text the agent wrote, so it is parsed defensively: bounded input, bounded regexes,
:func:`json.loads` on bounded lines only (never ``eval``), numbers checked for type and range,
and anything odd ignored rather than trusted. Every function here is pure.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from runtime.models import Usage

MAX_LOG_BYTES = 32 * 1024 * 1024  # more than a saved log can hold (head + tail + slack)
MAX_JSON_LINE = 8 * 1024 * 1024  # a longer line is not parsed
MAX_TOKENS = 10**13
MAX_COST_USD = 10.0**7

UsageParser = Callable[[str], "Usage | None"]


def _count(value: object) -> int | None:
    """A token count from JSON: a non-negative int within bounds (bool is not a number)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_TOKENS else None


def _cost(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    cost = float(value)
    return cost if math.isfinite(cost) and 0 <= cost <= MAX_COST_USD else None


def _json_objects(text: str) -> Iterator[dict[str, object]]:
    """Every line of ``text`` that is one JSON object (others, and over-long lines, skipped)."""
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{") or not line.endswith("}") or len(line) > MAX_JSON_LINE:
            continue
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            yield value


def _sum(values: Iterable[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def claude_usage(text: str) -> Usage | None:
    """Usage from ``claude -p --output-format json`` output: its last ``result`` object.

    ``input_tokens`` counts every prompt token the model read: uncached, written to the cache
    and read from it (Anthropic's own ``input_tokens`` is only the first).
    """
    found: Usage | None = None
    for obj in _json_objects(text):
        if obj.get("type") != "result":
            continue
        usage = obj.get("usage")
        cost = _cost(obj.get("total_cost_usd"))
        if not isinstance(usage, dict):
            if cost is not None:
                found = Usage(cost_usd=cost)
            continue
        inputs = _sum(_count(usage.get(k)) for k in (
            "input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))
        found = Usage(input_tokens=inputs, output_tokens=_count(usage.get("output_tokens")),
                      cost_usd=cost)
    return found if found is not None and not found.empty else None


def codex_usage(text: str) -> Usage | None:
    """Usage from ``codex exec --json`` output: the sum of its ``turn.completed`` events'
    usage, else the last running total of its ``token_count`` events."""
    turns: list[tuple[int | None, int | None]] = []
    total: tuple[int | None, int | None] | None = None
    for obj in _json_objects(text):
        turn = obj.get("usage")
        if obj.get("type") == "turn.completed" and isinstance(turn, dict):
            turns.append((_count(turn.get("input_tokens")), _count(turn.get("output_tokens"))))
            continue
        msg = obj.get("msg")
        if isinstance(msg, dict) and msg.get("type") == "token_count":
            info = msg.get("info")
            running = info.get("total_token_usage") if isinstance(info, dict) else None
            if isinstance(running, dict):
                total = (_count(running.get("input_tokens")),
                         _count(running.get("output_tokens")))
    if turns:
        usage = Usage(input_tokens=_sum(t[0] for t in turns),
                      output_tokens=_sum(t[1] for t in turns))
    elif total is not None:
        usage = Usage(input_tokens=total[0], output_tokens=total[1])
    else:
        return None
    return None if usage.empty else usage


_NUMBER = r"([0-9][0-9,]{0,20}(?:\.[0-9]{1,6})?)([kKmM]?)"
_AIDER_TOKENS = re.compile(
    rf"^Tokens: {_NUMBER} sent,(?: [^,\n]{{0,60}},){{0,4}} {_NUMBER} received\.(.{{0,200}})$",
    re.MULTILINE)
_AIDER_COST = re.compile(r"Cost: \$([0-9]{1,9}(?:\.[0-9]{1,9})?) message, "
                         r"\$([0-9]{1,9}(?:\.[0-9]{1,9})?) session")
_SCALE = {"": 1, "k": 1_000, "m": 1_000_000}


def _abbreviated(number: str, suffix: str) -> int | None:
    """``"2.3", "k"`` -> 2300; ``"1,234", ""`` -> 1234."""
    try:
        value = round(float(number.replace(",", "")) * _SCALE[suffix.lower()])
    except (ValueError, KeyError):
        return None
    return value if 0 <= value <= MAX_TOKENS else None


def aider_usage(text: str) -> Usage | None:
    """Usage from aider's ``Tokens: N sent, M received. Cost: $X message, $Y session.`` lines.

    Tokens are summed over every exchange; the cost is the last line's session total (aider
    prints none for a model whose prices it does not know).
    """
    sent: list[int | None] = []
    received: list[int | None] = []
    cost: float | None = None
    for match in _AIDER_TOKENS.finditer(text):
        sent.append(_abbreviated(match.group(1), match.group(2)))
        received.append(_abbreviated(match.group(3), match.group(4)))
        priced = _AIDER_COST.search(match.group(5))
        if priced is not None:
            cost = _cost(float(priced.group(2)))
    if not sent:
        return None
    usage = Usage(input_tokens=_sum(sent), output_tokens=_sum(received), cost_usd=cost)
    return None if usage.empty else usage


PARSERS: dict[str, UsageParser] = {
    "claude-code": claude_usage,
    "codex": codex_usage,
    "aider": aider_usage,
}


def usage_from_text(agent: str | None, text: str) -> Usage | None:
    """What ``agent`` (a preset name) reported in ``text``; None for other agents, or when it
    reported nothing readable."""
    parser = PARSERS.get(agent or "")
    return parser(text) if parser is not None else None


def usage_from_log(agent: str | None, path: Path) -> Usage | None:
    """:func:`usage_from_text` on a saved log (at most ``MAX_LOG_BYTES`` of it, its end)."""
    if agent not in PARSERS:
        return None
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - MAX_LOG_BYTES))
            data = f.read(MAX_LOG_BYTES)
    except OSError:
        return None
    return usage_from_text(agent, data.decode("utf-8", errors="replace"))


def total_usage(usages: Iterable[Usage | None]) -> Usage | None:
    """The sum of sessions' usage (a field is known when any session reported it)."""
    known = [u for u in usages if u is not None]
    if not known:
        return None
    costs = [u.cost_usd for u in known if u.cost_usd is not None]
    return Usage(input_tokens=_sum(u.input_tokens for u in known),
                 output_tokens=_sum(u.output_tokens for u in known),
                 cost_usd=round(sum(costs), 6) if costs else None)


def _tokens(value: int | None) -> str:
    if value is None:
        return "?"
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    return f"{value / 1000:.1f}k" if value >= 1000 else str(value)


def format_usage(usage: Usage | None) -> str:
    """``"1.2k in, 34 out, $0.0123"`` (the cost only when reported); ``""`` for None."""
    if usage is None or usage.empty:
        return ""
    text = f"{_tokens(usage.input_tokens)} in, {_tokens(usage.output_tokens)} out"
    return text + (f", ${usage.cost_usd:.4f}" if usage.cost_usd is not None else "")
