"""Which temperature keeps a refitted head calibrated? Test ECE of each head kind before and after the refit, at the
temperatures a run could ship.

The refit (``headstart train``'s default for a head fitted on features) trains the shipped head on train +
validation with the settings validation chose, so no image is left to fit its temperature on. Candidates:

- ``T = 1``: the head's own probabilities (what headstart shipped after a refit before);
- ``T val``: the temperature fitted on validation to the head *before* the refit;
- ``T cross``: fitted on out-of-fold logits of train + validation: each image scored by the head refitted with the
  same settings on the other folds (:func:`headstart.training.heads.cross_fitted_logits`; K head fits);
- ``T test``: fitted on the test logits themselves, the floor no honest method reaches.

The demo's data and settings (``headstart demo``): Fashion-MNIST, EfficientNet-Lite0 features at 160 px, 20
validation images per class, 2,000 test images; ``n`` training images per class drawn as ``headstart compare`` draws
them, for each seed. Every head is fitted exactly as ``headstart train --strategy linear-probe --head KIND`` fits it
(:func:`fit_head`, then :func:`refit_head`), from the same cached features.

    python benchmarks/refit_calibration.py --out /tmp/refit-cal     # ~6 min on 2 busy cores, cold cache
    python benchmarks/refit_calibration.py --out /tmp/refit-cal --json docs/measurements/refit_calibration_160px.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
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
from headstart.predict.calibration import expected_calibration_error, fit_temperature, run_temperature, softmax
from headstart.training.compare import _draw
from headstart.training.heads import cross_fitted_logits, fit_head, refit_head
from headstart.zoo.model import build_model

HEADS = ("logreg", "ncm", "sgd")


def features(model, samples, pre, runtime) -> tuple[np.ndarray, np.ndarray]:
    f = extract_features(model, [p for p, _ in samples], pre, runtime, desc="features")
    return f.array(), np.array([samples[i][1] for i in f.positions])


def ece(logits, y, temperature: float) -> float:
    return expected_calibration_error(softmax(logits, temperature), y)


def one_row(kind, x_tr, y_tr, x_val, y_val, x_test, y_test, k, folds) -> dict:
    head = fit_head(kind, x_tr, y_tr, x_val, y_val, k)
    t_val = run_temperature(head.logits(x_val), y_val)
    x_all, y_all = np.concatenate([x_tr, x_val]), np.concatenate([y_tr, y_val])
    refit = refit_head(kind, x_all, y_all, k, head.info)
    t0 = time.time()
    oof, used = cross_fitted_logits(kind, x_all, y_all, k, head.info, folds=folds)
    t_cross = run_temperature(oof, y_all)
    seconds = time.time() - t0
    before, after = head.logits(x_test), refit.logits(x_test)
    return {"t_val": t_val, "t_cross": t_cross, "folds": used, "cross_fit_seconds": round(seconds, 2),
            "t_test_before": fit_temperature(before, y_test)[0], "t_test_after": fit_temperature(after, y_test)[0],
            "acc_before": float((before.argmax(1) == y_test).mean()),
            "acc_after": float((after.argmax(1) == y_test).mean()),
            "ece_before_t1": ece(before, y_test, 1.0), "ece_before_t_val": ece(before, y_test, t_val),
            "ece_after_t1": ece(after, y_test, 1.0), "ece_after_t_val": ece(after, y_test, t_val),
            "ece_after_t_cross": ece(after, y_test, t_cross),
            "ece_after_t_test": ece(after, y_test, fit_temperature(after, y_test)[0])}


COLUMNS = [("acc_before", "acc before"), ("acc_after", "acc after"), ("ece_before_t1", "before, T=1"),
           ("ece_before_t_val", "before, T val"), ("ece_after_t1", "after, T=1"),
           ("ece_after_t_val", "after, T val"), ("ece_after_t_cross", "after, T cross"),
           ("ece_after_t_test", "after, T test (oracle)")]


def table(rows: list[dict], budgets: list[int]) -> str:
    lines = ["| head | labels/class | " + " | ".join(label for _, label in COLUMNS) + " | T val / T cross |",
             "|---|---:|" + "---:|" * (len(COLUMNS) + 1)]
    for kind in HEADS:
        for n in budgets:
            rs = [r for r in rows if r["head"] == kind and r["labels_per_class"] == n]
            if not rs:
                continue

            def ms(key, digits=3):
                v = [r[key] for r in rs]
                return f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.{digits}f}"

            lines.append(f"| {kind} | {n} | " + " | ".join(ms(key) for key, _ in COLUMNS)
                         + f" | {ms('t_val', 2)} / {ms('t_cross', 2)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/refit-cal")
    p.add_argument("--labels-per-class", default="10,50")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--heads", default=",".join(HEADS))
    p.add_argument("--json", help="also write the result here (e.g. docs/measurements/refit_calibration_160px.json)")
    args = p.parse_args(argv)
    out = Path(args.out)
    budgets = [int(n) for n in args.labels_per_class.split(",")]
    data = out / "fashion-mnist"
    if not data.exists():
        make_image_folder(data, train_per_class=max(budgets) + args.val_per_class, val_per_class=0,
                          test_images=args.test_images)
    splits = discover(data, val_fraction=0.0)
    runtime = make_runtime("auto", "auto")
    model = build_model("efficientnet_lite0", len(splits.classes), pretrained=True)
    runtime.prepare(model).eval()
    pre = model.spec.preprocessing(args.image_size)
    t0 = time.time()
    x_test, y_test = features(model, splits.test, pre, runtime)
    rows = []
    for seed in range(args.seeds):
        val = _draw(splits.train, args.val_per_class, random.Random(1000 + seed), set())
        x_val, y_val = features(model, val, pre, runtime)
        for n in budgets:
            train = _draw(splits.train, n, random.Random(2000 + 97 * seed + n), {q for q, _ in val})
            x_tr, y_tr = features(model, train, pre, runtime)
            for kind in args.heads.split(","):
                row = {"head": kind, "labels_per_class": n, "seed": seed,
                       **one_row(kind, x_tr, y_tr, x_val, y_val, x_test, y_test, len(splits.classes), args.folds)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    text = table(rows, budgets)
    heading = (f"Fashion-MNIST, Lite0 at {args.image_size} px, {len(y_test)} test images, {args.val_per_class} val "
               f"images per class, {args.folds}-fold cross-fitting, {args.seeds} seeds (mean ± sd); test ECE "
               f"(15 bins) of the head before the refit (train only) and after it (train + val)")
    print(f"\n{heading}; {time.time() - t0:.0f} s\n\n{text}")
    result = {"args": vars(args), "heading": heading, "rows": rows, "table": text,
              "seconds": round(time.time() - t0, 1)}
    (out / "refit_calibration.json").write_text(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
