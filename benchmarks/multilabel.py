"""Multi-label classification on real pictures: headstart's linear probe and fine-tune against a ResNet from scratch
and fastai's multi-label recipe, on 2x2 mosaics of Fashion-MNIST items labelled with the classes they show.

Data (``headstart.data.mosaic``): per budget and seed, BUDGET labelled mosaics from Fashion-MNIST's training set
(one to four items each, 10 labels, about 2.2 labels per image) and ``--test`` mosaics from its test set. headstart
holds out 20% of the labelled ones for validation by iterative stratification; every method learns from the same
train/validation images (fastai is given headstart's ``split.json``) and is scored on the same test images.

Rows, each a whole command in a fresh process, timed end to end (start-up, reading and checking the images,
features, training, choosing on validation, the test), each with a feature cache of its own (no row reuses another's
features):

- ``headstart linear-probe`` and ``headstart fine-tune``: EfficientNet-Lite0 (ImageNet weights, offline), defaults
  (fine-tune: up to 10 epochs, patience 3), at ``--image-size``;
- ``headstart scratch``: resnet20 from random weights at the same size, up to ``--scratch-epochs`` (patience 10);
- ``fastai``: ``vision_learner`` + ``fine_tune(3)`` at fastai's defaults (batch 64, ``Resize`` only), and
  ``fastai-long``, ``fine_tune(9)``: ``benchmarks/fastai_multilabel.py --recipe default``, run by ``--fastai-python``,
  a separate venv (fastai is not a headstart dependency), the same backbone and weights;
- ``fastai-user``: what fastai's multi-label lesson teaches (``--recipe user``): ``aug_transforms``, batch 16,
  ``lr_find``'s valley as ``base_lr``, ``fine_tune(12, freeze_epochs=3)`` (15 epochs; every epoch's validation
  figures are kept in the row, the evidence that they were enough).

mAP is the macro mean of each label's average precision on the test images (scikit-learn, no threshold); exact match
uses each side's own thresholds (headstart: F1-optimal per label on validation; fastai: 0.5). It also measures the
split: labels with training images but none in validation, iterative stratification against a random split of the
same size, on the labelled mosaics of each budget and seed (and on a rarer-label variant: each label kept on 5% of
the images).

    python benchmarks/multilabel.py --out /tmp/ml --fastai-python /tmp/fastai-venv-speed/bin/python

Wall times are measured on a shared 2-core machine (other engineers' jobs running): compare them within one run; each
row records the load average before and after it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from headstart.data.mosaic import make_mosaic_set  # noqa: E402
from headstart.data.multilabel import discover_multilabel, iterative_split, missing_labels, random_split  # noqa: E402

STRATEGIES = {"linear-probe": [], "fine-tune": [], "scratch": ["--model", "resnet20"]}
FASTAI = ("fastai", "fastai-long", "fastai-user")


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def headstart_row(csv: Path, runs: Path, strategy: str, args, env: dict) -> dict:
    run = runs / strategy
    extra = STRATEGIES[strategy] + (["--epochs", str(args.scratch_epochs), "--patience", "10"]
                                    if strategy == "scratch" else [])
    cmd = [sys.executable, "-m", "headstart", "train", str(csv), "--out", str(run), "--strategy", strategy,
           "--image-size", str(args.image_size), "--no-report", "--overwrite", "--seed", str(args.seed), *extra]
    seconds, _ = timed(cmd, {**env, "HEADSTART_CACHE": str(runs / f"cache-{strategy}")})
    s = json.loads((run / "summary.json").read_text())
    epochs = sum(1 for line in (run / "metrics.jsonl").read_text().splitlines() if '"train_loss"' in line)
    return {"test_map": s["test_map"], "test_exact_match": s["test_exact_match"], "seconds": round(seconds, 1),
            "train_seconds": round(s["seconds"], 1), "best_phase": s["best_phase"], "sgd_epochs": epochs,
            "train_images": s["train_images"], "val_images": s["val_images"]}


def fastai_row(csv: Path, runs: Path, args, env: dict, side: str) -> dict:
    """One fastai command: ``fastai``/``fastai-long`` its defaults at 3 and 9 epochs, ``fastai-user`` the lesson's."""
    recipe = {"fastai": ["--epochs", str(args.fastai_epochs)],
              "fastai-long": ["--epochs", str(args.fastai_long_epochs)],
              "fastai-user": ["--recipe", "user", "--epochs", str(args.fastai_user_epochs), "--freeze-epochs",
                              str(args.fastai_freeze_epochs), "--batch-size", str(args.fastai_batch_size)]}[side]
    cmd = [args.fastai_python, str(HERE / "fastai_multilabel.py"), "--csv", str(csv), "--split",
           str(runs / "fine-tune" / "split.json"), "--image-size", str(args.image_size), "--seed", str(args.seed),
           *recipe]
    seconds, out = timed(cmd, env)
    record = json.loads(out.strip().splitlines()[-1])
    return {**record, "seconds": round(seconds, 1)}


