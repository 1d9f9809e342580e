"""fastai's way on the images of ``linear_probe_speed.py``: vision_learner, same backbone and weights, frozen.

EfficientNet-Lite0 with headstart's offline ImageNet weights as the body; fastai's default head (concat pooling,
BatchNorm, dropout, two linear layers); ``learn.freeze()`` (vision_learner's default for a pretrained body: body
frozen except its BatchNorm layers, fastai's ``train_bn``); ``fit_one_cycle(epochs)``, or with ``--fine-tune``
fastai's ``fine_tune(epochs)`` (one frozen epoch, then ``epochs`` with the whole body unfrozen). Without a ``val/``
folder (or an empty one), ``--valid-pct`` of ``train/`` is held out, as headstart holds out 20%. Then predicts ``test/``. Prints one
JSON line last, with the seconds of the training and the training images per second (images x epochs / seconds).

fastai is never a dependency of headstart: run this with the python of a separate venv that reuses headstart's
torch 2.14.1 instead of downloading another (fastai 2.8.12 installs against it):

    python -m venv /tmp/fastai-venv
    echo /work/main/.venv/lib/python3.11/site-packages \\
        > /tmp/fastai-venv/lib/python3.11/site-packages/headstart-venv.pth
    printf 'torch==2.14.1\\ntorchvision==0.29.1\\n' > /tmp/fastai-constraints.txt
    /tmp/fastai-venv/bin/pip install fastai -c /tmp/fastai-constraints.txt
    /tmp/fastai-venv/bin/python benchmarks/fastai_baseline.py --data /tmp/lp-bench/fashion-mnist --image-size 64

(``linear_probe_speed.py --fastai-python /tmp/fastai-venv/bin/python`` runs it and prints it side by side.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # headstart from this checkout, for the weights

import fastai
import torch
from fastai.vision.all import (
    ImageDataLoaders,
    Normalize,
    Resize,
    accuracy,
    get_image_files,
    parent_label,
    vision_learner,
)
from torch import nn

from headstart.core.runtime import make_runtime
from headstart.zoo import create_backbone


class _FeatureMaps(nn.Module):
    """The timm backbone up to its last feature maps; fastai adds its own pooling and head."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return self.backbone.forward_features(x)


def efficientnet_lite0(pretrained: bool = True, **_):
    backbone, _, _ = create_backbone("efficientnet_lite0", pretrained=pretrained)
    return nn.Sequential(_FeatureMaps(backbone), nn.AdaptiveAvgPool2d(1))  # fastai cuts at the pooling layer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="folder with train/, val/, test/ (made by linear_probe_speed.py)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--valid-pct", type=float, default=0.2, help="held out of train/ when there is no val/ folder")
    ap.add_argument("--fine-tune", action="store_true", help="fine_tune(epochs) instead of frozen fit_one_cycle")
    args = ap.parse_args()

    make_runtime("cpu", "fp32")  # the same thread setting as headstart
    data = Path(args.data)
    loading = dict(item_tfms=Resize(args.image_size), batch_tfms=Normalize.from_stats([0.5] * 3, [0.5] * 3),
                   bs=args.batch_size, num_workers=args.workers, device=torch.device("cpu"))
    if (data / "val").is_dir() and any(p.is_file() for p in (data / "val").rglob("*")):
        dls = ImageDataLoaders.from_folder(data, train="train", valid="val", **loading)
    else:  # hold out a share of train/ only (from_folder's valid_pct would split every file under data/, test too)
        dls = ImageDataLoaders.from_path_func(data, get_image_files(data / "train"), parent_label,
                                              valid_pct=args.valid_pct, seed=0, **loading)
    learn = vision_learner(dls, efficientnet_lite0, metrics=accuracy, pretrained=True)
    # fastai's mixed precision autocasts for CUDA only, so on CPU it trains in fp32. Channels-last weights (the
    # first convolution then gives channels-last activations); fastai 2.8.12's to_channelslast(use_amp=False) left
    # every validation pass empty (loss None) on CPU.
    learn.model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    with learn.no_bar():  # the epoch table still prints; the JSON line comes last
        if args.fine_tune:
            learn.fine_tune(args.epochs, freeze_epochs=1)
        else:
            learn.fit_one_cycle(args.epochs)
    seconds = time.perf_counter() - t0
    epochs = args.epochs + (1 if args.fine_tune else 0)
    with learn.no_bar():
        val_preds, val_targets = learn.get_preds(dl=dls.valid)
        preds, targets = learn.get_preds(dl=dls.test_dl(get_image_files(data / "test"), with_labels=True))
    val_acc = (val_preds.argmax(1) == val_targets).float().mean().item()
    test_acc = (preds.argmax(1) == targets).float().mean().item()
    print(json.dumps({"fastai": fastai.__version__, "seconds": seconds, "val_acc": float(val_acc),
                      "test_acc": test_acc, "epochs": epochs, "image_size": args.image_size,
                      "mode": "fine_tune" if args.fine_tune else "fit_one_cycle (frozen)",
                      "train_images": len(dls.train_ds), "train_images_per_second": len(dls.train_ds) * epochs / seconds,
                      "frozen_groups": len(learn.opt.param_groups) - 1 if learn.opt else None}))


if __name__ == "__main__":
    main()
