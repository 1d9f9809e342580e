"""``headstart compare``: every strategy against training from scratch, on the same images, measured.

For each labels-per-class budget and seed, one labelled subset is drawn per class from the training pool; every
strategy trains on exactly that subset, validates on the same validation images (drawn once per seed, not counted
as labels: they only choose the epoch and the regularisation), and is tested on the same held-out test images.
"""

from __future__ import annotations

import csv
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from headstart.data.dataset import scan
from headstart.data.sources import DataSplits, discover, stratified_split
from headstart.engine.checkpoint import write_json
from headstart.train import TrainConfig, log, train
from headstart.zoo import DEFAULT_MODEL, get_spec


@dataclass
class CompareConfig:
    data: str
    out: str
    model: str = DEFAULT_MODEL
    strategies: list[str] = field(default_factory=lambda: ["scratch", "linear-probe", "fine-tune"])
    labels_per_class: list[int] = field(default_factory=lambda: [5, 10, 25, 50, 100])
    seeds: int = 3
    val_per_class: int = 10
    test_fraction: float = 0.3
    max_test: int | None = None
    epochs: int = 10
    scratch_epochs: int = 30
    scratch_model: str | None = None  # default: resnet20 for small images, else the same model
    image_size: int | None = None
    budget_minutes: float | None = None
    batch_size: int = 32
    workers: int | None = None


def _draw(samples, per_class: int, rng: random.Random, exclude: set[str]) -> list:
    by_class: dict[int, list] = {}
    for s in samples:
        if s[0] not in exclude:
            by_class.setdefault(s[1], []).append(s)
    out = []
    for label in sorted(by_class):
        items = sorted(by_class[label])
        rng.shuffle(items)
        out += items[:per_class]
    return sorted(out)


