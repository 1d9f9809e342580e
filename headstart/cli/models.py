"""headstart models [--json]"""

from __future__ import annotations

import argparse
import json

from headstart.cli import options
from headstart.core.catalog import listing  # no torch: the answer takes a fraction of a second


def add_parser(sub):
    p = sub.add_parser("models", help="list the backbones and whether their pretrained weights are available now",
                       epilog="examples:\n  headstart models\n  headstart models --json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_json(p, "print one JSON array on stdout instead of a table")
    return p


def run(args) -> int:
    rows = listing()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from headstart.cli.console import Table, console  # rich: not at import time, so --help stays fast

    table = Table(title="headstart backbones (any timm model also works as timm:<name>)")
    for col in ("name", "family", "features", "input", "pretrained weights"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["family"], str(r["num_features"]), str(r["input_size"]),
                      ("[green]" if r["available"] else "[yellow]")
                      + (r["weights"].split(":")[0] + ": offline" if r["available"] else r["weights"]))
    console().print(table)
    return 0
