"""headstart train DATA --out RUN"""

from __future__ import annotations

import argparse
import json

from headstart.cli import options
from headstart.core.choices import BALANCE, BN_POLICIES, CHOICE_PRESETS, HEADS
from headstart.core.errors import UsageError
from headstart.core.progress import process_started
from headstart.training.config import TrainConfig
from headstart.training.strategy import STRATEGIES

d = TrainConfig.default  # one source of defaults: the config's

EXAMPLE = """examples:
  headstart train photos/ --out runs/photos                # auto picks the strategy from the data
  headstart train photos/ --out runs/ft --strategy fine-tune --epochs 5
  headstart train --resume runs/ft                         # continue after a crash or Ctrl-C"""


def add_parser(sub):
    p = sub.add_parser("train", help="train a classifier on a folder of labelled images",
                       description="Train a classifier from a pretrained backbone. DATA is a folder of class "
                                   "subfolders (optionally inside train/, val/, test/), or a CSV with path,label.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", nargs="?", help="folder of class subfolders, or a CSV manifest (path,label[,split])")
    p.add_argument("--out", help="run directory to create (outside the data folder)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")
    _add_model_and_schedule(p)
    options.add_hardware(p, precision=True, defaults=d,
                         workers_help="image decoding processes (default: none on 2 cores, else half the cores)")
    _add_outputs(p)
    _add_held_out(p)
    _add_recipes(p)
    return p


def _add_model_and_schedule(p) -> None:
    """The backbone, the strategy and its schedule, and the images it sees."""
    options.add_model(p, f"backbone name (default {d('model')}; see `headstart models`; any timm model as "
                         "timm:<name>)", default=d("model"))
    p.add_argument("--strategy", default=d("strategy"), choices=["auto", *STRATEGIES],
                   help="auto (default): chosen from the number of labelled images and classes, the choice and "
                        "why recorded in config.yaml; " + "; ".join(f"{k}: {v}" for k, v in STRATEGIES.items()))
    p.add_argument("--epochs", type=int, default=d("epochs"),
                   help="epochs of the main phase (default: auto's choice, or 10)")
    p.add_argument("--lr", type=float, default=d("lr"),
                   help="head learning rate (default: the strategy's, 1e-3; pretrained layers get 10x less)")
    options.add_image_size(p, "input size in pixels (default: the backbone's, e.g. 224)", default=d("image_size"))
    p.add_argument("--choose", choices=CHOICE_PRESETS, default=d("choose"),
                   help="choose the backbone and image size on the train + validation images (cross-validated "
                        "linear probes on cached features): fast (Lite0 at 128 and 224 px), balanced (+ Lite1 240, "
                        "Lite2 260) or best (+ larger sizes and any backbone whose weights are already here); the "
                        "evidence goes to RUN/backbone_choice.json. A multi-label CSV is scored by binary "
                        "cross-entropy per label, mAP beside it")
    p.add_argument("--budget", default=d("budget"),
                   help="a time limit for the whole command, e.g. 90s, 10m, 1h, planned from speeds measured on "
                        "this machine: --choose's candidates are scored cheapest first (those that would not fit "
                        "are skipped), and with --strategy auto the rest fine-tunes the backbone for the epochs "
                        "that fit; validation decides whether the fine-tuned weights or the probe ship. A budget "
                        "too short is refused before training starts")
    options.add_batch_size(p, d("batch_size"), help="images per training step (default %(default)s)")
    options.add_weights(p, "pretrained weights file (.safetensors/.pth/.pt state dict) instead of the zoo's",
                        default=d("weights"))
    options.add_seed(p, "seeds split, shuffling and augmentation (default 0)", default=d("seed"))
    options.add_augment(p, "training augmentation: none, light (random crop and flip; default) or strong",
                        default=d("augment"))
    p.add_argument("--patience", type=int, default=d("patience"),
                   help=f"early stopping: epochs without a better validation loss (default {d('patience')}; 0: never)")
    options.add_val_fraction(p, f"share of each class held out when there is no val/ folder (default "
                                f"{d('val_fraction')})", default=d("val_fraction"))
    options.add_label_delimiter(p, default=d("label_delimiter"))
    p.add_argument("--threshold", type=float, default=d("threshold"), metavar="T",
                   help="multi-label CSV: give a label when its score reaches T (e.g. 0.5) instead of each label's "
                        "F1-optimal threshold on the validation images")


def _add_outputs(p) -> None:
    """What the run writes besides its model, and what the command prints."""
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write RUN/report.html at the end (`headstart report RUN` writes it any time)")
    p.add_argument("--no-heatmaps", dest="heatmaps", action="store_false",
                   help="the report without Grad-CAM heat maps beside its top losses (they take a few seconds)")
    p.add_argument("--tensorboard", action="store_true",
                   help="log losses, accuracies, learning rates and the test confusion matrix to RUN/tensorboard "
                        "(pip install 'headstart[tensorboard]'; then: tensorboard --logdir RUN/tensorboard)")
    options.add_json(p, "print the run's summary as one JSON object on stdout (messages stay on stderr)")
    options.add_overwrite(p, "replace a previous run in --out (its files are removed)")


