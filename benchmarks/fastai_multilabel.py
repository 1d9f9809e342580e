"""fastai's multi-label recipes on a multi-label CSV, with headstart's backbone and weights: the other side of
``benchmarks/multilabel.py``.

Two recipes (``--recipe``):

- ``default``: what the first comparison ran, fastai's defaults: ``Resize`` only, batch 64, ``fine_tune(epochs)`` at
  fastai's default learning rate (2e-3). On 161 training images that is 3 optimizer steps an epoch: it underfits.
- ``user``: what a user following fastai's multi-label lesson (fastbook chapter 6, PASCAL; the "planets" lesson)
  runs: ``item_tfms=Resize`` and ``batch_tfms=aug_transforms()`` (flips, small rotation, zoom, warp, lighting), a
  batch of ``--batch-size`` (16 by default: 10 steps an epoch on 161 images, 25 on 400), ``learn.lr_find()`` and its
  ``valley`` suggestion as ``base_lr``, then ``fine_tune(epochs, base_lr, freeze_epochs=...)``. Not
  ``RandomResizedCrop(min_scale=0.35)``: on a 2x2 mosaic such a crop drops items whose labels stay, so a user who
  looked at ``show_batch`` would keep the whole picture.

Both: a ``DataBlock`` with ``ImageBlock`` and ``MultiCategoryBlock`` (labels split on ``;``), ``vision_learner``
(fastai's head: concat pooling, BatchNorm, dropout, two linear layers; ``BCEWithLogitsLossFlat``; body frozen
except BatchNorm for the first epochs), ``accuracy_multi`` at 0.5. The body is EfficientNet-Lite0 with headstart's
offline ImageNet weights (fastai's own pretrained weights cannot download here; built by ``headstart.zoo`` exactly as
``benchmarks/fastai_baseline.py`` does, normalised with the weights' mean = std = 0.5), fp32 on the CPU.

The train/validation split is the one headstart used (``--split``: a run's ``split.json``), so both sides learn from
the same images; the test images are the CSV's ``split=test`` rows. Prints one JSON line last: test mAP (macro,
scikit-learn), exact match at fastai's 0.5 threshold, the validation figures of every epoch (the user's evidence that
the epochs were enough), the learning rate, seconds of lr_find, of the fit and of the test.

fastai is never a dependency of headstart (not in pyproject.toml): run this with the python of a separate venv that
has fastai and torch 2.14.1 (see ``benchmarks/fastai_baseline.py`` for how it was made; ``pip install fastai`` there
did not replace torch).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # headstart from this checkout, for the weights
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from fastai.vision.all import (  # noqa: E402
    Callback,
    ColReader,
    ColSplitter,
    DataBlock,
    ImageBlock,
    MultiCategoryBlock,
    Normalize,
    Recorder,
    Resize,
    accuracy_multi,
    aug_transforms,
    set_seed,
    vision_learner,
)
from fastai_baseline import efficientnet_lite0  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402


class EpochHistory(Callback):
    """Every epoch's validation figures: fine_tune's two fits each reset ``recorder.values``, this keeps both."""

    order = Recorder.order + 1

    def __init__(self):
        self.epochs = []

    def after_epoch(self):
        if len(self.learn.recorder.values[-1]) != 3:  # lr_find's epoch: no validation
            return
        train_loss, valid_loss, acc = (float(v) for v in self.learn.recorder.values[-1])
        self.epochs.append({"train_loss": round(train_loss, 4), "valid_loss": round(valid_loss, 4),
                            "accuracy_multi": round(acc, 4)})


def frames(split_json: Path, csv: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Train + validation rows from headstart's split, test rows from the CSV (absolute paths)."""
    split = json.loads(split_json.read_text())
    rows = [{"path": p, "labels": ";".join(ys), "is_valid": s == "val"} for s in ("train", "val")
            for p, ys in split[s]]
    manifest = pd.read_csv(csv, keep_default_na=False)
    test = manifest[manifest["split"] == "test"].copy()
    test["path"] = [str((csv.parent / p).resolve()) for p in test["path"]]
    return pd.DataFrame(rows), test[["path", "labels"]], split["classes"]


