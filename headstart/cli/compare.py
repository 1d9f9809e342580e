"""headstart compare DATA --out DIR"""

from __future__ import annotations

import argparse

from headstart.cli import options
from headstart.core.errors import UsageError
from headstart.data.multilabel import is_multilabel_csv
from headstart.data.rundir import COMPARE_MEASURES
from headstart.training.config import CompareConfig
from headstart.training.strategy import STRATEGIES

_DEFAULTS = CompareConfig(data="", out="")  # one source of defaults: the config's


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x]
    except ValueError:
        raise UsageError(f"expected comma-separated whole numbers such as 5,10,25, got '{text}'.") from None


def _budgets(text: str) -> list[int]:
    values = _ints(text)
    if not values or any(v < 1 for v in values):
        raise UsageError(f"expected comma-separated numbers of training images such as 50,100,250, got '{text}'.")
    return values


def _floats(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x]
    except ValueError:
        raise UsageError(f"expected comma-separated numbers such as 1e-3,3e-3, got '{text}'.") from None
    if not values or any(v <= 0 for v in values):
        raise UsageError(f"expected positive learning rates such as 1e-3,3e-3, got '{text}'.")
    return values


def _extensions(n: int) -> int:
    if n < 0:
        raise UsageError(f"--lr-extensions must be 0 (the grid as given) or more, e.g. 3, got {n}.")
    return n


