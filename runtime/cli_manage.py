"""CLI verbs that act on runs and sessions: stop, gc, merge, replay, shell, colima."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
