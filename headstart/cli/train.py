"""headstart train DATA --out RUN"""

from __future__ import annotations

import json

from headstart.data.balance import BALANCE
from headstart.data.transforms import AUGMENTATIONS
from headstart.model import BN_POLICIES
from headstart.features.heads import HEADS
from headstart.strategy import STRATEGIES
from headstart.zoo import DEFAULT_MODEL


def add_parser(sub):
    p = sub.add_parser("train", help="train a classifier on a folder of labelled images",
                       description="Train a classifier from a pretrained backbone. DATA is a folder of class "
                                   "subfolders (optionally inside train/, val/, test/), or a CSV with path,label.")
    p.add_argument("data", nargs="?", help="folder of class subfolders, or a CSV manifest (path,label[,split])")
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"backbone name (default {DEFAULT_MODEL}; see `headstart "
                                                          "models`; any timm model as timm:<name>)")
    p.add_argument("--strategy", default="auto", choices=["auto", *STRATEGIES],
                   help="auto (default): chosen from the number of labelled images and classes, the choice and "
                        "why recorded in config.yaml; " + "; ".join(f"{k}: {v}" for k, v in STRATEGIES.items()))
    p.add_argument("--epochs", type=int, default=None, help="epochs of the main phase (default: auto's choice, or 10)")
    p.add_argument("--lr", type=float, default=None, help="head learning rate (pretrained layers get 10x less)")
    p.add_argument("--image-size", type=int, default=None, help="input size (default: the backbone's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weights", default=None, help="pretrained weights file (.safetensors/.pth/.pt state dict)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--augment", default="light", choices=AUGMENTATIONS)
    p.add_argument("--patience", type=int, default=3, help="early stopping: epochs without a better val loss")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share held out when there is no val/ folder")
    p.add_argument("--workers", type=int, default=None, help="image decoding processes (default: half the cores)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    p.add_argument("--keep-leaked", action="store_true",
                   help="keep validation/test images that duplicate a training image (left out by default: they "
                        "inflate the selection and the reported accuracy)")
    p.add_argument("--no-refit", dest="refit", action="store_false",
                   help="do not refit a head fitted on features on train + validation images after validation has "
                        "chosen its settings (refitting is the default: the shipped head sees every label)")
    r = p.add_argument_group("recipes", "regularisers and options of the pretrained strategies (README: Recipes)")
    r.add_argument("--lr-decay", type=float, default=None, metavar="D",
                   help="layer-wise learning rates: group i gets lr * D^(G-i), G the head (ULMFiT; e.g. 0.75)")
    r.add_argument("--l2sp", type=float, default=0.0, metavar="ALPHA",
                   help="L2-SP: pull the backbone towards its pretrained weights by ALPHA/2 ||w - w0||^2 instead of "
                        "weight decay (Li et al. 2018; e.g. 0.01)")
    r.add_argument("--bn", default=None, choices=BN_POLICIES,
                   help="BatchNorm statistics: frozen (default), train, or adabn (recomputed on the train and val "
                        "images before training, then frozen)")
    r.add_argument("--unfreeze-every", type=int, default=1, metavar="N",
                   help="gradual: epochs between unfreezing one more layer group")
    r.add_argument("--label-smoothing", type=float, default=0.0, metavar="EPS", help="e.g. 0.1")
    r.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA", help="MixUp on each batch (e.g. 0.2)")
    r.add_argument("--cutmix", type=float, default=0.0, metavar="ALPHA", help="CutMix on each batch (e.g. 1.0)")
    r.add_argument("--balance", default="none", choices=BALANCE,
                   help="imbalanced classes: weights (class-weighted loss) or sampler (draw classes equally often)")
    p.add_argument("--head", default="logreg", choices=list(HEADS),
                   help="how the head is fitted on cached features (linear-probe, and fine-tune's first phase): "
                        + "; ".join(f"{k}: {v}" for k, v in HEADS.items()))
    return p


def run(args) -> int:
    from headstart.train import TrainConfig, train

    if args.resume:
        import yaml
        from pathlib import Path

        config_path = Path(args.resume) / "config.yaml"
        if not config_path.is_file():
            raise FileNotFoundError(f"{args.resume} is not a headstart run directory (no config.yaml).")
        saved = yaml.safe_load(config_path.read_text())
        cfg = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
        cfg.out = args.resume
        summary = train(cfg, resume=True)
    else:
        if not args.data or not args.out:
            raise ValueError("train needs DATA and --out (e.g. `headstart train images/ --out runs/a`), or "
                             "--resume RUN.")
        cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__})
        summary = train(cfg)
    print(json.dumps(_without_diagrams(summary), indent=2))
    return 0


def _without_diagrams(summary: dict) -> dict:
    """The summary as printed: reliability diagrams' bins stay in summary.json."""
    calibration = {split: {k: v for k, v in c.items() if not k.startswith("reliability")}
                   for split, c in summary.get("calibration", {}).items()}
    return {**summary, "calibration": calibration} if calibration else summary
