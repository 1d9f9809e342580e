"""headstart lr-find RUN_OR_DATA [--strategy S] [--out DIR]: the learning-rate range test."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from headstart.core.choices import AUGMENTATIONS, DEFAULT_MODEL
from headstart.core.errors import PathNotFoundError
from headstart.training.strategy import STRATEGIES


def add_parser(sub):
    p = sub.add_parser("lr-find", help="learning-rate range test: sweep the rate, plot the loss, suggest --lr",
                       description="Trains for a few hundred steps with an exponentially growing learning rate "
                                   "(Smith 2017; fastai's lr_find), stops when the loss diverges, and suggests the "
                                   "--lr at which the swept phase's head learns at a tenth of the rate at the loss "
                                   "minimum (for fine-tune, whose phase runs at half of --lr, twice that tenth). "
                                   "The weights are not changed. "
                                   "RUN_OR_DATA is a run directory (its weights and training images) or a folder "
                                   "of labelled images (a fresh pretrained model).",
                       epilog="examples:\n  headstart lr-find photos/ --strategy full\n  headstart lr-find runs/photos",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="RUN_OR_DATA", help="a run directory, or a folder of labelled images")
    p.add_argument("--strategy", default=None, choices=[s for s in STRATEGIES if s != "linear-probe"],
                   help="the strategy whose training phase is swept (default: the run's, or fine-tune); a head "
                        "fitted on frozen features first is fitted first here too")
    p.add_argument("--out", default=None, help="folder for lr_find.json and lr_find.png (default: the run, or "
                                               "runs/lr-find-<data folder name>)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="backbone, for DATA")
    p.add_argument("--weights", default=None, help="pretrained weights file, for DATA")
    p.add_argument("--image-size", type=int, default=None, help="input size, for DATA (default: the backbone's)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps of the sweep")
    p.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate of the sweep (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="last learning rate of the sweep (default 10)")
    p.add_argument("--augment", default="light", choices=AUGMENTATIONS, help="training augmentation (default light)")
    p.add_argument("--workers", type=int, default=None, help="image decoding processes (default: as train)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sweep's batches (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    return p


def run(args) -> int:

    from headstart.core.io import write_json
    from headstart.core.runtime import make_runtime, seed_everything
    from headstart.data.check import scan
    from headstart.data.dataset import ImageFiles, make_loader
    from headstart.data.rundir import RunDir, refuse_run_files
    from headstart.data.sources import discover
    from headstart.data.transforms import eval_transform, train_transform
    from headstart.predict.run import load_run
    from headstart.training.lr_finder import lr_find, plot_lr_find
    from headstart.training.strategy import make_strategy
    from headstart.zoo.model import build_model

    seed_everything(args.seed)
    source = Path(args.source)
    is_run = RunDir(source).is_run()
    out = Path(args.out) if args.out else (source if is_run else Path("runs") / f"lr-find-{source.resolve().name}")
    refuse_run_files([out / RunDir.LR_FIND, out / RunDir.LR_FIND_PLOT], own=source if is_run else None,
                     allowed=(RunDir.LR_FIND, RunDir.LR_FIND_PLOT))  # another run's curve is that run's record
    if is_run:
        loaded = load_run(source, device=args.device)
        model, runtime, pre = loaded.model, loaded.runtime, loaded.preprocessing
        config, splits = loaded.config, RunDir(source).split()  # old relative paths found from any folder
        name = args.strategy or config.get("strategy_resolved") or config.get("strategy")
        if name not in STRATEGIES or name == "linear-probe":
            name = "fine-tune"
    else:
        if not source.exists():
            raise PathNotFoundError(f"{source} does not exist; pass a run directory or a folder of labelled images.")
        runtime = make_runtime(args.device)
        splits = discover(str(source), val_fraction=0.2, seed=args.seed)
        name = args.strategy or "fine-tune"
        model = build_model(args.model, len(splits.classes), pretrained=name != "scratch", weights_file=args.weights)
        pre = model.spec.preprocessing(args.image_size)
        runtime.prepare(model)
    train, bad = scan(splits.train)
    for path, reason in bad:
        print(f"skipping {path}: {reason}", file=sys.stderr)
    strategy = make_strategy(name, groups=len(model.group_names))
    sgd_index = next(i for i, p in enumerate(strategy.phases) if p.fit == "sgd")
    if not is_run and sgd_index > 0:
        # The swept phase starts from a head fitted on frozen features, as in training.
        from headstart.training.probe import fit_linear_probe

        def eval_loader(samples):
            return make_loader(ImageFiles(samples, eval_transform(pre)), args.batch_size * 2, shuffle=False,
                               workers=args.workers)

        fit_linear_probe(model, eval_loader(train), eval_loader(scan(splits.val)[0]), runtime, preprocessing=pre)
    phase = strategy.phases[sgd_index]
    train_loader = make_loader(ImageFiles(train, train_transform(pre, args.augment)), args.batch_size, shuffle=True,
                               seed=args.seed, workers=args.workers, drop_last=len(train) > args.batch_size)
    result = lr_find(model, train_loader, runtime, phase, start_lr=args.start_lr, end_lr=args.end_lr,
                     steps=args.steps)
    # The swept rate is the phase's head rate; --lr sets it through the strategy's ratio (fine-tune: lr / 2).
    per_cli_lr = make_strategy(name, lr=1.0).phases[sgd_index].lr
    out.mkdir(parents=True, exist_ok=True)
    record = {"source": str(source), "strategy": name, "phase": phase.name, "suggested_cli_lr":
              result.suggested_lr / per_cli_lr, **result.to_dict()}
    write_json(out / RunDir.LR_FIND, record)
    plot_lr_find(result, out / RunDir.LR_FIND_PLOT, title=f"lr-find: {name}, phase '{phase.name}'")
    print(f"suggested: --strategy {name} --lr {record['suggested_cli_lr']:.2g}, which trains the head of phase "
          f"'{phase.name}' at {result.suggested_lr:.2g} (--lr x {per_cli_lr:g}): a tenth of the rate at the loss "
          f"minimum, {result.min_loss_lr:.2g} (centred moving average); steepest descent at {result.steepest_lr:.2g}"
          f"{'; the loss diverged, the sweep stopped early' if result.stopped_early else ''}")
    print(f"curve: {out / RunDir.LR_FIND_PLOT}, numbers: {out / RunDir.LR_FIND}")
    return 0
