"""Where ``--strategy auto`` should switch from a linear probe to fine-tuning everything, chosen on validation images.

On scikit-learn's handwritten digits (1,797 8x8 greyscale images, 10 classes; written as 32 px PNG class folders),
not on Fashion-MNIST, whose test numbers the README reports. For each seed, ``--val-per-class`` validation images per
class are drawn once; for each labels-per-class budget a training subset is drawn from the rest
(``headstart.training.compare``'s draws), and ``linear-probe`` and ``full`` train on exactly those images
(EfficientNet-Lite0, ImageNet weights, ``--image-size`` px; ``full`` for the epochs ``headstart.training.auto`` would
give it). There is no test split: only each run's validation accuracy and loss (``summary.json``'s ``val_acc``,
``best_val_loss``) are read. The same validation images also pick ``full``'s epoch and the probe's regularisation,
which flatters both a little.

Prints a table (mean ± std over seeds) and the smallest budget from which ``full`` beats the probe on validation at
that budget and every larger one; writes ``auto_rule.json`` into ``--out``. ``--fashion-json`` adds a second opinion:
the validation accuracies stored in ``headstart compare``'s JSON (e.g. the withdrawn Fashion-MNIST one:
``git show 4641c26:docs/data_efficiency_fashion_mnist.json > /tmp/f.json``). The figures behind
``headstart.training.auto``'s threshold, each labelled re-run or copied, are in
``docs/measurements/auto_rule_digits.json``.

    python benchmarks/auto_rule.py --out /tmp/auto-rule

Cost: the probes take seconds; each ``full`` run 15 epochs or fewer, 4-10 minutes on 2 CPU cores shared with other
jobs, about an hour in all (80 labels per class, about 15 minutes more, was left out of the defaults for that).
After a crash, ``--reuse`` keeps the runs that finished.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path

import numpy as np
from PIL import Image

try:
    import headstart  # noqa: F401
except ImportError:  # running from a checkout without headstart installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headstart.core.io import write_json
from headstart.data.sources import read_class_folders
from headstart.training.auto import full_epochs
from headstart.training.compare import _draw, _write_manifest
from headstart.training.train import TrainConfig, train

STRATEGIES = ("linear-probe", "full")


def write_digits(folder: Path, side: int) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        pixels = np.round(image * (255 / 16)).astype(np.uint8)  # digits are 0-16
        Image.fromarray(pixels, mode="L").resize((side, side), Image.BICUBIC).save(folder / str(label) / f"{i:04d}.png")


def mean_std(values: list[float | None]) -> tuple[float, float] | None:
    values = [v for v in values if v is not None]
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else None


def table(runs: list[dict], budgets: list[int]) -> tuple[list[dict], int | None]:
    """Per budget: each strategy's validation accuracy and loss, and the smallest budget from which ``full`` wins."""
    rows = []
    for n in budgets:
        row = {"labels_per_class": n}
        for s in STRATEGIES:
            rs = [r for r in runs if r["labels_per_class"] == n and r["strategy"] == s]
            if rs:
                row[s] = {"seeds": len(rs), **{k: mean_std([r.get(k) for r in rs])
                                               for k in ("val_acc", "best_val_loss")}}
        if all(s in row for s in STRATEGIES):
            row["full_minus_probe"] = row["full"]["val_acc"][0] - row["linear-probe"]["val_acc"][0]
        rows.append(row)
    done = [r for r in rows if "full_minus_probe" in r]
    switch = next((r["labels_per_class"] for i, r in enumerate(done)
                   if all(later["full_minus_probe"] > 0 for later in done[i:])), None)
    return rows, switch


