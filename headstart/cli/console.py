"""The rich console every command prints its tables with, and the pieces of rich those tables use.

Commands import this module where they print, not at their top: ``headstart --help`` needs no rich.
"""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["Table", "console", "escape"]


def console(stderr: bool = False) -> Console:
    """A rich Console (on stderr with ``stderr``: messages, not data); when the output is not a terminal (a pipe, a
    CI log, nohup), 160 columns instead of rich's 80, so tables keep whole names rather than "efficie…"."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr) if stream.isatty() else Console(stderr=stderr, width=160)
