"""headstart report RUN_OR_COMPARE_DIR [--out FILE]"""

from __future__ import annotations

import argparse

from headstart.cli.options import add_device

EXAMPLE = """examples:
  headstart report runs/photos                       # writes runs/photos/report.html
  headstart report runs/demo --out demo.html         # a `headstart compare` / `demo` folder
  headstart report runs/photos --top-losses 0        # without loading the model (no top losses)"""


def add_parser(sub):
    p = sub.add_parser("report", help="one self-contained HTML page of a run (or a compare folder) to show people",
                       description="Writes report.html: data per split and class, left-out files, model and strategy "
                                   "(and why), training curves, per-class figures, the confusion matrix, calibration "
                                   "and the most confidently wrong held-out images. Images and styles are inside "
                                   "the file: it opens offline and can be emailed.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="RUN_OR_COMPARE_DIR",
                   help="a run directory of `headstart train`, or the --out folder of `headstart compare`/`demo`")
    p.add_argument("--out", metavar="FILE", help="the HTML file to write (default: report.html inside the folder)")
    p.add_argument("--top-losses", type=int, default=24, metavar="N",
                   help="how many of the most confidently wrong test/validation images to show (default 24; 0: "
                        "none, and the model is not loaded)")
    p.add_argument("--max-images", type=int, default=2000, metavar="N",
                   help="predict at most N test and validation images to find them, test first (default 2000)")
    p.add_argument("--no-heatmaps", dest="heatmaps", action="store_false",
                   help="leave out the Grad-CAM heat map beside each top loss (where the evidence for the predicted "
                        "class lies)")
    add_device(p)
    return p


def run(args) -> int:
    from headstart.core.errors import UsageError  # in the command, not at import: --help stays fast

    if args.top_losses < 0 or args.max_images < 1:
        raise UsageError(f"--top-losses must be 0 or more and --max-images at least 1, got {args.top_losses} and "
                         f"{args.max_images}.")
    from headstart.report import write_report  # in the command, not at import: --help stays fast

    path = write_report(args.path, args.out, top_losses=args.top_losses, max_images=args.max_images,
                        device=args.device, heatmaps=args.heatmaps)
    print(f"written: {path} (self-contained; open it in a browser)")
    return 0
