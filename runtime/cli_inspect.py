"""CLI verbs that look at runs and sessions: ps, logs, diff, report."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