def _csv(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def add_parser(sub):
    p = sub.add_parser("compare", help="measure transfer-learning strategies against training from scratch",
                       description="Every strategy x labels-per-class x seed on the same images; writes "
                                   "compare.json, compare.md and plots into --out. Scratch chooses its learning rate "
                                   "on the validation images (one full run per rate in --scratch-lrs). On a "
                                   "multi-label CSV the budget is a number of labelled training images "
                                   "(--train-images) and the figures are test mAP (macro) and exact match.",
                       epilog="examples:\n  headstart compare photos/ --out runs/compare\n"
                              "  headstart compare photos/ --out runs/curve --labels-per-class 5,10,25 --seeds 3\n"
                              "  headstart compare labels.csv --out runs/ml --train-images 100,250,500  "
                              "# multi-label CSV",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return p


def add_arguments(p, labels: str = _csv(_DEFAULTS.labels_per_class), seeds: int = _DEFAULTS.seeds,
                  strategies: str = ",".join(_DEFAULTS.strategies)):
    d = _DEFAULTS
    p.add_argument("data", help="folder of class subfolders (a test/ split is used as the test set if present), a CSV "
                                "manifest, or a multi-label CSV (path,labels with labels separated by ';', or one "
                                "0/1 column per label; a split column's test rows are the test set)")
    p.add_argument("--out", required=True, help="folder for the runs, compare.json, compare.md and the plots")
    options.add_model(p, f"pretrained backbone of every strategy but scratch (default {d.model})", default=d.model)
    p.add_argument("--strategies", default=strategies, help=f"comma-separated (default {strategies})")
    p.add_argument("--labels-per-class", default=None, help=f"training labels per class, comma-separated "
                                                             f"(default {labels}; single-label data)")
    p.set_defaults(default_labels_per_class=labels)  # --labels-per-class's: None there tells what was typed
    p.add_argument("--train-images", default=None,
                   help=f"multi-label CSV only, instead of --labels-per-class (an image has several labels): labelled "
                        f"training images per run, comma-separated (default {_csv(d.train_images)}). Drawn per seed "
                        "by iterative stratification so that every label keeps positives where the number allows; "
                        "every strategy trains on the same images. Budgets larger than the pool are left out")
    p.add_argument("--seeds", type=int, default=seeds, help=f"repeats with other draws of the labels (default {seeds})")
    p.add_argument("--val-per-class", type=int, default=d.val_per_class,
                   help=f"validation images per class, not counted as labels (default {d.val_per_class})")
    p.add_argument("--val-images", type=int, default=d.val_images,
                   help="multi-label CSV only: validation images per seed, drawn like the training ones and not "
                        "counted in the budget (default: --val-per-class x the number of labels)")
    p.add_argument("--max-test", type=int, default=d.max_test, help="cap the number of test images")
    p.add_argument("--epochs", type=int, default=d.epochs, help="maximum epochs of the pretrained strategies")
    p.add_argument("--patience", type=int, default=d.patience,
                   help="early stopping of the pretrained strategies: epochs without a lower validation loss")
    options.add_image_size(p, "input size (default: the backbone's)", default=d.image_size)
    p.add_argument("--budget-minutes", type=float, default=d.budget_minutes,
                   help="start no new run after this many minutes (default: no limit)")
    options.add_batch_size(p, d.batch_size, help="default %(default)s")
    p.add_argument("--lrs", default=None,
                   help="learning-rate grid of the pretrained strategies that train by gradient descent, e.g. "
                        "3e-4,1e-3 (one full run each, the lowest validation loss wins; linear-probe chooses its "
                        "own C). Default: each strategy's own rate, not swept")
    p.add_argument("--lr-extensions", type=int, default=d.lr_extensions,
                   help=f"while the winner of a grid is its lowest or highest rate, run one more rate a step beyond "
                        f"that edge, at most this many times (default {d.lr_extensions}; 0: the grid as given)")
    s = p.add_argument_group("scratch", "the baseline from random weights")
    s.add_argument("--scratch-model", default=d.scratch_model,
                   help="default: resnet20 for images of 64 px or less, else --model")
    s.add_argument("--scratch-epochs", type=int, default=d.scratch_epochs, help="maximum epochs of each scratch run")
    s.add_argument("--scratch-patience", type=int, default=d.scratch_patience,
                   help=f"scratch's early-stopping patience (default {d.scratch_patience})")
    s.add_argument("--scratch-lrs", default=_csv(d.scratch_lrs),
                   help="learning rates tried, one full run each; the lowest validation loss wins (widened "
                        "past an edge that wins, see --lr-extensions)")
    s.add_argument("--scratch-image-size", type=int, default=d.scratch_image_size,
                   help="default: --image-size, so both sides see the same pixels")


def _budget_options(args) -> dict:
    """``labels_per_class`` for single-label data, ``train_images`` for a multi-label CSV; the other one refused."""
    if is_multilabel_csv(args.data):
        if args.labels_per_class is not None:
            raise UsageError(f"{args.data} is a multi-label CSV: an image has several labels, so labels per class "
                             "mean nothing; give the number of labelled training images instead, e.g. "
                             "--train-images 50,100,250.")
        return {"train_images": _budgets(args.train_images)} if args.train_images else {}
    if args.train_images is not None or args.val_images is not None:
        raise UsageError(f"--train-images and --val-images are for a multi-label CSV; {args.data} has one label per "
                         "image: give --labels-per-class and --val-per-class, e.g. --labels-per-class 5,10,25.")
    return {"labels_per_class": _ints(args.labels_per_class or args.default_labels_per_class)}


def config_from_args(args) -> CompareConfig:
    strategies = [s for s in args.strategies.split(",") if s]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise UsageError(f"unknown strategy {', '.join(unknown)}; choose from {', '.join(STRATEGIES)}.")
    if args.val_images is not None and args.val_images < 1:
        raise UsageError(f"--val-images must be 1 or more, e.g. 100, got {args.val_images}.")
    return CompareConfig(data=args.data, out=args.out, model=args.model, strategies=strategies,
                         **_budget_options(args), seeds=args.seeds, val_images=args.val_images,
                         val_per_class=args.val_per_class, max_test=args.max_test, epochs=args.epochs,
                         patience=args.patience, scratch_epochs=args.scratch_epochs,
                         scratch_patience=args.scratch_patience, scratch_lrs=_floats(args.scratch_lrs),
                         lrs=_floats(args.lrs) if args.lrs else None, lr_extensions=_extensions(args.lr_extensions),
                         scratch_model=args.scratch_model, scratch_image_size=args.scratch_image_size,
                         image_size=args.image_size, budget_minutes=args.budget_minutes, batch_size=args.batch_size)


def print_table(result: dict) -> None:
    from headstart.cli.console import Table, console  # rich: not at import time, so --help stays fast
    from headstart.training.compare import (  # torch: not at import time either
        accuracy_text,
        edge_warnings,
        figure_text,
        lr_text,
    )

    m = COMPARE_MEASURES[result.get("task")]
    table = Table(title=f"test {m.name} on {result['test_images']} held-out images"
                  + (" (mean ± std over seeds)" if any(r.get("seeds", 1) > 1 for r in result["rows"]) else ""))
    for col in (m.budget_head, "strategy", "model", "px", m.score_head, m.second_head, "wall time", "lr",
                "trainable params"):
        table.add_column(col, justify="left" if col in ("strategy", "model", "lr") else "right")
    for r in result["rows"]:
        table.add_row(str(r[m.budget]), r["strategy"], r["model"], str(r["image_size"]),
                      accuracy_text(r, "%", m.score),
                      figure_text(r, m.second, m, sign="%"), f"{r['seconds_mean']:.0f} s", lr_text(r),
                      f"{r['trainable_params']:,}")
    console().print(table)
    for warning in edge_warnings(result["runs"], m):
        console().print(f"[yellow]at the edge of the grid:[/] {warning}; a better rate may lie beyond it")


def run(args) -> int:
    from headstart.training.compare import compare  # torch: not at import time, so --help stays fast

    result = compare(config_from_args(args))
    print_table(result)
    print(f"written: {args.out}/compare.json, compare.md, {', '.join(result['figures'])}")
    return 0
