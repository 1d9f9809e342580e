"""The rich console every command prints its tables with."""

from __future__ import annotations

import sys


def console():
    """A rich Console; when the output is not a terminal (a pipe, a CI log, nohup), 160 columns instead of rich's
    80, so tables keep whole names rather than "efficie…"."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)