def _write_manifest(path: Path, classes: list[str], splits: dict[str, list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for split, samples in splits.items():
            for p, y in samples:
                w.writerow([str(Path(p).resolve()), classes[y], split])


def _image_side(samples) -> int:
    from headstart.data.images import load_image

    return max(load_image(samples[0][0]).size)


def pool_and_test(cfg: CompareConfig) -> DataSplits:
    """The training pool and the fixed test images (DATA's test split, else a seeded stratified hold-out)."""
    splits = discover(cfg.data, val_fraction=0.0, seed=0)
    pool = splits.train + splits.val
    test = splits.test
    if not test:
        pool, test = stratified_split(pool, cfg.test_fraction, seed=12345)
    if cfg.max_test and len(test) > cfg.max_test:
        test = _draw(test, cfg.max_test // len(splits.classes), random.Random(0), set())
    pool, bad = scan(pool)
    test, bad_test = scan(test)
    for p, r in bad + bad_test:
        log(f"skipping {p}: {r}")
    return DataSplits(splits.classes, pool, [], test, layout=splits.layout)


def summarise(results: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["strategy"], r["labels_per_class"]), []).append(r)
    rows = []
    for (strategy, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        def ms(key):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return (statistics.mean(vals) if vals else None, statistics.stdev(vals) if len(vals) > 1 else 0.0)
        rows.append({"strategy": strategy, "labels_per_class": n, "seeds": len(rs),
                     **{f"{k}_mean": ms(k)[0] for k in ("test_acc", "test_balanced_acc", "seconds", "best_epoch")},
                     **{f"{k}_std": ms(k)[1] for k in ("test_acc", "test_balanced_acc", "seconds")},
                     "trainable_params": rs[0]["trainable_params"], "model": rs[0]["model"]})
    return rows


def plot(rows: list[dict], results: list[dict], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for s in strategies:
        rs = sorted((r for r in rows if r["strategy"] == s), key=lambda r: r["labels_per_class"])
        ax.errorbar([r["labels_per_class"] for r in rs], [100 * r["test_acc_mean"] for r in rs],
                    yerr=[100 * r["test_acc_std"] for r in rs], marker="o", capsize=3, label=f"{s} ({rs[0]['model']})")
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images per class")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Data efficiency: transfer learning vs. training from scratch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_labels.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for s in strategies:
        rs = [r for r in results if r["strategy"] == s]
        ax.scatter([r["seconds"] for r in rs], [100 * r["test_acc"] for r in rs], label=s, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("wall time per run (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_time.png", dpi=120)
    plt.close(fig)
    return ["accuracy_vs_labels.png", "accuracy_vs_time.png"]


def markdown(rows: list[dict], cfg: CompareConfig, n_test: int) -> str:
    lines = [f"# headstart compare: {cfg.data}", "",
             f"{n_test} test images; validation {cfg.val_per_class} images per class; {cfg.seeds} seed(s). "
             "Accuracy is mean ± std over seeds.", "",
             "| labels/class | strategy | model | test acc | balanced acc | wall time (s) | best epoch | trainable params |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['labels_per_class']} | {r['strategy']} | {r['model']} | "
                     f"{100 * r['test_acc_mean']:.1f} ± {100 * r['test_acc_std']:.1f} | "
                     f"{100 * r['test_balanced_acc_mean']:.1f} | {r['seconds_mean']:.1f} | "
                     f"{r['best_epoch_mean']:.1f} | {r['trainable_params']:,} |")
    return "\n".join(lines + ["", "![accuracy vs labels](accuracy_vs_labels.png)", ""])


def compare(cfg: CompareConfig) -> dict:
    """Runs every strategy x labels-per-class x seed and writes compare.json, compare.md and the plots."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = pool_and_test(cfg)
    side = _image_side(data.train)
    scratch_model = cfg.scratch_model or ("resnet20" if side <= 64 else cfg.model)
    get_spec(cfg.model), get_spec(scratch_model)  # fail early on a wrong name
    t_start, results = time.time(), []
    done_path = out / "compare.json"
    for seed in range(cfg.seeds):
        rng = random.Random(1000 + seed)
        val = _draw(data.train, cfg.val_per_class, rng, set())
        val_paths = {p for p, _ in val}
        for n in cfg.labels_per_class:
            train_subset = _draw(data.train, n, random.Random(2000 + 97 * seed + n), val_paths)
            manifest = out / "subsets" / f"n{n}-seed{seed}.csv"
            _write_manifest(manifest, data.classes, {"train": train_subset, "val": val, "test": data.test})
            for strategy in cfg.strategies:
                if cfg.budget_minutes and time.time() - t_start > 60 * cfg.budget_minutes:
                    log(f"budget of {cfg.budget_minutes} minutes spent; stopping before {strategy} n={n} seed={seed}")
                    break
                scratch = strategy == "scratch"
                model = scratch_model if scratch else cfg.model
                small = get_spec(model).small_images
                log(f"== {strategy} ({model}), {n} labels/class, seed {seed}")
                summary = train(TrainConfig(
                    data=str(manifest), out=str(out / "runs" / f"{strategy}-n{n}-seed{seed}"), model=model,
                    strategy=strategy, epochs=cfg.scratch_epochs if scratch else cfg.epochs, seed=seed,
                    image_size=None if small else cfg.image_size, batch_size=cfg.batch_size, workers=cfg.workers,
                    patience=5 if scratch else 3, overwrite=True))
                results.append({"strategy": strategy, "labels_per_class": n, "seed": seed, "model": model,
                                **{k: summary.get(k) for k in ("test_acc", "test_balanced_acc", "seconds",
                                                               "best_epoch", "trainable_params", "val_acc")}})
                rows = summarise(results)
                write_json(done_path, {"config": cfg.__dict__, "test_images": len(data.test), "rows": rows,
                                       "runs": results})
    rows = summarise(results)
    figures = plot(rows, results, out)
    (out / "compare.md").write_text(markdown(rows, cfg, len(data.test)))
    write_json(done_path, {"config": cfg.__dict__, "test_images": len(data.test), "rows": rows, "runs": results,
                           "figures": figures})
    return {"rows": rows, "runs": results, "test_images": len(data.test)}
