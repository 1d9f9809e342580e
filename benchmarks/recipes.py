"""Fine-tuning recipes side by side on Fashion-MNIST with 100 labelled images per class: in distribution, on a
shifted copy of the test images, and on that copy after AdaBN.

For each seed one labelled subset (``--per-class`` train and ``--val-per-class`` validation images per class) is
drawn from the training set; every recipe trains on exactly those images (EfficientNet-Lite0, ImageNet weights,
``headstart.training.train``), and is tested on the same ``--test-images`` balanced test images and on a shifted copy of
them (``--shift``: ``blur-contrast`` blurs and halves the contrast, a washed-out camera; ``invert`` swaps
foreground and background). The shifted copy is then tested again after AdaBN, transductively on the shifted test
images themselves (``headstart.training.adapt.adapt_batchnorm``, what ``headstart adapt`` does): "classic" takes their
statistics as they are (Li et al.), "aligned" maps them onto the seed's training images' (the default of
``headstart adapt`` when the training images are at hand). ``auto`` picks its own strategy and epochs; every other
recipe gets ``--epochs``.

Two models per run: what headstart ships (``best.safetensors``: the lowest validation loss over all phases, which
for a two-phase recipe may be its first, probe phase) and the recipe's own result (``phase_best.safetensors``: the
best epoch of its last phase, e.g. LP-FT's fine-tuned weights). The table shows the recipe's own; the shipped
model differs only where the probe won, and the table counts those seeds.

Prints a markdown table (mean ± std over seeds) and writes ``recipes.json`` into ``--out``.

    python benchmarks/recipes.py --out /tmp/recipes   # defaults: about 50 minutes on 2 idle CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageFilter

try:
    import headstart  # noqa: F401
except ImportError:  # running from a checkout without headstart installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headstart.core.io import load_weights
from headstart.data import fashion_mnist as fm
from headstart.data.dataset import ImageFiles, make_loader
from headstart.data.sources import read_class_folders
from headstart.data.transforms import eval_transform
from headstart.predict.run import load_run, predict_loader, probs_from_logits
from headstart.training.adapt import adapt_batchnorm
from headstart.training.train import TrainConfig, train

RECIPES = {
    "linear-probe": {"strategy": "linear-probe"},
    "fine-tune": {"strategy": "fine-tune"},
    "full": {"strategy": "full"},
    "full + layer decay 0.75": {"strategy": "full", "lr_decay": 0.75},
    "gradual": {"strategy": "gradual"},
    "lp-ft": {"strategy": "lp-ft"},
    # Kumar et al.'s comparison: the same fine-tuning as `full` (head 1e-3, backbone 1e-4), started from the probe.
    "lp-ft at full rates": {"strategy": "lp-ft", "lr": 1e-2},
    "fine-tune + L2-SP 0.01": {"strategy": "fine-tune", "l2sp": 0.01},
    "auto": {"strategy": "auto", "epochs": None},
    "linear-probe + --bn adabn": {"strategy": "linear-probe", "bn": "adabn"},
}


def shift(images: np.ndarray, kind: str) -> np.ndarray:
    """A label-preserving change of domain applied to (N, 28, 28) uint8 images."""
    if kind == "invert":
        return 255 - images
    if kind == "blur-contrast":
        out = [np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(1.0)), dtype=np.float32)
               for im in images]
        return (64 + 0.5 * np.stack(out)).clip(0, 255).astype(np.uint8)
    raise ValueError(f"--shift must be blur-contrast or invert, got '{kind}'.")


def write_data(out: Path, args) -> None:
    x, y = fm.load("train")
    xt, yt = fm.load("test")
    test_idx = fm.balanced_indices(yt, args.test_images // len(fm.CLASSES), np.random.default_rng(12345))
    if not (out / "test").is_dir():
        fm.write_folder(xt, yt, test_idx, out / "test", prefix="t")
        fm.write_folder(_shifted(xt, test_idx, args.shift), yt, test_idx, out / f"shifted-{args.shift}", prefix="s")
    for seed in range(args.seeds):
        folder = out / "data" / f"seed{seed}"
        if folder.is_dir():
            continue
        rng = np.random.default_rng(1000 + seed)
        train_idx = fm.balanced_indices(y, args.per_class, rng)
        val_idx = fm.balanced_indices(y, args.val_per_class, rng, exclude=train_idx)
        fm.write_folder(x, y, train_idx, folder / "train")
        fm.write_folder(x, y, val_idx, folder / "val")


def _shifted(images: np.ndarray, idx: np.ndarray, kind: str) -> np.ndarray:
    """The whole array with only the chosen images shifted (write_folder indexes into it)."""
    out = images.copy()
    out[idx] = shift(images[idx], kind)
    return out


def evaluate(run_dir: Path, test: Path, shifted: Path, train: Path, weights: str, workers: int | None) -> dict:
    """Accuracy of the run's ``weights`` file on the test images, the shifted copy, and the shifted copy after
    classic and aligned AdaBN."""
    run = load_run(run_dir)
    run.model.load_state_dict(load_weights(run_dir / weights))
    state = {k: v.clone() for k, v in run.model.state_dict().items()}

    def loader(folder: Path, batch: int = 128, drop_last: bool = False):
        _, samples = read_class_folders(folder, run.classes)
        return make_loader(ImageFiles(samples, eval_transform(run.preprocessing)), min(batch, len(samples)),
                           shuffle=False, workers=workers, drop_last=drop_last)

    def acc(folder: Path) -> float:
        logits, labels = predict_loader(run, loader(folder))
        probs = probs_from_logits(logits, run.temperature)
        return float((probs.argmax(1) == labels).float().mean())

    result = {"test_acc": acc(test), "shifted_acc": acc(shifted)}
    # AdaBN on the shifted images themselves (transductive, as in Li et al.), batches of 64.
    adapt_batchnorm(run.model, [loader(shifted, batch=64, drop_last=True)], run.runtime)
    result["shifted_adabn_acc"] = acc(shifted)
    run.model.load_state_dict(state)
    adapt_batchnorm(run.model, [loader(shifted, batch=64, drop_last=True)], run.runtime,
                    source=[loader(train, batch=64, drop_last=True)])
    result["shifted_aligned_acc"] = acc(shifted)
    return result


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: list[dict]) -> list[dict]:
    rows = []
    order = list(RECIPES)
    for recipe in sorted(dict.fromkeys(r["recipe"] for r in results), key=lambda r: order.index(r) if r in order
                         else len(order)):
        rs = [r for r in results if r["recipe"] == recipe]
        row = {"recipe": recipe, "seeds": len(rs)}
        for key in ("test_acc", "shifted_acc", "shifted_adabn_acc", "shifted_aligned_acc", "seconds"):
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r[key] for r in rs])
            row[f"shipped_{key}_mean"], row[f"shipped_{key}_std"] = mean_std([r["shipped"].get(key, r[key])
                                                                              for r in rs])
        row["earlier_won"] = sum(r["earlier_won"] for r in rs)
        row["chosen"] = sorted({r["chosen"] for r in rs if r.get("chosen")})
        rows.append(row)
    return rows


def markdown(rows: list[dict], args, n_test: int) -> str:
    lines = [f"Fashion-MNIST, {args.per_class} labelled images per class (+{args.val_per_class} validation), "
             f"EfficientNet-Lite0 at {args.image_size} px, {args.epochs} epochs (auto: its own), {args.seeds} seeds; "
             f"{n_test} test images; shift: {args.shift}. Accuracy %, mean ± std over seeds; each recipe's own "
             "result (its last phase's best epoch). \"earlier phase won\": seeds where an earlier phase (the "
             "probe, for fine-tune and lp-ft) had the lower validation loss, so `headstart train` ships that phase's "
             "weights; \"shipped test\" is the accuracy of what it ships.", "",
             "| recipe | test | shifted | shifted + AdaBN (classic) | shifted + AdaBN (aligned) | train time (s) | "
             "earlier phase won | shipped test |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        def pct(k):
            return f"{100 * r[k + '_mean']:.1f} ± {100 * r[k + '_std']:.1f}"
        name = r["recipe"] + (f" ({'; '.join(r['chosen'])})" if r["chosen"] else "")
        lines.append(f"| {name} | {pct('test_acc')} | {pct('shifted_acc')} | {pct('shifted_adabn_acc')} | "
                     f"{pct('shifted_aligned_acc')} | {r['seconds_mean']:.0f} | {r['earlier_won']}/{r['seeds']} | "
                     f"{pct('shipped_test_acc')} |")
    return "\n".join(lines)


def verdicts(rows: list[dict]) -> list[str]:
    by = {r["recipe"]: r for r in rows}
    out = []
    if "lp-ft" in by and "fine-tune" in by:
        d = 100 * (by["lp-ft"]["shifted_acc_mean"] - by["fine-tune"]["shifted_acc_mean"])
        out.append(f"LP-FT vs fine-tune on the shifted images: {d:+.1f} points "
                   f"({'LP-FT better' if d > 0 else 'fine-tune better or equal'}); "
                   f"std {100 * by['lp-ft']['shifted_acc_std']:.1f} and "
                   f"{100 * by['fine-tune']['shifted_acc_std']:.1f}.")
        d = 100 * (by["lp-ft"]["test_acc_mean"] - by["fine-tune"]["test_acc_mean"])
        out.append(f"LP-FT vs fine-tune in distribution: {d:+.1f} points.")
    if "lp-ft" in by and "full" in by:  # Kumar et al.'s FT is full fine-tuning from a random head: our `full`
        for key, where in (("shifted_acc", "on the shifted images"), ("test_acc", "in distribution")):
            d = 100 * (by["lp-ft"][f"{key}_mean"] - by["full"][f"{key}_mean"])
            out.append(f"LP-FT vs full fine-tuning {where}: {d:+.1f} points "
                       f"({'LP-FT better' if d > 0 else 'full better or equal'}).")
    if "lp-ft at full rates" in by and "full" in by:
        for key, where in (("shifted_acc", "on the shifted images"), ("test_acc", "in distribution")):
            d = 100 * (by["lp-ft at full rates"][f"{key}_mean"] - by["full"][f"{key}_mean"])
            out.append(f"LP-FT with full's rates vs full fine-tuning {where}: {d:+.1f} points "
                       f"({'LP-FT better' if d > 0 else 'full better or equal'}).")
    if "auto" in by:
        others = [r for r in rows if r["recipe"] != "auto"]
        best = max(others, key=lambda r: r["shipped_test_acc_mean"])
        d = 100 * (by["auto"]["shipped_test_acc_mean"] - best["shipped_test_acc_mean"])
        out.append(f"auto vs the best recipe in distribution ({best['recipe']}), both as shipped: {d:+.1f} points "
                   f"({'within' if d >= -1 else 'not within'} one point).")
    return out


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """The data and training settings this benchmark and ``recipe_options.py`` share: the latter reuses the subsets
    and test images ``write_data`` makes from them."""
    p.add_argument("--out", default="/tmp/headstart-recipes")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--shift", default="blur-contrast", choices=["blur-contrast", "invert"])
    p.add_argument("--workers", type=int, default=None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names from RECIPES")
    p.add_argument("--report", action="store_true", help="only rewrite recipes.md from --out's recipes.json")
    p.add_argument("--keep", action="store_true", help="keep the runs of other recipes already in --out's "
                                                      "recipes.json (rerun only --recipes)")
    args = p.parse_args(argv)
    recipes = [r for r in args.recipes.split(",") if r]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        p.error(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    out = Path(args.out)
    if args.report:
        saved = json.loads((out / "recipes.json").read_text())
        rows = summarise(saved["runs"])
        lines = verdicts(rows)
        table = markdown(rows, argparse.Namespace(**saved["args"]), saved["args"]["test_images"])
        (out / "recipes.md").write_text(table + "\n\n" + "\n".join(lines) + "\n")
        print((out / "recipes.md").read_text())
        return 0
    os.environ.setdefault("HEADSTART_CACHE", str(out / "feature-cache"))
    write_data(out, args)
    test, shifted = out / "test", out / f"shifted-{args.shift}"
    t_start, results = time.time(), []
    if args.keep and (out / "recipes.json").is_file():
        results = [r for r in json.loads((out / "recipes.json").read_text())["runs"] if r["recipe"] not in recipes]
    for seed in range(args.seeds):
        for recipe in recipes:
            options = {"epochs": args.epochs, **RECIPES[recipe]}
            run_dir = out / "runs" / f"{recipe.replace(' ', '').replace('+', '_')}-seed{seed}"
            print(f"== {recipe}, seed {seed} ({time.time() - t_start:.0f} s so far)", file=sys.stderr, flush=True)
            t0 = time.time()
            summary = train(TrainConfig(data=str(out / "data" / f"seed{seed}"), out=str(run_dir), seed=seed,
                                        image_size=args.image_size, workers=args.workers, overwrite=True, **options))
            seconds = time.time() - t0
            choice = yaml.safe_load((run_dir / "config.yaml").read_text()).get("strategy_choice")
            records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            phases = list(dict.fromkeys(r["phase"] for r in records))
            last = [r for r in records if r["phase"] == phases[-1]]
            earlier_won = len(phases) > 1 and summary["best_epoch"] < last[0]["global_epoch"]
            train_dir = out / "data" / f"seed{seed}" / "train"
            own = evaluate(run_dir, test, shifted, train_dir, "phase_best.safetensors", args.workers)
            shipped = (evaluate(run_dir, test, shifted, train_dir, "best.safetensors", args.workers)
                       if earlier_won else {})
            results.append({"recipe": recipe, "seed": seed, "seconds": seconds, "best_epoch": summary["best_epoch"],
                            "val_acc": summary["val_acc"], "earlier_won": earlier_won,
                            "last_phase_best_val_loss": min(r["val_loss"] for r in last),
                            "best_val_loss": summary["best_val_loss"],
                            "chosen": choice and (choice["strategy"] + ("" if choice["strategy"] == "linear-probe"
                                                                        else f", {choice['epochs']} epochs")),
                            **own, "shipped": shipped})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
            (out / "recipes.json").write_text(json.dumps({"args": vars(args), "runs": results,
                                                          "rows": summarise(results)}, indent=1))
    rows = summarise(results)
    table = markdown(rows, args, args.test_images)
    lines = verdicts(rows)
    (out / "recipes.json").write_text(json.dumps({"args": vars(args), "runs": results, "rows": rows,
                                                  "verdicts": lines, "seconds": time.time() - t_start}, indent=1))
    (out / "recipes.md").write_text(table + "\n\n" + "\n".join(lines) + "\n")
    print(table)
    print()
    print("\n".join(lines))
    print(f"\ntotal {time.time() - t_start:.0f} s; {out / 'recipes.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
