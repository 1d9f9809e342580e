"""The smaller recipes side by side: label smoothing, MixUp, CutMix and test-time augmentation on balanced data,
``--balance`` on imbalanced data, and what ``lr-find`` suggests against the default rate.

Uses the labelled subsets ``benchmarks/recipes.py`` writes (Fashion-MNIST, ``--per-class`` train and
``--val-per-class`` validation images per class, one subset per seed; the same balanced test images), and
fine-tunes EfficientNet-Lite0 with ``headstart.training.train`` (``--strategy``, default ``full``: what ``auto`` picks
here):

- the strategy alone, with ``--label-smoothing 0.1``, with ``--mixup 0.2`` and with ``--cutmix 1.0``, each tested
  with and without ``--tta`` (softmax averaged over the image and its mirror);
- an imbalanced copy of each subset (the first half of the classes keep ``--per-class`` images, the others
  ``--rare`` each), trained with ``--balance none``, ``weights`` and ``sampler``, scored by accuracy on the
  balanced test images and by the recall of the rare classes;
- ``lr-find`` on seed 0's subset, and fine-tune at the rate it suggests, against the default rate.

    python benchmarks/recipe_options.py --out /tmp/headstart-recipes   # after recipes.py, same --out
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

try:
    import headstart  # noqa: F401
except ImportError:  # running from a checkout without headstart installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipes import add_common_arguments, mean_std, write_data  # noqa: E402  (the same subsets and test images)

from headstart.data.dataset import ImageFiles, make_loader  # noqa: E402
from headstart.data.sources import read_class_folders  # noqa: E402
from headstart.data.transforms import eval_transform  # noqa: E402
from headstart.predict.run import load_run, predict_loader, probs_from_logits  # noqa: E402
from headstart.training.train import TrainConfig, train  # noqa: E402

REGULARISERS = {
    "plain": {},
    "+ label smoothing 0.1": {"label_smoothing": 0.1},
    "+ mixup 0.2": {"mixup": 0.2},
    "+ cutmix 1.0": {"cutmix": 1.0},
}
BALANCE = ("none", "weights", "sampler")


def scores(run_dir: Path, test: Path, rare: list[int], workers: int | None) -> dict:
    run = load_run(run_dir)
    _, samples = read_class_folders(test, run.classes)
    out = {}
    for tta in (False, True):
        loader = make_loader(ImageFiles(samples, eval_transform(run.preprocessing)), 128, shuffle=False,
                             workers=workers)
        logits, labels = predict_loader(run, loader, tta=tta)
        probs = probs_from_logits(logits, run.temperature)
        pred = probs.argmax(1).numpy()
        labels = labels.numpy()
        suffix = "_tta" if tta else ""
        out[f"acc{suffix}"] = float((pred == labels).mean())
        if rare:
            out[f"rare_recall{suffix}"] = float(np.mean([(pred[labels == c] == c).mean() for c in rare]))
    return out


def imbalanced_copy(balanced: Path, out: Path, rare_classes: list[str], rare: int) -> Path:
    """``balanced/train`` with only the first ``rare`` images (sorted by name) of each rare class; ``val`` kept
    balanced, so that early stopping and the probe's settings are judged on all classes alike."""
    if out.is_dir():
        return out
    for split in ("train", "val"):
        for folder in sorted((balanced / split).iterdir()):
            files = sorted(folder.iterdir())
            if split == "train" and folder.name in rare_classes:
                files = files[:rare]
            (out / split / folder.name).mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy2(f, out / split / folder.name / f.name)
    return out