def split_figures(csv: Path, seed: int) -> dict:
    """Labels missing from a 20% validation split, iterative against random, as labelled and with rare labels."""
    found = discover_multilabel(csv, val_fraction=0.2, seed=seed)
    pool = found.train + found.val
    rng = np.random.default_rng(seed)
    keep = 0.05 / np.maximum(0.05, np.asarray([y for _, y in pool]).mean(0))  # each label on about 5% of images
    rare = [(p, tuple(int(v and rng.random() < keep[j]) for j, v in enumerate(y))) for p, y in pool]
    out = {}
    for name, samples in (("as labelled", pool), ("labels on ~5% of images", rare)):
        out[name] = {how: len(missing_labels(found.labels, *split(samples, 0.2, seed)))
                     for how, split in (("iterative", iterative_split), ("random", random_split))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--budgets", default="200,500", help="labelled mosaics per run (train + validation)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--test", type=int, default=300, help="test mosaics")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--scratch-epochs", type=int, default=20)
    ap.add_argument("--fastai-epochs", type=int, default=3, help="fastai's fine_tune(N) (a user's usual 3)")
    ap.add_argument("--fastai-long-epochs", type=int, default=9,
                    help="the 'fastai-long' side: fine_tune(N), N + 1 = 10 epochs, headstart fine-tune's cap")
    ap.add_argument("--fastai-user-epochs", type=int, default=12,
                    help="the 'fastai-user' side (lr_find valley, aug_transforms): fine_tune(N, base_lr)")
    ap.add_argument("--fastai-freeze-epochs", type=int, default=3, help="the 'fastai-user' side's freeze_epochs")
    ap.add_argument("--fastai-batch-size", type=int, default=16, help="the 'fastai-user' side's batch size")
    ap.add_argument("--first-seed-only", default="scratch,fastai-long",
                    help="sides run on the first seed only, for time (default: scratch and fastai-long)")
    ap.add_argument("--merge", type=Path, nargs="*", default=[],
                    help="other --out folders whose rows join this one's table (budgets run in parallel)")
    ap.add_argument("--fastai-python", help="python of a venv with fastai; without it the fastai rows are skipped")
    ap.add_argument("--only", default="", help="comma-separated sides to run (linear-probe, fine-tune, scratch, "
                                               "fastai, fastai-long, fastai-user, split)")
    ap.add_argument("--docs", type=Path, default=HERE.parent / "docs" / "measurements" / "multilabel_mosaic.json")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "multilabel.json"
    results = json.loads(store.read_text()) if store.exists() else {"rows": {}}
    results.update({"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
                    "image_size": args.image_size, "test_images": args.test, "command": " ".join(sys.argv)})
    only = set(filter(None, args.only.split(",")))
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    for budget in map(int, args.budgets.split(",")):
        for seed in map(int, args.seeds.split(",")):
            args.seed = seed
            data = args.out / f"data-{budget}-{seed}"
            csv = data / "labels.csv"
            if not csv.exists():
                make_mosaic_set(data, train=budget, test=args.test, seed=seed, split_column=True)
            runs = args.out / f"runs-{budget}-{seed}"
            sides = [*STRATEGIES, *FASTAI, "split"]
            first_only = set(args.first_seed_only.split(","))
            for side in sides:
                key = f"{budget}/{seed}/{side}"
                if key in results["rows"] or (only and side not in only):
                    continue
                if (side.startswith("fastai") and not args.fastai_python) or (
                        side in first_only and seed != int(args.seeds.split(",")[0])):
                    continue
                print(f"{key} ...", file=sys.stderr, flush=True)
                load = [round(x, 2) for x in os.getloadavg()]  # the machine is shared: each row says how busy
                row = (split_figures(csv, seed) if side == "split"
                       else fastai_row(csv, runs, args, env, side) if side in FASTAI
                       else headstart_row(csv, runs, side, args, env))
                results["rows"][key] = {**row, "load_average_before": load,
                                        "load_average_after": [round(x, 2) for x in os.getloadavg()]}
                store.write_text(json.dumps(results, indent=1))
                print(f"{key}: {json.dumps(row)}", file=sys.stderr, flush=True)
    for other in args.merge:
        results["rows"].update(json.loads((other / "multilabel.json").read_text())["rows"])
    results["table"] = table(results)
    store.write_text(json.dumps(results, indent=1))
    earlier = json.loads(args.docs.read_text()) if args.docs.exists() else {}
    kept = {k: v for k, v in earlier.items() if k.startswith("earlier run")}  # older runs stay, under their label
    args.docs.write_text(json.dumps({**results, **kept}, indent=1))
    print(results["table"])


def table(results: dict) -> str:
    """Mean ± sd over seeds of test mAP, exact match and seconds, per budget and side."""
    rows = results["rows"]
    budgets = sorted({int(k.split("/")[0]) for k in rows})
    lines = ["| budget | side | test mAP % | exact match % | seconds (whole command) | seeds |",
             "|---|---|---:|---:|---:|---:|"]
    for b in budgets:
        for side in [*STRATEGIES, *FASTAI]:
            got = [v for k, v in rows.items() if k.startswith(f"{b}/") and k.endswith(f"/{side}")]
            if not got:
                continue

            def ms(key, scale=100.0):
                x = np.array([g[key] for g in got], float) * scale
                return f"{x.mean():.1f} ± {x.std(ddof=1):.1f}" if len(x) > 1 else f"{x.mean():.1f}"
            lines.append(f"| {b} | {side} | {ms('test_map')} | {ms('test_exact_match')} | {ms('seconds', 1)} | "
                         f"{len(got)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