def _loss(cell: dict) -> str:
    return f"{cell['best_val_loss'][0]:.3f}" if cell["best_val_loss"] else "n/a"


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}\n")
    print("| labels/class | linear-probe val acc | full val acc | full - probe | probe val loss | full val loss |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "full_minus_probe" not in r:
            continue
        p, f = r["linear-probe"], r["full"]
        print(f"| {r['labels_per_class']} | {100 * p['val_acc'][0]:.1f} ± {100 * p['val_acc'][1]:.1f} | "
              f"{100 * f['val_acc'][0]:.1f} ± {100 * f['val_acc'][1]:.1f} | {100 * r['full_minus_probe']:+.1f} | "
              f"{_loss(p)} | {_loss(f)} |")


def run_digits(args) -> list[dict]:
    out = Path(args.out)
    data = out / f"digits-{args.side}px"
    if not data.exists():
        write_digits(data, args.side)
    classes, samples = read_class_folders(data)
    runs = []
    for seed in range(args.seeds):
        val = _draw(samples, args.val_per_class, random.Random(1000 + seed), set())
        val_paths = {p for p, _ in val}
        for n in args.labels_per_class:
            subset = _draw(samples, n, random.Random(2000 + 97 * seed + n), val_paths)
            manifest = out / "subsets" / f"n{n}-seed{seed}.csv"
            _write_manifest(manifest, classes, {"train": subset, "val": val})
            for strategy in STRATEGIES:
                epochs = full_epochs(len(subset), args.batch_size) if strategy == "full" else 1
                run = out / "runs" / f"{strategy}-n{n}-seed{seed}"
                if args.reuse and (run / "summary.json").is_file():
                    summary = json.loads((run / "summary.json").read_text())
                else:
                    summary = train(TrainConfig(
                        data=str(manifest), out=str(run), strategy=strategy, epochs=epochs,
                        image_size=args.image_size, batch_size=args.batch_size, seed=seed, workers=args.workers,
                        overwrite=True))
                runs.append({"strategy": strategy, "labels_per_class": n, "seed": seed, "epochs": epochs,
                             **{k: summary[k] for k in ("val_acc", "best_val_loss", "best_epoch", "seconds")}})
                print(f"{strategy} n={n} seed={seed}: val acc {summary['val_acc']:.3f}, val loss "
                      f"{summary['best_val_loss']:.3f} ({summary['seconds']:.0f} s)", flush=True)
                write_json(out / "auto_rule.json", {"config": vars(args), "runs": runs})
    return runs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/auto-rule")
    p.add_argument("--labels-per-class", default="5,10,20,40")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--val-per-class", type=int, default=30)
    p.add_argument("--side", type=int, default=32, help="side of the PNGs written from the 8x8 digits")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--reuse", action="store_true", help="keep the runs in --out that finished (after a crash)")
    p.add_argument("--fashion-json", default="",
                   help="a `headstart compare` JSON whose validation accuracies are shown too (default: none)")
    args = p.parse_args(argv)
    args.labels_per_class = [int(n) for n in args.labels_per_class.split(",")]
    runs = run_digits(args)
    rows, switch = table(runs, args.labels_per_class)
    print_table(rows, f"digits, validation only ({args.val_per_class} images per class, {args.seeds} seed(s))")
    print(f"\nfull beats the probe on validation from {switch} labels per class on" if switch else
          "\nfull does not beat the probe on validation at the largest budget")
    result = {"config": vars(args), "runs": runs, "rows": rows, "full_wins_from": switch}
    if args.fashion_json and Path(args.fashion_json).is_file():
        fashion = [r for r in json.loads(Path(args.fashion_json).read_text())["runs"]
                   if r["strategy"] in STRATEGIES and r.get("val_acc") is not None]
        budgets = sorted({r["labels_per_class"] for r in fashion})
        f_rows, f_switch = table(fashion, budgets)
        print_table(f_rows, f"second opinion: validation accuracy in {args.fashion_json} (its val loss not stored)")
        print(f"\nthere, full beats the probe on validation from {f_switch} labels per class on")
        result["fashion_validation"] = {"rows": f_rows, "full_wins_from": f_switch}
    write_json(Path(args.out) / "auto_rule.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
