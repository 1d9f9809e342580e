"""fastai's multi-label recipe on a multi-label CSV, with headstart's backbone and weights: the other side of
``benchmarks/multilabel.py``.

What a fastai user writes for multi-label data (the "planets" lesson): a ``DataBlock`` with ``ImageBlock`` and
``MultiCategoryBlock`` (labels split on ``;``), ``vision_learner`` (fastai's head: concat pooling, BatchNorm,
dropout, two linear layers; ``BCEWithLogitsLossFlat``; body frozen except BatchNorm), ``fine_tune(epochs)`` at
fastai's default learning rate, ``accuracy_multi`` at 0.5. The body is EfficientNet-Lite0 with headstart's offline
ImageNet weights (fastai's own pretrained weights cannot download here; the body is built by ``headstart.zoo``
exactly as ``benchmarks/fastai_baseline.py`` does, normalised with the weights' mean = std = 0.5). Images are
resized to ``--image-size`` (fastai's ``Resize``: a random crop of the square on train, the centre on validation),
no other augmentation, batch size 64, fp32 on the CPU.

The train/validation split is the one headstart used (``--split``: a run's ``split.json``), so both sides learn from
the same images; the test images are the CSV's ``split=test`` rows. Prints one JSON line last: test mAP (macro,
scikit-learn), exact match at fastai's 0.5 threshold, seconds of the fit.

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
    ColReader,
    ColSplitter,
    DataBlock,
    ImageBlock,
    MultiCategoryBlock,
    Normalize,
    Resize,
    accuracy_multi,
    vision_learner,
)
from fastai_baseline import efficientnet_lite0  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402


def frames(split_json: Path, csv: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Train + validation rows from headstart's split, test rows from the CSV (absolute paths)."""
    split = json.loads(split_json.read_text())
    rows = [{"path": p, "labels": ";".join(ys), "is_valid": s == "val"} for s in ("train", "val")
            for p, ys in split[s]]
    manifest = pd.read_csv(csv, keep_default_na=False)
    test = manifest[manifest["split"] == "test"].copy()
    test["path"] = [str((csv.parent / p).resolve()) for p in test["path"]]
    return pd.DataFrame(rows), test[["path", "labels"]], split["classes"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", required=True, type=Path, help="the multi-label CSV (path, labels, split)")
    ap.add_argument("--split", required=True, type=Path, help="a headstart run's split.json on the same CSV")
    ap.add_argument("--epochs", type=int, default=3, help="fine_tune(epochs), after its one frozen epoch")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=64, help="fastai's default")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    df, test, vocab = frames(args.split, args.csv)
    block = DataBlock(blocks=(ImageBlock, MultiCategoryBlock(vocab=vocab)), get_x=ColReader("path"),
                      get_y=ColReader("labels", label_delim=";"), splitter=ColSplitter("is_valid"),
                      item_tfms=Resize(args.image_size), batch_tfms=Normalize.from_stats([0.5] * 3, [0.5] * 3))
    dls = block.dataloaders(df, bs=args.batch_size, device=torch.device("cpu"))
    learn = vision_learner(dls, efficientnet_lite0, metrics=accuracy_multi, pretrained=True)
    t0 = time.perf_counter()
    with learn.no_bar():
        learn.fine_tune(args.epochs)
    fit_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    with learn.no_bar():
        probs, targets = learn.get_preds(dl=dls.test_dl(test, with_labels=True))
    y, p = targets.numpy().astype(int), probs.numpy()
    held = y.sum(0) > 0
    ap_per_label = [average_precision_score(y[:, j], p[:, j]) for j in np.flatnonzero(held)]
    print(json.dumps({"side": "fastai", "recipe": f"vision_learner + fine_tune({args.epochs})",
                      "fit_seconds": round(fit_seconds, 2), "predict_seconds": round(time.perf_counter() - t1, 2),
                      "test_map": float(np.mean(ap_per_label)),
                      "test_exact_match": float(((p >= 0.5) == (y > 0)).all(1).mean()),
                      "test_images": len(y), "train_images": int((~df["is_valid"]).sum()),
                      "val_images": int(df["is_valid"].sum()), "image_size": args.image_size,
                      "torch_threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
