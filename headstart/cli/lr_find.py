"""headstart lr-find RUN_OR_DATA [--strategy S] [--out DIR]: the learning-rate range test."""

from __future__ import annotations

import argparse

from headstart.cli import options
from headstart.training.strategy import STRATEGIES


def add_parser(sub):
    p = sub.add_parser("lr-find", help="learning-rate range test: sweep the rate, plot the loss, suggest --lr",
                       description="Trains for a few hundred steps with an exponentially growing learning rate "
                                   "(Smith 2017; fastai's lr_find), stops when the loss diverges, and suggests the "
                                   "--lr at which the swept phase's head learns at a tenth of the rate at the loss "
                                   "minimum (for fine-tune, whose phase runs at half of --lr, twice that tenth). "
                                   "The weights are not changed. "
                                   "RUN_OR_DATA is a run directory (its weights and training images) or labelled "
                                   "images: a folder or a CSV (a fresh pretrained model). Multi-label data (a "
                                   "multi-label CSV, or a run trained on one) is swept on its training loss, binary "
                                   "cross-entropy per label with the positive weights train gives rare labels.",
                       epilog="examples:\n  headstart lr-find photos/ --strategy full\n"
                              "  headstart lr-find runs/photos\n"
                              "  headstart lr-find tags.csv   # multi-label: path,labels with labels like a;b",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="RUN_OR_DATA", help="a run directory, or labelled images (a folder or a CSV, "
                                                         "single- or multi-label)")
    p.add_argument("--strategy", default=None, choices=[s for s in STRATEGIES if s != "linear-probe"],
                   help="the strategy whose training phase is swept (default: the run's, or fine-tune); a head "
                        "fitted on frozen features first is fitted first here too")
    p.add_argument("--out", default=None, help="folder for lr_find.json and lr_find.png (default: the run, or "
                                               "runs/lr-find-<data folder or CSV name>)")
    options.add_model(p, "backbone, for DATA")
    options.add_weights(p, "pretrained weights file, for DATA")
    options.add_image_size(p, "input size, for DATA (default: the backbone's)")
    options.add_batch_size(p, 32, help="images per step (default %(default)s)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps of the sweep")
    p.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate of the sweep (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last learning rate of the sweep (default 10)")
    options.add_augment(p, "training augmentation (default light)")
    options.add_workers(p)
    options.add_seed(p, "seeds the sweep's batches (default 0)")
    options.add_device(p, help="auto (default), cpu, cuda or cuda:N")
    return p


def run(args) -> int:
    from headstart.training.lr_finder import range_test  # torch: not at import time, so --help stays fast

    found = range_test(args.source, args.out, strategy=args.strategy, model=args.model, weights=args.weights,
                       image_size=args.image_size, batch_size=args.batch_size, steps=args.steps,
                       start_lr=args.start_lr, end_lr=args.end_lr, augment=args.augment, workers=args.workers,
                       seed=args.seed, device=args.device)
    record, result = found.record, found.result
    print(f"suggested: --strategy {record['strategy']} --lr {record['suggested_cli_lr']:.2g}, which trains the head "
          f"of phase '{record['phase']}' at {result.suggested_lr:.2g} (--lr x {found.lr_scale:g}): a tenth of the "
          f"rate at the loss minimum, {result.min_loss_lr:.2g} (centred moving average); steepest descent at "
          f"{result.steepest_lr:.2g}{'; the loss diverged, the sweep stopped early' if result.stopped_early else ''}")
    if record.get("task"):
        print(f"multi-label: swept on the training loss, {record['loss']}")
    print(f"curve: {found.curve}, numbers: {found.numbers}")
    return 0
