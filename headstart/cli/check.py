"""headstart check DATA [--json] [--quarantine DIR] [--labels [--labels-out DIR | --run RUN]]

Exit code 0: the data is usable (warnings allowed); 1: problems were found that training would have to skip or
would refuse (also with --quarantine, which moves them; a second check then passes); 2: wrong usage.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from headstart.cli import options
from headstart.core.choices import MAX_PIXELS, NEAR_BITS
from headstart.core.errors import UsageError
from headstart.core.hardware import launched

ROWS_PER_KIND = 10  # the table stays readable on large datasets; --json lists everything
STYLES = {"error": "red", "warning": "yellow", "info": "cyan"}


def add_parser(sub):
    p = sub.add_parser("check", help="find broken files, duplicates, leakage between splits and class imbalance",
                       description="Check a dataset before training: unreadable, truncated, empty or oversized files "
                                   "(which train skips), exact and near duplicates within and across splits, "
                                   "extensions that do not match the content, unusual modes, EXIF rotation, small "
                                   "classes and class imbalance. The splits are found as `headstart train` finds "
                                   "them.",
                       epilog="examples:\n  headstart check photos/\n  headstart check photos/ --json > report.json\n"
                              "  headstart check photos/ --labels                  # + labels that look wrong\n"
                              "  headstart check photos/ --labels --run runs/photos # ...shown in its report",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="folder of class subfolders (optionally inside train/, val/, test/), or a CSV")
    options.add_json(p, "print the report as JSON")
    options.add_label_delimiter(p)
    p.add_argument("--quarantine", metavar="DIR", default=None,
                   help="move the unusable files to DIR (outside DATA), keeping their paths relative to DATA")
    p.add_argument("--min-images", type=int, default=5, help="warn about training classes with fewer (default 5)")
    p.add_argument("--max-imbalance", type=float, default=10.0,
                   help="warn when the largest training class is this many times the smallest (default 10)")
    options.add_duplicates(p, help="what counts as a copy: near (default: re-encoded, resized or brightened copies, "
                                   "each pair confirmed on thumbnails), exact (the same bytes) or off")
    p.add_argument("--near", type=int, default=NEAR_BITS, metavar="BITS",
                   help=f"near copies: candidates whose perceptual hashes are at most this many of 64 bits apart "
                        f"(default {NEAR_BITS}; each is confirmed on thumbnails)")
    options.add_max_pixels(p, f"pixel limit (default {MAX_PIXELS:,})", default=MAX_PIXELS)
    options.add_val_fraction(p, "share held out when there is no val/ folder, as in train")
    options.add_seed(p, "seed of that split, as in train")
    labels = p.add_argument_group("labels that look wrong (--labels)")
    labels.add_argument("--labels", action="store_true",
                        help="also rank the labelled images by how likely their label is wrong: out-of-fold "
                             "probabilities of a linear probe on frozen features, given to cleanlab's confident "
                             "learning (on a multi-label CSV: per label, saying which label looks missing or "
                             "extra); writes label_issues.csv and label_issues.html")
    labels.add_argument("--labels-out", metavar="DIR", default="label_issues",
                        help="where --labels writes its CSV and page (default ./label_issues)")
    labels.add_argument("--run", metavar="RUN", default=None,
                        help="attach the findings to a run: its pretrained backbone and image size, the files "
                             "written into RUN and shown in its report.html")
    options.add_model(labels, "pretrained backbone whose features the probe reads (default: the offline "
                              "EfficientNet-Lite0, Lite1 and Lite2 at their own sizes, side by side: sharper, about "
                              "three times Lite0's time; name one, e.g. efficientnet_lite0, to go faster)",
                      default=None)
    options.add_image_size(labels, "its input size (default: the backbone's own)")
    labels.add_argument("--folds", type=int, default=5, help="K of the K-fold scoring (default 5)")
    labels.add_argument("--max-given", type=float, default=None, metavar="P",
                        help="flag only labels the probe gives under this probability (default 0.02; on a "
                             "multi-label CSV, where it is the probability of the given yes or no, 0.05); 1 keeps "
                             "every label confident learning flags: a longer list with more false alarms")
    options.add_hardware(labels, precision=True)
    return p


def run(args) -> int:
    from headstart.data.check import check, quarantine  # PIL, imagehash: not at import time, so --help stays fast

    if not 0 <= args.near <= 16:
        raise UsageError(f"--near {args.near} is out of range; pass a number of bits from 0 to 16, e.g. --near 8.")
    if args.min_images < 1 or args.max_imbalance < 1 or args.max_pixels < 1:
        raise UsageError("--min-images, --max-imbalance and --max-pixels must be at least 1, e.g. --min-images 5.")
    if args.run and not args.labels:
        raise UsageError("--run attaches the --labels findings to a run; add --labels, e.g. check DATA --labels "
                         "--run RUN.")
    if args.max_given is not None and not 0 < args.max_given <= 1:
        raise UsageError(f"--max-given must be a probability above 0 and at most 1 (got {args.max_given}), e.g. "
                         "--max-given 0.05.")
    if args.folds < 2:
        raise UsageError(f"--folds must be at least 2 (got {args.folds}), e.g. --folds 5.")
    from headstart.data.multilabel import check_multilabel, discover_multilabel, is_multilabel_csv

    if args.run:
        from headstart.data.rundir import RunDir  # PIL: not at import time, so --help stays fast

        config = RunDir(args.run).require_model().config()  # a wrong --run is said before the images are read
        if (config.get("task") == "multilabel") != is_multilabel_csv(args.data):
            kind = "multi-label" if is_multilabel_csv(args.data) else "single-label"
            raise UsageError(f"{args.run} was not trained on {kind} data but {args.data} is {kind}; pass a run "
                             f"trained on {kind} data, or leave --run out.")

    common = dict(max_pixels=args.max_pixels, duplicates=args.duplicates, near=args.near)
    splits = None
    if is_multilabel_csv(args.data):  # several labels per image
        splits = discover_multilabel(args.data, args.label_delimiter, args.val_fraction, args.seed)
        report = check_multilabel(splits, args.data, min_positives=args.min_images, **common)
    else:
        report = check(args.data, val_fraction=args.val_fraction, seed=args.seed, min_images=args.min_images,
                       max_imbalance=args.max_imbalance, **common)
    if launched()[0] != 0:  # under torchrun, every rank checked its share; rank 0 reports and acts
        return 1 if report.verdict == "problems" else 0
    moved = quarantine(report, args.quarantine) if args.quarantine else None
    if args.json:
        out = report.to_json()
        if moved is not None:
            out["quarantined"] = moved
        print(json.dumps(out, indent=1))
    else:
        print_report(report, moved, args.quarantine)
    if args.labels:
        check_labels(args, report, splits)
    return 1 if report.verdict == "problems" else 0


def check_labels(args, report, multilabel_splits=None) -> None:
    """``--labels``: the labels that look wrong, written as a CSV and a page (into the run with ``--run``);
    ``multilabel_splits``: the data is a multi-label CSV, judged label by label."""
    import sys

    from headstart.core.preprocessing import Preprocessing
    from headstart.core.runtime import make_runtime  # torch: only for --labels
    from headstart.data.rundir import RunDir
    from headstart.data.sources import discover

    if not any(report.counts["train"].values()) or any(i.kind == "unusable" for i in report.issues):
        raise UsageError(f"{args.data} cannot be used as it is (see the findings above), so its labels were not "
                         "checked; fix the data first.")
    multilabel = multilabel_splits is not None
    model, size, out = args.model, args.image_size, Path(args.labels_out)
    if args.run:
        run = RunDir(args.run).require_model()
        config = run.config()
        model, size, out = config["model"], Preprocessing.of(config["preprocessing"]).crop, run.path
    bad = {p for p, _ in report.bad_files()}
    splits = multilabel_splits or discover(args.data, val_fraction=args.val_fraction, seed=args.seed, check=False)
    for name in ("train", "val", "test"):
        setattr(splits, name, [s for s in getattr(splits, name) if s[0] not in bad])
    conflicts = [(i.files[0], i.files[1]) for i in report.issues if i.kind == "label-conflict"]
    if multilabel:
        from headstart.curation.label_issues_multilabel import find_multilabel_issues as find_label_issues
        from headstart.curation.label_issues_multilabel import write_csv, write_page
    else:
        from headstart.curation.label_issues import find_label_issues, write_csv, write_page
    cut = {} if args.max_given is None else {"max_given": None if args.max_given >= 1 else args.max_given}
    found = find_label_issues(splits, make_runtime(args.device, args.precision), model, size, args.folds, args.seed,
                              conflicts=conflicts, known_hashes=report.known_hashes(), workers=args.workers, **cut)
    csv_path = write_csv(found.rows, out / RunDir.LABEL_ISSUES)
    page = write_page(found, out / RunDir.LABEL_ISSUES_PAGE, str(args.data), RunDir.LABEL_ISSUES)
    print(f"labels: {found.summary()}", file=sys.stderr if args.json else sys.stdout)
    for note in found.notes:
        print(f"labels: {note}", file=sys.stderr if args.json else sys.stdout)
    for row in found.rows[:ROWS_PER_KIND]:
        why = f"{row['detail']}, " if multilabel and row["kind"] == "confident-learning" else ""
        print(f"  {row['path']}: labelled {row['given_label']}, looks like {row['suggested_label']} "
              f"({why}quality {row['label_quality']})", file=sys.stderr if args.json else sys.stdout)
    written = f"written: {csv_path} and {page}"
    if args.run:
        from headstart.report import write_report

        written += f"; {write_report(run.path, device=args.device)} shows them"
    print(written, file=sys.stderr if args.json else sys.stdout)


def _where(root: Path, f: dict) -> str:
    """A file relative to the data, with its split and class where the path does not already say them."""
    from headstart.data.sources import SPLIT_DIRS  # PIL: not at import time, so --help stays fast

    if "path" not in f:
        return f"[{f['split']}] class {f['class']}"
    try:
        shown = Path(f["path"]).resolve().relative_to(root.resolve())
    except ValueError:
        shown = Path(f["path"])
    evident = shown.parent.name == f["class"] and set(shown.parts) & set(SPLIT_DIRS[f["split"]])
    return str(shown) if evident else f"{shown}  [{f['split']}/{f['class']}]"


def print_report(report, moved: list[dict] | None, dest: str | None) -> None:
    from headstart.cli.console import Table, console, escape  # rich: not at import time, so --help stays fast

    out = console()
    counts = Table(title=f"{report.data}: {report.files} files, {report.layout}")
    counts.add_column("class")
    splits = [s for s in ("train", "val", "test") if sum(report.counts[s].values())]
    for s in splits:
        counts.add_column(f"{s} (usable)", justify="right")
    for c in report.classes:
        counts.add_row(escape(c), *(str(report.counts[s][c]) for s in splits))
    out.print(counts)

    if report.issues:
        table = Table(title="findings")
        for col in ("severity", "kind", "file(s)", "detail"):
            table.add_column(col)
        for kind in dict.fromkeys(i.kind for i in report.issues):  # in report order (check's KINDS)
            found = [i for i in report.issues if i.kind == kind]
            for issue in found[:ROWS_PER_KIND]:
                style = STYLES[issue.severity]
                where = "\n".join(escape(_where(report.root, f)) for f in issue.files) or "(dataset)"
                table.add_row(f"[{style}]{issue.severity}", kind, where, escape(issue.message))
            if len(found) > ROWS_PER_KIND:
                table.add_row("", kind, f"... and {len(found) - ROWS_PER_KIND} more (--json lists all)", "")
        out.print(table)

    if moved is not None:
        out.print(f"moved {len(moved)} unusable file(s) to {escape(str(dest))} (listed in quarantine.json)")
    n_bad = len(report.bad_files())
    verdict = {
        "ok": "[green]ok[/]: nothing to fix",
        "warnings": "[yellow]warnings[/]: usable as it is; look at the findings above"
                    + (" (images in more than one split inflate the validation and test scores)"
                       if any(i.kind == "leak" for i in report.issues) else ""),
        "problems": f"[red]problems[/]: {n_bad} file(s) cannot be used"
                    + (f" ({len(moved)} moved out)" if moved is not None
                       else "; train will skip them (or move them: --quarantine DIR)")
                    + ("; training would refuse this data"
                       if any(i.kind == "unusable" for i in report.issues) else ""),
    }[report.verdict]
    out.print(f"verdict: {verdict}")
