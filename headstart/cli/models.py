"""headstart models [--json]"""

from __future__ import annotations

import argparse
import json

from headstart.cli import options
from headstart.core.catalog import listing  # no torch: the answer takes a fraction of a second
from headstart.features.cache import cpu_model, remembered_speeds  # no torch either


def add_parser(sub):
    p = sub.add_parser("models", help="list the backbones and whether their pretrained weights are available now",
                       epilog="examples:\n  headstart models\n  headstart models --json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_json(p, "print one JSON array on stdout instead of a table")
    p.add_argument("--measure", action="store_true",
                   help="measure the feature extraction speed (img/s) on this machine of every backbone whose "
                        "weights are here, at its input size, and remember it (a few seconds each)")
    options.add_device(p)
    options.add_precision(p)
    return p


def run(args) -> int:
    if args.measure:
        _measure(args, [r for r in listing() if r["available"]])
    rows = [r | {"img_per_s": _measured(r["name"], r["input_size"])} for r in listing()]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from headstart.cli.console import Table, console  # rich: not at import time, so --help stays fast

    table = Table(title="headstart backbones (any timm model also works as timm:<name>)")
    for col in ("name", "family", "params", "ImageNet top-1", "features", "input", "pretrained weights",
                "img/s here"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["family"], f"{r['params_m']:g} M" if r["params_m"] is not None else "",
                      f"{r['imagenet_top1']:.1f}%" if r["imagenet_top1"] is not None else "",
                      str(r["num_features"]), str(r["input_size"]),
                      ("[green]" if r["available"] else "[yellow]")
                      + (r["weights"].split(":")[0] + ": offline" if r["available"] else r["weights"]),
                      f"{r['img_per_s']:,.0f}" if r["img_per_s"] else "")
    console().print(table)
    print("params: the headless backbone's; ImageNet top-1: as the weights' publisher reports it (torchvision; "
          "Google for the Lite models).")
    if not any(r["img_per_s"] for r in rows):
        print("img/s here: `headstart models --measure` measures the backbones whose weights are here.")
    return 0


def _measured(name: str, size: int) -> float | None:
    """The last figure measured for ``name`` at ``size`` px on this CPU (any precision and threads), or None."""
    found = [r for r in remembered_speeds() if r.get("backbone") == name and r.get("resolution") == size
             and r.get("machine") == cpu_model() and r.get("work", "extract") == "extract"]  # the backbone's own
    return found[-1]["img_per_s"] if found else None


def _measure(args, rows: list[dict]) -> None:
    from headstart.core.runtime import make_runtime  # torch: only when measuring
    from headstart.features.speed import throughput  # torch: only when measuring

    runtime = make_runtime(args.device, args.precision)
    for r in rows:
        rate = throughput(r["name"], r["input_size"], runtime, remeasure=True)
        print(f"{r['name']} at {r['input_size']} px on {runtime.describe()}: {rate:,.0f} img/s", flush=True)
