"""headstart predict RUN|MODEL.onnx PATH... [--topk K] [--format table|csv|json]

stdout holds only the predictions (one JSON array, or CSV with a header); every message goes to stderr. The exit
code is 1 when any input could not be predicted (its row carries the error), 0 when all were. An ``.onnx`` file
made by ``headstart export`` predicts the same way through ONNX Runtime, without importing torch."""

from __future__ import annotations

import argparse
import csv
import json
import sys
import textwrap

from headstart.cli.options import DEVICE_HELP, PREDICT_PRECISION_HELP, add_batch_size, add_device, add_precision

STREAM_CHUNK = 4096  # images per predictor call (their records are written before the next are read)


def add_parser(sub):
    p = sub.add_parser("predict", help="predict the class of image files or folders with a trained run (a "
                                       "multi-label run: every label above its threshold, with its score)",
                       epilog="examples:\n  headstart predict runs/photos new_photos/ --topk 3 --format csv > "
                              "predictions.csv\n  headstart predict runs/photos/model.onnx new_photos/ --format json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run directory made by `headstart train`, or an .onnx file made by "
                                              "`headstart export` (run by ONNX Runtime)")
    p.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--topk", type=int, default=1, help="how many classes to list per image (default 1; at most the "
                                                       "number of classes)")
    p.add_argument("--format", default="table", choices=["table", "csv", "json"],
                   help="csv and json print only the predictions on stdout (messages go to stderr); the exit code "
                        "is 1 when any image could not be predicted")
    add_batch_size(p)
    add_device(p, help=DEVICE_HELP + "; an .onnx file runs on the CPU")
    add_precision(p, help=PREDICT_PRECISION_HELP)
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over each image and its mirror")
    p.add_argument("--explain", nargs="?", const="heatmaps", metavar="DIR",
                   help="write a Grad-CAM heat map of each prediction (where the evidence for the predicted class "
                        "lies) as DIR/<name>.gradcam.png (default DIR: ./heatmaps), recorded in the output's "
                        "heatmap column; needs the run directory, not an .onnx file. Put it after the images")
    return p


def run(args) -> int:
    from headstart.core.errors import UsageError  # in the command, not at import: --help stays fast

    if args.topk < 1:
        raise UsageError(f"--topk must be at least 1, got {args.topk}.")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}.")
    predictor, predict = _load(args)
    classes, multilabel = predictor.classes, predictor.decision is not None
    if multilabel and args.explain:
        raise UsageError("--explain draws heat maps for single-label classes; leave it out for a multi-label run.")
    if args.topk > len(classes) and not multilabel:
        print(f"--topk {args.topk}: the model has {len(classes)} classes; listing all of them.", file=sys.stderr)
        args.topk = len(classes)
    results, failed, count = predict(args.paths), [], 0  # records stream out, STREAM_CHUNK images at a time
    if args.explain:  # heat maps of every record first (explaining is for a few images, not a stream)
        results = list(results)
        _explain(predictor, results, args.explain)
    if args.format == "json":
        print("[", end="")
        for count, r in enumerate(results, 1):
            print("," if count > 1 else "", "\n", textwrap.indent(json.dumps(r, indent=1), " "), sep="", end="")
            failed += [r["path"]] if r.get("error") else []
        print("\n]" if count else "]")
    elif args.format == "csv" and multilabel:
        failed, count = _multilabel_csv(results, classes)
    elif args.format == "csv":
        w = csv.writer(sys.stdout)
        extra = ["heatmap"] if args.explain else []
        w.writerow(["path"] + [f"{k}{i + 1}" for i in range(args.topk) for k in ("label", "score")] + ["error"]
                   + extra)
        for count, r in enumerate(results, 1):
            tops = [v for t in r.get("topk", []) for v in (t["label"], t["score"])]
            w.writerow(map(_inert, [r["path"]] + tops + [""] * (2 * args.topk - len(tops)) + [r.get("error", "")]
                           + [r.get(k, "") for k in extra]))
            failed += [r["path"]] if r.get("error") else []
    else:
        from rich.table import Table  # in the command, not at import: --help stays fast

        from headstart.cli.console import console  # in the command, not at import: --help stays fast

        table = Table()
        table.add_column("path")
        table.add_column("prediction")
        if args.explain:
            table.add_column("heat map")
        for count, r in enumerate(results, 1):
            pred = r.get("error") or ("  ".join(f"{t['label']} {t['score']:.3f}" for t in r["topk"]) if not multilabel
                                      else "  ".join(f"{a} {b:.3f}" for a, b in zip(r["labels"], r["scores"]))
                                      or "(no label above its threshold)")
            table.add_row(r["path"], pred, *([r.get("heatmap", "")] if args.explain else []))
            failed += [r["path"]] if r.get("error") else []
        console().print(table)
    if failed:
        shown = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
        print(f"headstart predict: {len(failed)} of {count} images could not be predicted: {shown}",
              file=sys.stderr)
    return 1 if failed else 0


