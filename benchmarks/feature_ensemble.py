"""Would a feature ensemble pay? A linear probe on the concatenated frozen features of two or three offline
backbones against each backbone alone (issue 23's optional candidate; not built into ``--choose``).

Fashion-MNIST at 50 labels per class (+10 validation per class, 2,000 test images, ``make_image_folder`` by seed),
EfficientNet-Lite0 at 128 and 224 px, Lite1 at 240, Lite2 at 260 (their native sizes). Each arm is the probe
``train --strategy linear-probe`` ships: logistic regression with C chosen on validation, then refitted on train +
validation with that C; both test accuracies are reported (``[validation-chosen fit, refit]``). Features come
through the feature cache (``$HEADSTART_CACHE``), so a second run costs only the fits.

    python benchmarks/feature_ensemble.py --out /tmp/ens --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

try:
    import headstart  # noqa: F401
except ImportError:  # running from a checkout without headstart installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headstart.core.runtime import make_runtime
from headstart.data.fashion_mnist import make_image_folder
from headstart.data.sources import discover
from headstart.features import extract_features
from headstart.training.heads import fit_head, refit_head
from headstart.zoo.model import build_model

SINGLE = [("efficientnet_lite0", 224), ("efficientnet_lite2", 260), ("efficientnet_lite1", 240),
          ("efficientnet_lite0", 128)]
ENSEMBLES = {"lite0@224+lite2@260": [0, 1], "lite0@224+lite1@240": [0, 2], "lite1+lite2": [2, 1],
             "all3": [0, 2, 1]}


def features(paths: list[str], backbone: str, size: int, runtime) -> np.ndarray:
    model = build_model(backbone, 10, pretrained=True)
    runtime.prepare(model).eval()
    found = extract_features(model, paths, model.spec.preprocessing(size), runtime, verbose=False)
    assert list(found.positions) == list(range(len(paths))), "every image must decode"
    return found.array()


def test_accuracy(parts: list[dict], y: dict) -> list[float]:
    """Test accuracy % of the validation-chosen fit and of its refit on train + validation."""
    x = {k: np.concatenate([p[k] for p in parts], 1) for k in ("train", "val", "test")}
    head = fit_head("logreg", x["train"], y["train"], x["val"], y["val"], 10)
    refit = refit_head("logreg", np.concatenate([x["train"], x["val"]]), np.concatenate([y["train"], y["val"]]), 10,
                       head.info)
    return [round(float((h.logits(x["test"]).argmax(1) == y["test"]).mean() * 100), 2) for h in (head, refit)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    runtime = make_runtime("auto", "auto")
    results = {}
    for seed in args.seeds:
        folder = args.out / f"fashion-mnist-50-seed{seed}"
        if not folder.exists():
            make_image_folder(folder, train_per_class=50, val_per_class=10, test_images=2000, seed=seed)
        splits = discover(folder)
        parts = {k: getattr(splits, k) for k in ("train", "val", "test")}
        y = {k: np.array([c for _, c in v]) for k, v in parts.items()}
        feats = [{k: features([p for p, _ in v], bb, size, runtime) for k, v in parts.items()} for bb, size in SINGLE]
        row = {f"{bb.removeprefix('efficientnet_')}@{size}": test_accuracy([f], y)
               for (bb, size), f in zip(SINGLE, feats)}
        row |= {name: test_accuracy([feats[i] for i in which], y) for name, which in ENSEMBLES.items()}
        results[str(seed)] = row
        print(seed, json.dumps(row), flush=True)
    arms = results[str(args.seeds[0])]
    summary = {arm: round(float(np.mean([results[s][arm][1] for s in results])), 2) for arm in arms}
    print("mean test accuracy of the refit:", json.dumps(summary))
    (args.out / "feature_ensemble.json").write_text(json.dumps({"per_seed": results, "mean_refit": summary}, indent=1))


if __name__ == "__main__":
    main()
