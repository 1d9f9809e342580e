"""headstart evaluate RUN DATA [--json]

With ``--json`` stdout holds only the metrics (one JSON object); skipped files and every other message go to
stderr."""

from __future__ import annotations

import argparse
import json
import sys

from headstart.cli import options
from headstart.cli.options import (
    PREDICT_PRECISION_HELP,
    add_batch_size,
    add_device,
    add_duplicates,
    add_json,
    add_precision,
)
from headstart.core.hardware import launched


def add_parser(sub):
    p = sub.add_parser("evaluate", help="accuracy, per-class metrics and confusion matrix of a run on labelled data",
                       epilog="examples:\n  headstart evaluate runs/photos new_labelled_photos/\n"
                              "  headstart evaluate runs/photos new_labelled_photos/ --json | jq .accuracy",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory made by `headstart train`")
    p.add_argument("data", help="folder of class subfolders named like the run's classes (a multi-label run: a CSV "
                                "with path and labels columns, or one 0/1 column per label)")
    options.add_label_delimiter(p)
    add_json(p, 'print only one JSON object on stdout (messages go to stderr) instead of a table')
    add_batch_size(p)
    add_device(p)
    add_precision(p, help=PREDICT_PRECISION_HELP)
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over each image and its mirror")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not refresh RUN/report.html with this evaluation")
    p.add_argument("--no-heatmaps", dest="heatmaps", action="store_false",
                   help="the report without Grad-CAM heat maps beside its top losses (they take a few seconds)")
    p.add_argument("--keep-leaked", action="store_true",
                   help="score images that duplicate one of the run's training images (left out by default)")
    add_duplicates(p)
    return p


def run(args) -> int:
    from headstart.core.errors import UsageError  # in the command, not at import: --help stays fast
    from headstart.evaluation.metrics import evaluate_run  # in the command, not at import: --help stays fast
    from headstart.predict import open_predictor  # in the command, not at import: --help stays fast

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}.")
    # A frozen-backbone run whose features are cached is answered without torch; any other is loaded.
    loaded = open_predictor(args.run, device=args.device, precision=args.precision, tta=args.tta)
    if loaded.decision is not None:  # a multi-label run
        return _multilabel(args, loaded)
    m = evaluate_run(loaded, args.data, batch_size=args.batch_size, tta=args.tta, keep_leaked=args.keep_leaked,
                     duplicates=args.duplicates)
    rank, world = launched()
    if world > 1:  # under torchrun every rank checked and extracted its share; rank 0 alone reports
        from headstart.core.distributed import leave  # torch: only under torchrun

        leave()
        if rank != 0:
            return 0
    # Top losses: a frozen backbone's features come from the cache; a trained one predicts up to 500 images.
    if _report_then_json(args, loaded, m, max_images=2000 if loaded.frozen_backbone else 500):
        return 0
    from rich.table import Table  # in the command, not at import: --help stays fast

    from headstart.cli.console import console  # in the command, not at import: --help stays fast

    table = Table(title=f"{args.run} on {args.data}: accuracy {m['accuracy']:.4f}, "
                        f"balanced {m['balanced_accuracy']:.4f}"
                        f" ({m['num_images']} images)")
    for col in ("class", "precision", "recall", "f1", "support"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for name, r in m["per_class"].items():
        table.add_row(name, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    console().print(table)
    c = m["calibration"]
    print(f"calibration: the run's temperature {c['temperature']:.3g} (how it was fitted: summary.json's "
          "temperature_source); expected "
          f"calibration error {c['ece_before']:.3f} without it, {c['ece_after']:.3f} with it")
    if m["leaked_excluded"]:
        print(f"left out {m['leaked_excluded']} image(s) that duplicate training images (--keep-leaked scores them)")
    print(f"confusion matrix: {loaded.path / 'confusion_matrix.png'} (and evaluation.json)")
    return 0


def _report_then_json(args, loaded, m: dict, **report) -> bool:
    """The run's report refreshed (unless ``--no-report``), then with ``--json`` the figures as one JSON object on
    stdout: True when they were printed so (the table is not wanted)."""
    if args.report:
        from headstart.report import write_report  # in the command, not at import: --help stays fast

        print(f"report: {write_report(loaded.path, loaded=loaded, heatmaps=args.heatmaps, **report)}",
              file=sys.stderr)
    if args.json:
        print(json.dumps(m))
    return args.json


def _multilabel(args, loaded) -> int:
    """``evaluate`` of a multi-label run: mAP, exact match, Hamming loss and each label's figures at its threshold."""
    from headstart.evaluation.multilabel import evaluate_multilabel_run  # in the command: --help stays fast

    m = evaluate_multilabel_run(loaded, args.data, batch_size=args.batch_size, tta=args.tta,
                                keep_leaked=args.keep_leaked, duplicates=args.duplicates,
                                delimiter=args.label_delimiter)
    if _report_then_json(args, loaded, m):
        return 0
    from rich.table import Table  # in the command, not at import: --help stays fast

    from headstart.cli.console import console  # in the command, not at import: --help stays fast

    table = Table(title=f"{args.run} on {args.data}: mAP {m['map']:.4f} (micro {m['map_micro']:.4f}), exact match "
                        f"{m['exact_match']:.4f}, Hamming loss {m['hamming_loss']:.4f} ({m['num_images']} images, "
                        f"{m['label_cardinality']:.2f} labels each, {m['predicted_cardinality']:.2f} given)")
    for col in ("label", "AP", "precision", "recall", "f1", "threshold", "support"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for name, r in m["per_class"].items():
        ap = "-" if r["ap"] is None else f"{r['ap']:.3f}"
        table.add_row(name, ap, f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}",
                      f"{r['threshold']:.3f}", str(r["support"]))
    console().print(table)
    if m["leaked_excluded"]:
        print(f"left out {m['leaked_excluded']} image(s) that duplicate training images (--keep-leaked scores them)")
    return 0