def _multilabel_csv(results, classes: list[str]) -> tuple[list[str], int]:
    """A multi-label run's CSV: the labels given (``;``-separated, best first) with their scores, then every label's
    score in a column of its own. Returns the paths that failed and how many records were written."""
    w, failed, count = csv.writer(sys.stdout), [], 0
    w.writerow(["path", "labels", "scores"] + [f"score:{c}" for c in classes] + ["error"])
    for count, r in enumerate(results, 1):
        failed += [r["path"]] if r.get("error") else []
        given = ";".join(r.get("labels") or []), ";".join(f"{s:.6f}" for s in r.get("scores") or [])
        every = [r["all_scores"][c] for c in classes] if "all_scores" in r else [""] * len(classes)
        w.writerow(map(_inert, [r["path"], *given, *every, r.get("error", "")]))
    return failed, count


def _inert(cell):
    """A CSV cell a spreadsheet shows as text: one that starts like a formula (``=HYPERLINK(...)`` as a file name)
    gets a leading ``'``, as OWASP's CSV-injection guidance says. Numbers stay numbers."""
    return "'" + cell if isinstance(cell, str) and cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


def _explain(predictor, results: list[dict], folder: str) -> None:
    """Heat maps of the predictions, written into ``folder``, their paths added to ``results``; through the run's
    torch network, loaded here when a cached-feature predictor answered."""
    from headstart.explain import explain_records, torch_run  # in the command, not at import: --help stays fast

    explain_records(torch_run(predictor), results, folder)
    written = sum(1 for r in results if r.get("heatmap"))
    print(f"heat maps: {written} written to {folder}", file=sys.stderr)


def _load(args):
    """The predictor and a function from the paths given to the results, through the predictor
    :func:`headstart.predict.open_predictor` picks (errors about the run come before any image is read)."""
    from pathlib import Path  # in the command, not at import: --help stays fast

    from headstart.core.errors import UsageError  # in the command, not at import: --help stays fast
    from headstart.data.sources import expand_paths  # in the command, not at import: --help stays fast
    from headstart.predict import open_predictor  # in the command, not at import: --help stays fast

    if Path(args.run).suffix.lower() in (".pt2", ".pt", ".pth", ".safetensors") and Path(args.run).is_file():
        raise UsageError(f"{args.run} is a weights or .pt2 file; predict takes a run directory or an .onnx file "
                         "made by `headstart export` (a .pt2 loads in Python with torch.export.load).")
    if args.explain and Path(args.run).suffix.lower() == ".onnx":
        raise UsageError(f"--explain needs the run directory {args.run} was exported from: an .onnx model holds no "
                         "gradients for heat maps.")
    predictor = open_predictor(args.run, device=args.device, precision=args.precision, tta=args.tta)
    return predictor, lambda paths: _stream(predictor, expand_paths(paths), args)


def _stream(predictor, paths: list[str], args):
    """Records of ``paths`` in order, computed :data:`STREAM_CHUNK` images at a time: memory stays flat however
    many there are, and the first lines come out before the last images are read."""
    for start in range(0, len(paths), STREAM_CHUNK):
        yield from predictor.predict_paths(paths[start:start + STREAM_CHUNK], topk=args.topk,
                                           batch_size=args.batch_size, tta=args.tta)
