"""headstart train DATA --out RUN"""

from __future__ import annotations

import json

from headstart.data.transforms import AUGMENTATIONS
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
    p.add_argument("--strategy", default="fine-tune", choices=list(STRATEGIES),
                   help="; ".join(f"{k}: {v}" for k, v in STRATEGIES.items()))
    p.add_argument("--epochs", type=int, default=10)
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
    print(json.dumps(summary, indent=2))
    return 0
