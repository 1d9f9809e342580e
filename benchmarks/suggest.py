"""Does ``suggest`` choose better images to label than random choice? A simulated labelling loop on Fashion-MNIST.

A pool of 4,000 Fashion-MNIST training images (400 per class, labels hidden) and 2,000 test images, EfficientNet-Lite0
features at 128 px (cached). Each seed starts from 5 random labels per class; each round fits a logistic-regression
probe on the labelled images, then labels 50 more chosen by:

- ``suggest``: what ``headstart suggest`` ranks (:func:`rank_for_labelling`: margin uncertainty of the probe's
  probabilities, the ``POOL_FACTOR * 50`` most uncertain spread by uncertainty-weighted k-center greedy);
- ``uncertainty``: the 50 of smallest margin (pool factor 1: no spreading);
- ``random``: 50 at random, for up to 18 rounds, to find how many labels it needs to reach ``suggest``'s accuracy
  after 6 rounds (linear interpolation between rounds).

The probe is scikit-learn's ``LogisticRegression`` through headstart's head (:func:`refit_head`, standardised
features) at a fixed C for every arm and round: the loop has no validation images to choose C, and the same C
for all keeps the comparison fair. The probabilities are not temperature-scaled (the margin order barely moves).
``POOL_FACTOR`` is chosen on tuning seeds (100, 101) from {3, 10, 30}; seeds 0-2 are reported.

    python benchmarks/suggest.py --out /tmp/suggest   # ~5 minutes on a shared 2-core machine, warm feature cache
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

try:
    import headstart  # noqa: F401
except ImportError:  # running from a checkout without headstart installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from label_issues import fashion, features  # noqa: E402 (the same images and features as that benchmark)

from headstart.curation.suggest import POOL_FACTOR, rank_for_labelling, uncertainty  # noqa: E402
from headstart.predict.calibration import softmax  # noqa: E402
from headstart.training.heads import refit_head  # noqa: E402

C = 0.01
START, STEP, ROUNDS, RANDOM_ROUNDS = 5, 50, 6, 18


def loop(x, y, x_test, y_test, arm: str, seed: int, rounds: int, pool_factor: int = POOL_FACTOR) -> list[dict]:
    rng = np.random.default_rng(seed)
    labelled = np.concatenate([rng.choice(np.flatnonzero(y == c), START, replace=False) for c in range(10)])
    out = []
    for r in range(rounds + 1):
        head = refit_head("logreg", x[labelled], y[labelled], 10, {"C": C})
        acc = float((head.logits(x_test).argmax(1) == y_test).mean())
        out.append({"round": r, "labels": int(len(labelled)), "test_acc": round(acc, 4)})
        if r == rounds:
            break
        rest = np.setdiff1d(np.arange(len(y)), labelled)
        if arm == "random":
            new = rng.choice(rest, STEP, replace=False)
        else:
            u = uncertainty(softmax(head.logits(x[rest])), "margin")
            factor = 1 if arm == "uncertainty" else pool_factor
            new = rest[rank_for_labelling(u, lambda idx: x[rest[idx]], STEP, factor)]
        labelled = np.concatenate([labelled, new])
    return out


def labels_to_reach(curve: list[dict], target: float) -> float | None:
    """Labels at which ``curve`` first reaches ``target`` accuracy, interpolated linearly; None if never."""
    for a, b in zip(curve, curve[1:]):
        if b["test_acc"] >= target:
            if a["test_acc"] >= target:
                return float(a["labels"])
            t = (target - a["test_acc"]) / (b["test_acc"] - a["test_acc"])
            return a["labels"] + t * (b["labels"] - a["labels"])
    return None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/suggest")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--json", default=None, help="default: docs/measurements/suggest.json")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    train, test = fashion(Path(args.out))
    x, y = features(train, args.image_size)
    x_test, y_test = features(test, args.image_size)
    tuning = {f: [loop(x, y, x_test, y_test, "suggest", s, ROUNDS, f)[-1]["test_acc"] for s in (100, 101)]
              for f in (3, 10, 30)}
    print("tuning (accuracy after 6 rounds, seeds 100, 101):", tuning, flush=True)
    runs = {}
    for seed in map(int, args.seeds.split(",")):
        runs[seed] = {arm: loop(x, y, x_test, y_test, arm, seed, RANDOM_ROUNDS if arm == "random" else ROUNDS)
                      for arm in ("suggest", "uncertainty", "random")}
        s = runs[seed]["suggest"][-1]
        need = labels_to_reach(runs[seed]["random"], s["test_acc"])
        runs[seed]["random_labels_to_reach_suggest"] = need
        runs[seed]["ratio"] = round(need / s["labels"], 2) if need else None
        print(seed, "suggest", s, "random at same labels", runs[seed]["random"][ROUNDS], "random needs", need,
              flush=True)
    ratios = [r["ratio"] for r in runs.values()]
    result = {"image_size": args.image_size, "backbone": "efficientnet_lite0", "pool_images": int(len(y)),
              "test_images": int(len(y_test)), "C": C, "start_per_class": START, "step": STEP, "rounds": ROUNDS,
              "pool_factor": POOL_FACTOR, "tuning_pool_factor": {str(k): v for k, v in tuning.items()},
              "runs": {str(k): v for k, v in runs.items()}, "ratios": ratios,
              "seconds_shared_machine": round(time.perf_counter() - t0, 1)}
    path = Path(args.json or Path(__file__).resolve().parents[1] / "docs/measurements/suggest.json")
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"ratios (random's labels / suggest's to reach suggest's accuracy after {ROUNDS} rounds): {ratios}")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