def dataloaders(df: pd.DataFrame, vocab: list[str], args):
    """The lesson's DataBlock; the user recipe adds aug_transforms on the batch."""
    augment = aug_transforms() if args.recipe == "user" else []
    block = DataBlock(blocks=(ImageBlock, MultiCategoryBlock(vocab=vocab)), get_x=ColReader("path"),
                      get_y=ColReader("labels", label_delim=";"), splitter=ColSplitter("is_valid"),
                      item_tfms=Resize(args.image_size),
                      batch_tfms=[*augment, Normalize.from_stats([0.5] * 3, [0.5] * 3)])
    return block.dataloaders(df, bs=args.batch_size, device=torch.device("cpu"))


def fit(learn, args) -> tuple[float | None, float, float]:
    """lr_find (user recipe) then fine_tune; returns the learning rate and the seconds of each."""
    lr, t0 = None, time.perf_counter()
    with learn.no_bar():
        if args.recipe == "user":
            lr = float(learn.lr_find(show_plot=False).valley)
        t1 = time.perf_counter()
        learn.fine_tune(args.epochs, **({"base_lr": lr} if lr else {}), freeze_epochs=args.freeze_epochs)
    return lr, t1 - t0, time.perf_counter() - t1


def test_figures(learn, dls, test: pd.DataFrame) -> dict:
    """Macro mAP over the labels present in the test images, and exact match at fastai's 0.5."""
    with learn.no_bar():
        probs, targets = learn.get_preds(dl=dls.test_dl(test, with_labels=True))
    y, p = targets.numpy().astype(int), probs.numpy()
    ap_per_label = [average_precision_score(y[:, j], p[:, j]) for j in np.flatnonzero(y.sum(0) > 0)]
    return {"test_map": float(np.mean(ap_per_label)), "test_exact_match": float(((p >= 0.5) == (y > 0)).all(1).mean()),
            "test_images": len(y)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", required=True, type=Path, help="the multi-label CSV (path, labels, split)")
    ap.add_argument("--split", required=True, type=Path, help="a headstart run's split.json on the same CSV")
    ap.add_argument("--recipe", choices=("default", "user"), default="default")
    ap.add_argument("--epochs", type=int, default=3, help="fine_tune(epochs), after its frozen epochs")
    ap.add_argument("--freeze-epochs", type=int, default=1, help="fine_tune's freeze_epochs (fastai's default 1)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64, help="64 is fastai's default")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    set_seed(args.seed)
    df, test, vocab = frames(args.split, args.csv)
    dls = dataloaders(df, vocab, args)
    history = EpochHistory()
    learn = vision_learner(dls, efficientnet_lite0, metrics=accuracy_multi, pretrained=True, cbs=[history])
    lr, lr_seconds, fit_seconds = fit(learn, args)
    t0 = time.perf_counter()
    figures = test_figures(learn, dls, test)
    recipe = (f"lr_find (valley) + fine_tune({args.epochs}, base_lr, freeze_epochs={args.freeze_epochs}), "
              f"aug_transforms, bs {args.batch_size}" if args.recipe == "user"
              else f"vision_learner + fine_tune({args.epochs}), bs {args.batch_size}")
    print(json.dumps({"side": "fastai", "recipe": recipe, "lr": lr, "lr_find_seconds": round(lr_seconds, 2),
                      "fit_seconds": round(fit_seconds, 2), "predict_seconds": round(time.perf_counter() - t0, 2),
                      **figures, "epochs": history.epochs, "train_images": int((~df["is_valid"]).sum()),
                      "val_images": int(df["is_valid"].sum()), "image_size": args.image_size,
                      "batch_size": args.batch_size, "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