def pct(values: list[float]) -> str:
    mean, sd = mean_std(values)
    return f"{100 * mean:.1f} ± {100 * sd:.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument("--rare", type=int, default=10, help="train images of each rare class in the imbalanced copy")
    p.add_argument("--strategy", default="full", help="the strategy every run uses")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: regularisers, balance, lr-find")
    p.add_argument("--keep", action="store_true", help="keep the runs of skipped parts from --out's "
                                                      "recipe_options_STRATEGY.json")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out)
    import os

    os.environ.setdefault("HEADSTART_CACHE", str(out / "feature-cache"))
    write_data(out, args)
    test = out / "test"
    classes = sorted(d.name for d in test.iterdir())
    rare_classes = classes[len(classes) // 2:]
    rare_idx = [classes.index(c) for c in rare_classes]
    results, t_start = [], time.time()
    saved = out / f"recipe_options_{args.strategy}.json"
    if args.keep and saved.is_file():
        # Parts not rerun keep their runs; the lr-find row is rerun with lr-find.
        rerun = {"regularisers": lambda n: n in REGULARISERS, "balance": lambda n: n.startswith("imbalanced"),
                 "lr-find": lambda n: "(lr-find)" in n}
        results = [r for r in json.loads(saved.read_text())["runs"]
                   if not any(part not in skip and test(r["name"]) for part, test in rerun.items())]

    def run(name: str, seed: int, data: Path, rare: list[int], **options) -> None:
        slug = "".join(c if c.isalnum() or c in "-." else "_" for c in name)
        run_dir = out / "runs-options" / f"{args.strategy}-{slug}-seed{seed}"
        print(f"== {name}, seed {seed} ({time.time() - t_start:.0f} s so far)", file=sys.stderr, flush=True)
        t0 = time.time()
        train(TrainConfig(data=str(data), out=str(run_dir), seed=seed, image_size=args.image_size,
                          workers=args.workers, overwrite=True, strategy=args.strategy, epochs=args.epochs,
                          **options))
        results.append({"name": name, "seed": seed, "seconds": time.time() - t0,
                        **scores(run_dir, test, rare, args.workers)})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        saved.write_text(json.dumps({"args": vars(args), "runs": results}, indent=1))

    lr_find_result, lr_line = None, None
    if "lr-find" not in skip:
        from headstart.cli import main as cli

        folder = out / "lr-find"
        cli(["lr-find", str(out / "data" / "seed0"), "--out", str(folder), "--image-size", str(args.image_size),
             "--strategy", args.strategy])
        lr_find_result = json.loads((folder / "lr_find.json").read_text())
        found_lr = float(f"{lr_find_result['suggested_cli_lr']:.2g}")
        lr_line = (f"lr-find on seed 0's subset ({args.strategy}): suggested `--lr {found_lr:g}` (the "
                   f"phase's head rate {lr_find_result['suggested_lr']:.2g}, a tenth of the loss minimum at "
                   f"{lr_find_result['min_loss_lr']:.2g}); headstart's default is `--lr 1e-3`.")
        REGULARISERS[f"--lr {found_lr:g} (lr-find)"] = {"lr": found_lr}

    for seed in range(args.seeds):
        data = out / "data" / f"seed{seed}"
        for name, options in REGULARISERS.items():
            if "regularisers" not in skip or ("(lr-find)" in name and "lr-find" not in skip):
                run(name, seed, data, [], **options)
        if "balance" not in skip:
            skewed = imbalanced_copy(data, out / "data-imbalanced" / f"seed{seed}", rare_classes, args.rare)
            for balance in BALANCE:
                run(f"imbalanced, --balance {balance}", seed, skewed, rare_idx, balance=balance)

    lines = [f"Fashion-MNIST, {args.per_class} labelled images per class (+{args.val_per_class} validation), "
             f"{args.strategy}, EfficientNet-Lite0 at {args.image_size} px, up to {args.epochs} epochs, "
             f"{args.seeds} seeds; "
             f"{args.test_images} balanced test images. Accuracy %, mean ± std over seeds.", ""]
    by = {}
    for r in results:
        by.setdefault(r["name"], []).append(r)
    names = [n for n in by if not n.startswith("imbalanced")]
    if names:
        lines += ["| recipe | test | test with --tta | train time (s) |", "|---|---:|---:|---:|"]
        for name in names:
            rs = by[name]
            lines.append(f"| {name} | {pct([r['acc'] for r in rs])} | {pct([r['acc_tta'] for r in rs])} | "
                         f"{statistics.mean(r['seconds'] for r in rs):.0f} |")
        lines.append("")
    if any(n.startswith("imbalanced") for n in by):
        lines += [f"Imbalanced: classes {', '.join(rare_classes)} keep {args.rare} train images each, the others "
                  f"{args.per_class}.", "",
                  "| --balance | test (balanced) | recall of the rare classes |", "|---|---:|---:|"]
        for balance in BALANCE:
            rs = by[f"imbalanced, --balance {balance}"]
            lines.append(f"| {balance} | {pct([r['acc'] for r in rs])} | "
                         f"{pct([r['rare_recall'] for r in rs])} |")
        lines.append("")
    if lr_line:
        lines.append(lr_line)
    table = "\n".join(lines)
    saved.write_text(json.dumps({"args": vars(args), "runs": results, "lr_find": lr_find_result, "table": table,
                                 "seconds": time.time() - t_start}, indent=1))
    saved.with_suffix(".md").write_text(table + "\n")
    print(table)
    print(f"\ntotal {time.time() - t_start:.0f} s; {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
