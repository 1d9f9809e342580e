"""headstart adapt RUN TARGET_DIR --out RUN2: AdaBN, BatchNorm statistics recomputed on target-domain images.

Prints what was done as JSON on stdout; warnings go to stderr."""

from __future__ import annotations

import argparse
import json
import sys

from headstart.cli import options
from headstart.core.choices import ADAPT_METHODS


def add_parser(sub):
    p = sub.add_parser("adapt", help="adapt a run's BatchNorm statistics to unlabelled images of a new domain (AdaBN)",
                       description="Recomputes every BatchNorm layer's mean and variance for the images in "
                                   "TARGET_DIR (unlabelled; searched recursively) and writes a new run directory "
                                   "that predict and evaluate use like any other. No weight changes, no labels, no "
                                   "gradients (AdaBN, Li et al. 2016). A multi-label run keeps its thresholds. "
                                   "Prints what was done as JSON.",
                       epilog="example:\n  headstart adapt runs/scanner_a scans_from_scanner_b/ --out runs/scanner_b",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run directory made by `headstart train`")
    p.add_argument("target", metavar="TARGET_DIR", help="images from the domain the model will meet")
    p.add_argument("--out", required=True, help="the new run directory")
    p.add_argument("--method", default="auto", choices=ADAPT_METHODS,
                   help="aligned: map the target's activations onto the training images' (right for runs trained "
                        "with frozen BatchNorm, the default; needs the training images: the run's split.json or "
                        "--source); classic: the target's own statistics (Li et al.), which assumes the run's "
                        "statistics are its training images'; auto: aligned when the training images are found, "
                        "else classic if the run's statistics are its training images' (--bn adabn, or --bn train "
                        "on every layer), else an error asking for --source or --method classic")
    p.add_argument("--source", metavar="DIR", help="images of the training domain, when the run's own training "
                                                   "images cannot be found")
    options.add_batch_size(p, 64, help="larger batches give steadier statistics (at least 2; every image is used)")
    options.add_hardware(p)
    options.add_overwrite(p, "replace an existing run in --out (its files are removed)")
    return p


def run(args) -> int:
    from headstart.training.adapt import adapt_run  # torch: not at import time, so --help stays fast

    info = adapt_run(args.run, args.target, args.out, batch_size=args.batch_size, workers=args.workers,
                     device=args.device, overwrite=args.overwrite, method=args.method,
                     source=args.source)
    if info.get("warning"):
        print(f"warning: {info['warning']}", file=sys.stderr)
    if not info["batchnorm_layers"]:
        print(f"{args.run}'s model has no BatchNorm layers: nothing to adapt; {args.out} is an unchanged copy.",
              file=sys.stderr)
    print(json.dumps(info, indent=2))
    return 0