def _add_held_out(p) -> None:
    """Which images are left out (too large, or copies of a training image in validation and test), and whether
    the validation images end up in the shipped head (a refit)."""
    options.add_max_pixels(p, "leave out images with more pixels (default 89 million, as `headstart check`)",
                           default=d("max_pixels"))
    p.add_argument("--keep-leaked", action="store_true",
                   help="keep validation/test images that duplicate a training image (left out by default: they "
                        "inflate the selection and the reported accuracy)")
    options.add_duplicates(p, default=d("duplicates"))
    p.add_argument("--no-refit", dest="refit", action="store_false",
                   help="do not refit a head fitted on features on train + validation images after validation has "
                        "chosen its settings (refitting is the default: the shipped head sees every label)")


def _add_recipes(p) -> None:
    """The regularisers and options of the pretrained strategies (README: Recipes), and how a head is fitted on
    cached features."""
    r = p.add_argument_group("recipes", "regularisers and options of the pretrained strategies (README: Recipes)")
    r.add_argument("--lr-decay", type=float, default=d("lr_decay"), metavar="D",
                   help="layer-wise learning rates: group i gets lr * D^(G-i), G the head (ULMFiT; e.g. 0.75)")
    r.add_argument("--l2sp", type=float, default=d("l2sp"), metavar="ALPHA",
                   help="L2-SP: pull the backbone towards its pretrained weights by ALPHA/2 ||w - w0||^2 instead of "
                        "weight decay (Li et al. 2018; e.g. 0.01)")
    r.add_argument("--bn", default=d("bn"), choices=BN_POLICIES,
                   help="BatchNorm statistics: frozen (default), train, or adabn (recomputed on the training images "
                        "alone before training, then frozen)")
    r.add_argument("--unfreeze-every", type=int, default=d("unfreeze_every"), metavar="N",
                   help="gradual: epochs between unfreezing one more layer group (default 1)")
    r.add_argument("--label-smoothing", type=float, default=d("label_smoothing"), metavar="EPS",
                   help="label smoothing of the training loss (e.g. 0.1; default off)")
    r.add_argument("--mixup", type=float, default=d("mixup"), metavar="ALPHA",
                   help="MixUp on each batch (e.g. 0.2; default off)")
    r.add_argument("--cutmix", type=float, default=d("cutmix"), metavar="ALPHA",
                   help="CutMix on each batch (e.g. 1.0; default off)")
    r.add_argument("--balance", default=d("balance"), choices=BALANCE,
                   help="imbalanced classes: weights (class-weighted loss) or sampler (draw classes equally often)")
    p.add_argument("--head", default=d("head"), choices=list(HEADS),
                   help="how the head is fitted on cached features (linear-probe, and fine-tune's first phase): "
                        + "; ".join(f"{k}: {v}" for k, v in HEADS.items()))


def run(args) -> int:
    cfg = _config(args)  # a wrong option fails before torch is even loaded
    from headstart.training.train import train  # torch: loaded once the options are right, and never for --help

    summary = train(cfg, resume=bool(args.resume), started=process_started())
    if not summary:  # another rank under torchrun: rank 0 reports
        return 0
    if args.json:
        print(json.dumps(_without_diagrams(summary), indent=2))
    else:
        _report(summary, cfg.out)
    return 0


def _config(args) -> TrainConfig:
    """The run's settings, checked: those of the run to resume, or the command line's."""
    if not args.resume:
        if not args.data or not args.out:
            raise UsageError("train needs DATA and --out (e.g. `headstart train images/ --out runs/a`), or "
                             "--resume RUN.")
        return TrainConfig.from_dict(vars(args)).check()
    from headstart.data.rundir import RunDir  # PIL and yaml: not at import time, so --help stays fast

    run_dir = RunDir(args.resume)
    if not run_dir.is_run():
        raise UsageError(f"{args.resume} is not a headstart run directory (no {run_dir.CONFIG}); pass the --out "
                         "folder of the run to continue.")
    cfg = TrainConfig.from_dict(run_dir.config())
    cfg.out = args.resume
    return cfg.check()


def _without_diagrams(summary: dict) -> dict:
    """The summary as printed: reliability diagrams' bins stay in summary.json."""
    calibration = {split: {k: v for k, v in c.items() if not k.startswith("reliability")}
                   for split, c in summary.get("calibration", {}).items()}
    return {**summary, "calibration": calibration} if calibration else summary


def _report(summary: dict, out: str) -> None:
    """What a user wants at the end: the result, where the model is, and the next commands (the full figures are
    in summary.json)."""
    from headstart.cli.console import console  # rich: not at import time, so --help stays fast

    lines = [f"trained {summary['model']} with {summary['strategy']} (phase '{summary['best_phase']}' shipped): "
             + (f"validation accuracy {summary['val_acc']:.4f}" if "val_acc" in summary else
                f"validation mAP {summary['val_map']:.4f}, exact match {summary['val_exact_match']:.4f}")]
    if "test_acc" in summary:
        lines.append(f"test accuracy {summary['test_acc']:.4f} (balanced {summary['test_balanced_acc']:.4f})")
    if "test_map" in summary:  # a multi-label run
        lines.append(f"test mAP {summary['test_map']:.4f} (micro {summary['test_map_micro']:.4f}), exact match "
                     f"{summary['test_exact_match']:.4f}, Hamming loss {summary['test_hamming_loss']:.4f}")
    lines += [f"took {summary['seconds']:.0f} s; the model and its record are in {out}/ (summary.json, "
              "test_metrics.json, best.safetensors)",
              "next:",
              f"  headstart predict {out} IMAGES...          # label new images",
              f"  headstart evaluate {out} LABELLED_FOLDER   # score it on other labelled images"]
    console(stderr=True).print("\n".join(lines), highlight=False)
