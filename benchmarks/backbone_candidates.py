"""Each offline backbone candidate alone: validation and test accuracy and wall time of a linear probe (issue 23).

The evidence a backbone choice needs before there is a chooser: for every candidate (backbone x resolution) one
whole ``headstart train --strategy linear-probe`` command per data set and seed, with a fresh feature cache (cold:
what a first run costs), timed as the user waits for it. Validation accuracy and loss come from the run's
``summary.json`` (what a chooser may look at); test accuracy from ``test_metrics.json`` (what it may not).

Data sets: Fashion-MNIST at ``--labels`` per class (train + 10 val per class from the training set, 2,000 test
images), and scikit-learn's digits (1,797 8x8 images written as 32 px PNGs; headstart splits off validation and
test itself, by seed).

    python benchmarks/backbone_candidates.py --out /tmp/candidates --labels 10 50 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CANDIDATES = [("efficientnet_lite0", 128), ("efficientnet_lite0", 224), ("efficientnet_lite1", 240),
              ("efficientnet_lite2", 260)]


def make_sets(work: Path, labels: list[int], seed: int, test_images: int = 2000) -> dict[str, Path]:
    from headstart.data.fashion_mnist import make_image_folder
    sys.path.insert(0, str(Path(__file__).parent))
    from auto_rule import write_digits

    sets = {}
    for n in labels:
        folder = work / f"fmnist-{n}-seed{seed}"
        if not folder.exists():
            make_image_folder(folder, train_per_class=n, val_per_class=10, test_images=test_images, seed=seed)
        sets[f"fashion-mnist, {n} labels/class"] = folder
    digits = work / "digits"
    if not digits.exists():
        write_digits(digits, 32)
    sets["digits (sklearn), 1,797 images"] = digits
    return sets


def timed_train(folder: Path, extra: list[str], seed: int, out: Path, cache: Path,
                strategy: str | None = "linear-probe", report: bool = False) -> dict:
    """One whole ``headstart train`` (linear-probe unless ``strategy`` says otherwise; None: auto) with
    ``HEADSTART_CACHE=cache``: ``wall_s`` and the run's ``summary``, ``test`` metrics and ``config``, or ``error``."""
    import yaml

    cmd = [sys.executable, "-m", "headstart", "train", str(folder), *(["--strategy", strategy] if strategy else []),
           "--seed", str(seed), "--out", str(out), "--overwrite", *([] if report else ["--no-report"]), *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={**os.environ, "HEADSTART_CACHE": str(cache)})
    wall = round(time.perf_counter() - start, 1)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    test = json.loads((out / "test_metrics.json").read_text()) if (out / "test_metrics.json").exists() else {}
    return {"wall_s": wall, "summary": json.loads((out / "summary.json").read_text()), "test": test,
            "config": yaml.safe_load((out / "config.yaml").read_text())}


def arguments(doc: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--labels", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def run_one(folder: Path, backbone: str, size: int, seed: int, out: Path) -> dict:
    cache = out.with_name(out.name + ".cache")
    shutil.rmtree(cache, ignore_errors=True)
    got = timed_train(folder, ["--model", backbone, "--image-size", str(size)], seed, out, cache)
    shutil.rmtree(cache, ignore_errors=True)
    if "error" in got:
        return got
    return {"val_acc": got["summary"].get("val_acc"), "val_loss": got["summary"].get("best_val_loss"),
            "test_acc": got["test"].get("accuracy"), "wall_s": got["wall_s"]}


def main() -> None:
    args = arguments(__doc__)
    results = []
    for seed in args.seeds:
        for name, folder in make_sets(args.out / "data", args.labels, seed).items():
            for backbone, size in CANDIDATES:
                r = {"set": name, "backbone": backbone, "size": size, "seed": seed,
                     **run_one(folder, backbone, size, seed, args.out / "runs" / f"{backbone}-{size}")}
                results.append(r)
                print(json.dumps(r), flush=True)
                (args.out / "candidates.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
