"""headstart predict RUN PATH... [--topk K] [--format table|csv|json]"""

from __future__ import annotations

import csv
import json
import sys


def add_parser(sub):
    p = sub.add_parser("predict", help="predict the class of image files or folders with a trained run")
    p.add_argument("run", help="run directory made by `headstart train`")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--topk", type=int, default=1)
    p.add_argument("--format", default="table", choices=["table", "csv", "json"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over each image and its mirror")
    return p


def run(args) -> int:
    from headstart.inference import expand_paths, load_run, predict_paths

    loaded = load_run(args.run, device=args.device)
    results = predict_paths(loaded, expand_paths(args.paths), topk=args.topk, batch_size=args.batch_size,
                             tta=args.tta)
    if args.format == "json":
        print(json.dumps(results, indent=1))
    elif args.format == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(["path"] + [f"{k}{i + 1}" for i in range(args.topk) for k in ("label", "score")] + ["error"])
        for r in results:
            tops = [v for t in r.get("topk", []) for v in (t["label"], t["score"])]
            w.writerow([r["path"]] + tops + [""] * (2 * args.topk - len(tops)) + [r.get("error", "")])
    else:
        from rich.table import Table

        from headstart.cli.console import console

        table = Table()
        table.add_column("path")
        table.add_column("prediction")
        for r in results:
            pred = r.get("error") or "  ".join(f"{t['label']} {t['score']:.3f}" for t in r["topk"])
            table.add_row(r["path"], pred)
        console().print(table)
    return 1 if any(r.get("error") for r in results) and all(r.get("error") for r in results) else 0
