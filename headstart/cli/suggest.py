"""headstart suggest RUN UNLABELLED_FOLDER [--n 100] [--out suggestions.csv] [--copy-to DIR]"""

from __future__ import annotations

import argparse

from headstart.cli import options

EXAMPLE = """examples:
  headstart suggest runs/parts unlabelled/ --n 100                      # writes suggestions.csv
  headstart suggest runs/parts unlabelled/ --n 50 --copy-to to_label/   # and copies the 50 images there"""


def add_parser(sub):
    p = sub.add_parser("suggest", help="which unlabelled images to label next: where the run is unsure, no near-copies",
                       description="Ranks the images of a folder for labelling: those the run is least sure of "
                                   "(margin or entropy of its calibrated probabilities), spread over feature space "
                                   "by a k-center greedy pass so one batch holds no near-copies. Writes a CSV a "
                                   "labelling tool can import (rank, path, predicted_label, score, uncertainty). "
                                   "Folders larger than memory stream through the feature cache.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", metavar="RUN", help="run directory made by `headstart train`")
    p.add_argument("folder", metavar="UNLABELLED_FOLDER", help="folder of unlabelled images (searched recursively)")
    p.add_argument("--n", type=int, default=100, help="how many images to suggest (default 100)")
    p.add_argument("--out", metavar="CSV", default="suggestions.csv",
                   help="the CSV to write (default ./suggestions.csv)")
    p.add_argument("--copy-to", metavar="DIR", default=None,
                   help="also copy the suggested images into DIR, named <rank>_<file name>")
    p.add_argument("--uncertainty", default="margin", choices=["margin", "entropy"],
                   help="margin (default: 1 - the gap between the two highest probabilities) or entropy")
    p.add_argument("--pool-factor", type=int, default=None, metavar="F",
                   help="the k-center pass spreads the F x N most uncertain images (default 3)")
    options.add_batch_size(p)
    options.add_hardware(p, precision=True)
    return p


def run(args) -> int:
    from pathlib import Path

    from headstart.core.errors import UsageError
    from headstart.curation.suggest import POOL_FACTOR, copy_images, suggest, write_csv

    if args.n < 1 or (args.pool_factor is not None and args.pool_factor < 1):
        raise UsageError(f"--n and --pool-factor must be at least 1, got --n {args.n}"
                         + (f" and --pool-factor {args.pool_factor}" if args.pool_factor is not None else "")
                         + "; e.g. --n 100.")
    if args.copy_to and Path(args.copy_to).resolve().is_relative_to(Path(args.folder).resolve()):
        raise UsageError(f"--copy-to {args.copy_to} is inside {args.folder}: the copies would be suggested again "
                         "next time; pass a folder outside it.")
    found = suggest(args.run, args.folder, args.n, args.uncertainty, args.pool_factor or POOL_FACTOR,
                    device=args.device, precision=args.precision, batch_size=args.batch_size, workers=args.workers)
    path = write_csv(found.rows, args.out)
    print(f"scored {found.images} unlabelled image(s); suggested {len(found.rows)} of the {found.pool} most "
          f"uncertain, spread so no two are copies")
    if found.already_labelled:
        print(f"left out {found.already_labelled} image(s) the run was fitted on (the same files)")
    if found.skipped:
        print(f"skipped {len(found.skipped)} file(s) that cannot be decoded, e.g. {found.skipped[0][0]}: "
              f"{found.skipped[0][1]}")
    if len(found.rows) < args.n:
        print(f"only {len(found.rows)} distinct image(s) to suggest (asked for {args.n})")
    for row in found.rows[:10]:
        print(f"  {row['rank']:>4}  {row['path']}  {row['predicted_label']} {row['score']:.2f}")
    written = f"written: {path}"
    if args.copy_to:
        copy_images(found.rows, args.copy_to)
        written += f"; the images copied to {args.copy_to}"
    print(written)
    return 0
