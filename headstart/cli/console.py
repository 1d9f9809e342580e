"""The rich console every command prints its tables with."""

from __future__ import annotations

import sys


def console(stderr: bool = False):
    """A rich Console (on stderr with ``stderr``: messages, not data); when the output is not a terminal (a pipe, a
    CI log, nohup), 160 columns instead of rich's 80, so tables keep whole names rather than "efficie…"."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr) if stream.isatty() else Console(stderr=stderr, width=160)
