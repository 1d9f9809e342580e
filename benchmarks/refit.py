"""Does the shipped linear probe gain from every label? Refit on train + validation against no refit, and against a
plain scikit-learn ``LogisticRegression(C=1)`` on the same features of all labelled images.

Fashion-MNIST, EfficientNet-Lite0 features (the run's own preprocessing), for each labels-per-class budget and
seed: ``n`` training and 20 validation images per class drawn as ``headstart compare`` draws them, 2,000 test images.
Each row fits the head exactly as ``headstart train --strategy linear-probe`` does (:func:`fit_head`, C chosen by
validation log-loss on the 9-value grid; then :func:`refit_head` with that C on train + val), from the same
cached features, and reports test accuracy and the test ECE before and after the run's temperature:

- ``no refit``: the head fitted on the training images only (what headstart shipped before);
- ``refit``: the same C, refitted on the training and validation images (the default now);
- ``sklearn C=1``: ``LogisticRegression(C=1, max_iter=5000)`` on the raw features of train + val.

    python benchmarks/refit.py --out /tmp/refit            # about 3 minutes at 64 px on 2 idle cores, cold cache
    python benchmarks/refit.py --out /tmp/refit --image-size 224
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
from headstart.predict.calibration import calibration_summary, run_temperature
from headstart.training.compare import _draw
from headstart.training.heads import fit_head, refit_head
from headstart.zoo.model import build_model


def features(model, samples, pre, runtime) -> tuple[np.ndarray, np.ndarray]:
    f = extract_features(model, [p for p, _ in samples], pre, runtime, desc="features")
    return f.array(), np.array([samples[i][1] for i in f.positions])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/refit")
    p.add_argument("--labels-per-class", default="10,50,100")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--test-images", type=int, default=2000)
    args = p.parse_args(argv)
    out = Path(args.out)
    budgets = [int(n) for n in args.labels_per_class.split(",")]
    data = out / "fashion-mnist"
    if not data.exists():
        make_image_folder(data, train_per_class=max(budgets) + 20, val_per_class=0, test_images=args.test_images)
    splits = discover(data, val_fraction=0.0)
    runtime = make_runtime("auto", "auto")
    model = build_model("efficientnet_lite0", len(splits.classes), pretrained=True)
    runtime.prepare(model).eval()
    pre = model.spec.preprocessing(args.image_size)
    t0 = time.time()
    x_test, y_test = features(model, splits.test, pre, runtime)
    rows = []
    for seed in range(args.seeds):
        val = _draw(splits.train, 20, random.Random(1000 + seed), set())
        x_val, y_val = features(model, val, pre, runtime)
        for n in budgets:
            train = _draw(splits.train, n, random.Random(2000 + 97 * seed + n), {q for q, _ in val})
            x_tr, y_tr = features(model, train, pre, runtime)
            k = len(splits.classes)
            head = fit_head("logreg", x_tr, y_tr, x_val, y_val, k)
            temperature = run_temperature(head.logits(x_val), y_val)
            x_all, y_all = np.concatenate([x_tr, x_val]), np.concatenate([y_tr, y_val])
            refit = refit_head("logreg", x_all, y_all, k, head.info)
            from sklearn.linear_model import LogisticRegression

            plain = LogisticRegression(C=1.0, max_iter=5000).fit(x_all, y_all)
            row = {"labels_per_class": n, "seed": seed, "C": head.info["C"], "temperature": temperature}
            for name, logits in (("no_refit", head.logits(x_test)), ("refit", refit.logits(x_test)),
                                 ("sklearn_c1", plain.decision_function(x_test))):
                row[f"{name}_acc"] = float((logits.argmax(1) == y_test).mean())
                if name != "sklearn_c1":
                    cal = calibration_summary(logits, y_test, temperature)
                    row[f"{name}_ece_before"], row[f"{name}_ece_after"] = cal["ece_before"], cal["ece_after"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = ["| labels/class | no refit | refit | sklearn C=1 (train+val) | test ECE no T → T (refit) |",
             "|---:|---:|---:|---:|---:|"]
    for n in budgets:
        rs = [r for r in rows if r["labels_per_class"] == n]

        def ms(key, scale=100.0):
            v = [scale * r[key] for r in rs]
            return f"{statistics.mean(v):.1f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.1f}"

        table.append(f"| {n} | {ms('no_refit_acc')} | {ms('refit_acc')} | {ms('sklearn_c1_acc')} | "
                     f"{ms('refit_ece_before')} → {ms('refit_ece_after')} |")
    text = "\n".join(table)
    print(f"\nFashion-MNIST, Lite0 at {args.image_size} px, {len(y_test)} test images, 20 val images per class, "
          f"{args.seeds} seeds (mean ± std, %); {time.time() - t0:.0f} s\n\n{text}")
    (out / "refit.json").write_text(json.dumps({"args": vars(args), "rows": rows, "table": text}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
