"""``headstart compare``: every strategy against training from scratch, on the same images, measured.

For each labels-per-class budget and seed, one labelled subset is drawn per class from the training pool; every
strategy trains on exactly that subset, validates on the same validation images (drawn once per seed, not counted
as labels: they only choose the epoch and the regularisation, so no head is refitted on them), and is tested on the
same held-out test images.

Scratch is the baseline a sceptic must accept, so it is not handicapped: it sees the same input size as the
pretrained model (``image_size``; a small-image ResNet pools globally and takes any size), trains for longer with
more patience (a network from random weights needs many more epochs), and chooses its own learning rate on the
validation images: one full run per rate in ``scratch_lrs``, keeping the run with the lowest validation loss. A
winner at an edge of the grid only says the best rate may lie beyond it, so the grid widens a step at a time past
that edge (at most ``lr_extensions`` steps), and a winner still at the edge is reported as such. The pretrained
strategies that train by gradient descent get the same sweep when ``lrs`` is given, else run once at their default
rates; ``linear-probe`` chooses its own C. compare.md states what each side got.

On a multi-label CSV (:mod:`headstart.data.multilabel`) labels per class mean nothing (an image has several), so the
budget is a number of labelled training images. Per seed, the validation images are drawn once from the pool, then
each budget's subset from the rest, both by iterative stratification (every label keeps positives where the budget
allows, :func:`headstart.data.multilabel.draw_subset`); every strategy trains on that subset through the multi-label
training path, and the figures are test mAP (macro; no threshold) and the exact-match ratio (thresholds chosen per
label on validation) in place of accuracy and balanced accuracy.
"""

from __future__ import annotations

import csv
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from matplotlib.figure import Figure  # not pyplot: no global backend or state to set, nothing to close

from headstart.core.errors import DataError, HeadstartError, UsageError
from headstart.core.io import write_json, write_text
from headstart.core.preprocessing import Preprocessing
from headstart.data.check import scan
from headstart.data.images import load_image
from headstart.data.multilabel import TASK as MULTILABEL
from headstart.data.multilabel import (
    MultiLabelSplits,
    discover_multilabel,
    draw_subset,
    is_multilabel_csv,
    iterative_split,
    names,
)
from headstart.data.rundir import COMPARE_MEASURES, COMPARE_RESULTS, COMPARE_TABLE, CompareMeasure, RunDir
from headstart.data.sources import DataSplits, discover, stratified_split
from headstart.report import write_report
from headstart.training.config import CompareConfig
from headstart.training.loop import TrainingDiverged
from headstart.training.strategy import make_strategy
from headstart.training.train import TrainConfig, log, train
from headstart.zoo import get_spec

SINGLE = COMPARE_MEASURES[None]


def trains_by_gradient(strategy: str) -> bool:
    """Whether some phase of ``strategy`` trains by gradient descent, so that its learning rate matters
    (``linear-probe`` fits its head in closed form on frozen features and chooses C on validation itself)."""
    return any(phase.fit != "features" for phase in make_strategy(strategy).phases)


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


def _write_manifest(path: Path, splits: dict[str, list], label_text: Callable[[object], str],
                    column: str = "label") -> None:
    """A CSV of every split's images (absolute paths), each with ``label_text`` of its label in ``column``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", column, "split"])
        for split, samples in splits.items():
            for p, y in samples:
                w.writerow([str(Path(p).resolve()), label_text(y), split])


def _image_side(samples) -> int:
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
    pool, test = _readable(pool, test)
    return DataSplits(splits.classes, pool, [], test, layout=splits.layout)


def _readable(pool: list, test: list) -> tuple[list, list]:
    """The pool and the test images without the files that cannot be decoded, each of those named."""
    pool, bad = scan(pool)
    test, bad_test = scan(test)
    for p, r in bad + bad_test:
        log(f"skipping {p}: {r}")
    return pool, test


def summarise(results: list[dict], measure: CompareMeasure = SINGLE) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["strategy"], r[measure.budget]), []).append(r)
    rows = []
    for (strategy, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        def ms(key):
            vals = [r[key] for r in rs if r.get(key) is not None]
            return (statistics.mean(vals) if vals else None, statistics.stdev(vals) if len(vals) > 1 else 0.0)
        rows.append({"strategy": strategy, measure.budget: n, "seeds": len(rs),
                     **{f"{k}_mean": ms(k)[0] for k in (measure.score, measure.second, "seconds", "best_epoch",
                                                        "epochs_run")},
                     **{f"{k}_std": ms(k)[1] for k in (measure.score, measure.second, "seconds")},
                     "lrs": [r.get("lr") for r in rs],  # the rate each seed chose; None: the default
                     "lr_edges": [r.get("lr_edge") for r in rs],  # per seed: None (interior), "lower" or "upper"
                     "lr_source": rs[0].get("lr_source"),
                     **{k: rs[0].get(k) for k in ("trainable_params", "model", "image_size", "weights", "phases")}})
    return rows


def plot(rows: list[dict], results: list[dict], out: Path, measure: CompareMeasure = SINGLE) -> list[str]:
    """The test figure (accuracy; mAP for multi-label data) against the budget, and against wall time, as PNGs in
    ``out``; returns their names."""
    m = measure
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for s in strategies:
        rs = sorted((r for r in rows if r["strategy"] == s), key=lambda r: r[m.budget])
        ax.errorbar([r[m.budget] for r in rs], [100 * r[f"{m.score}_mean"] for r in rs],
                    yerr=[100 * r[f"{m.score}_std"] for r in rs], marker="o", capsize=3,
                    label=f"{s} ({rs[0]['model']})")
    ax.set_xscale("log")
    ax.set_xlabel(m.axis)
    ax.set_ylabel(f"test {m.name} (%)")
    ax.set_title("Data efficiency: transfer learning vs. training from scratch")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / m.plots[0], dpi=120)

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for s in strategies:
        rs = [r for r in results if r["strategy"] == s]
        ax.scatter([r["seconds"] for r in rs], [100 * r[m.score] for r in rs], label=s, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("wall time per run (s)")
    ax.set_ylabel(f"test {m.name} (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / m.plots[1], dpi=120)
    return list(m.plots)


def _lrs(lrs) -> str:
    return ", ".join(f"{lr:g}" for lr in lrs)


def lr_text(row: dict) -> str:
    """The rates a summary row's seeds chose, each marked when it sat at the edge of its grid; or why none."""
    if row.get("lr_source") == "not used" or (row.get("lr_source") is None and row["strategy"] == "linear-probe"):
        return "none (C chosen on validation)"
    if not any(lr is not None for lr in row["lrs"]):
        return "default, not swept"
    edges = row.get("lr_edges") or [None] * len(row["lrs"])
    return ", ".join(f"{lr:g}" + (f" ({edge} edge)" if edge else "") for lr, edge in zip(row["lrs"], edges))


def edge_warnings(results: list[dict], measure: CompareMeasure = SINGLE) -> list[str]:
    """One line per run whose chosen learning rate is still at the edge of its grid after the widening."""
    return [f"{r['strategy']}, {r[measure.budget]} {measure.budget_head}, seed {r['seed']}: {r['lr']:g} is the "
            f"{r['lr_edge']} edge of {{{_lrs(r['lr_grid'])}}}" for r in results if r.get("lr_edge")]


def setup_lines(rows: list[dict], cfg: CompareConfig, measure: CompareMeasure = SINGLE) -> list[str]:
    """What each side got, in words, from the runs' own records: model, weights, input size, schedule, patience."""
    widening = (f"widened by one step beyond an edge (same ratio) while the winner sat there, at most "
                f"{cfg.lr_extensions} time(s), each rate a full run (the wall time counts them all)")
    lines = []
    scratch = [r for r in rows if r["strategy"] == "scratch"]
    if scratch:
        chosen = "; ".join(f"{r[measure.budget]} {measure.budget_unit}: {lr_text(r)}" for r in scratch)
        lines.append(f"- **scratch**: {scratch[0]['model']} from random weights at {scratch[0]['image_size']} px, "
                     f"every layer and BatchNorm training; up to {cfg.scratch_epochs} epochs, early stopping after "
                     f"{cfg.scratch_patience} epochs without a lower validation loss (after temperature scaling, as "
                     f"every run selects). Learning rate chosen per budget and seed by that loss from "
                     f"{{{_lrs(cfg.scratch_lrs)}}}, {widening}; chosen, by seed: {chosen}.")
    for strategy in dict.fromkeys(r["strategy"] for r in rows if r["strategy"] != "scratch"):
        ours = [r for r in rows if r["strategy"] == strategy]
        r = ours[0]
        if r.get("lr_source") == "swept":
            rate = (f"learning rate (the head's; the phases scale it as above) chosen per budget and seed by the "
                    f"validation loss from {{{_lrs(cfg.lrs or [])}}}, {widening}; chosen, "
                    f"by seed: " + "; ".join(f"{o[measure.budget]} {measure.budget_unit}: {lr_text(o)}"
                                             for o in ours))
        elif r.get("lr_source") == "default" or (r.get("lr_source") is None and trains_by_gradient(strategy)):
            rate = "default rate, not swept"
        else:
            rate = "its head is fitted in closed form and chooses its own C on the validation images (no learning rate)"
        lines.append(f"- **{strategy}**: {r['model']} with pretrained weights ({r['weights']}) at {r['image_size']} "
                     f"px; {r['phases']}; {rate}; no head refitted on the validation images.")
    return lines


def accuracy_text(row: dict, sign: str = "", key: str = "test_acc") -> str:
    """Mean test accuracy (or the figure ``key``) in percent (``sign``: "%" or nothing), with the spread over seeds
    when there was more than one (one seed has none to show: "± 0.0" would claim a precision nobody measured)."""
    mean = f"{100 * row[f'{key}_mean']:.1f}{sign}"
    return f"{mean} ± {100 * row[f'{key}_std']:.1f}" if row.get("seeds", 1) > 1 else f"{mean} (1 seed)"


def figure_text(row: dict, key: str, measure: CompareMeasure = SINGLE, scale: float = 100.0, sign: str = "") -> str:
    """A summary row's mean of ``key`` (times ``scale``), with its spread over seeds where ``measure`` shows it."""
    mean = f"{scale * row[f'{key}_mean']:.1f}{sign}"
    shown = key in measure.spread and row.get("seeds", 1) > 1
    return f"{mean} ± {scale * row[f'{key}_std']:.1f}" if shown else mean


def markdown(rows: list[dict], results: list[dict], cfg: CompareConfig, n_test: int, measure: CompareMeasure = SINGLE,
             intro: str | None = None) -> str:
    """compare.md; ``intro`` says which images each run saw (default: the single-label sentence)."""
    m = measure
    intro = intro or (f"{n_test} test images; validation {cfg.val_per_class} images per class; {cfg.seeds} seed(s). "
                      "Accuracy is mean ± std over seeds.")
    lines = [f"# headstart compare: {cfg.data}", "", intro, "", "What each side got:", "", *setup_lines(rows, cfg, m),
             ""]
    warnings = edge_warnings(results, m)
    if warnings:
        lines += [f"**Warning: at the edge of the grid.** In {len(warnings)} run(s) the chosen learning rate is still "
                  f"the lowest or highest tried after {cfg.lr_extensions} widening(s); a better rate may lie beyond "
                  "it:", "", *[f"- {w}" for w in warnings], ""]
    lines += [f"| {m.budget_head} | strategy | model | px | {m.score_head} | {m.second_head} | wall time (s) | "
              "epochs run | best epoch | lr | trainable params |",
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r[m.budget]} | {r['strategy']} | {r['model']} | {r['image_size']} | "
                     f"{accuracy_text(r, key=m.score)} | "
                     f"{figure_text(r, m.second, m)} | {figure_text(r, 'seconds', m, 1.0)} | "
                     f"{r['epochs_run_mean']:.1f} | {r['best_epoch_mean']:.1f} | {lr_text(r)} | "
                     f"{r['trainable_params']:,} |")
    sweeps = [(r, c) for r in results for c in r.get("lr_sweep", [])]
    if sweeps:
        lines += ["", "Learning-rate sweeps (every candidate, in the order run; the lowest validation loss is "
                  "chosen; widening step 0 is the given grid):",
                  "", f"| strategy | {m.budget_head} | seed | lr | step | val loss (calibrated) | {m.val_head} | "
                  f"{m.score_head} | epochs run | best epoch | chosen |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r, c in sweeps:
            head = (f"| {r['strategy']} | {r[m.budget]} | {r['seed']} | {c['lr']:g} | "
                    f"{c.get('extension', 0)} |")
            if c.get("diverged"):
                lines.append(f"{head} diverged | | | | | |")
                continue
            chosen = ("yes" + (f" ({r['lr_edge']} edge)" if r.get("lr_edge") else "")) if c["lr"] == r["lr"] else ""
            lines.append(f"{head} {c['best_val_loss']:.3f} | {100 * c[m.val]:.1f} | {100 * c[m.score]:.1f} | "
                         f"{c['epochs_run']} | {c['best_epoch']} | {chosen} |")
    return "\n".join(lines + ["", f"![{m.name} vs {m.budget_unit}]({m.plots[0]})", ""])


def _run_facts(run_dir: Path) -> dict:
    """What a finished run actually used and did, from its own record: input size, weights, epochs run."""
    run = RunDir(run_dir)
    config, epochs_run = run.config(), len(run.metrics())
    phases = [f"{p['name']}: head fitted on frozen features" if p["fit"] == "features" else
              f"{p['name']}: up to {p['epochs']} epochs at lr {p['lr']:g} (backbone x{p['backbone_lr_scale']:g}), "
              f"{p['warmup_epochs']:g} warm-up epoch(s) then cosine, early stopping after {config['patience']} "
              "epochs without a lower validation loss" for p in config.get("strategy_phases", [])]
    return {"image_size": Preprocessing.of(config["preprocessing"]).image_size, "weights": config["weights_source"],
            "epochs_run": epochs_run, "phases": "; ".join(phases)}


def _rate(value: float) -> float:
    return float(f"{value:.3g}")  # 3 significant digits: 1e-3 / 3 is 3.33e-4, not 0.0003333333333333333


def next_rate(grid: list[float], edge: str) -> float:
    """The rate one step beyond ``edge`` ("lower" or "upper") of the sorted ``grid``, at the ratio of its two
    outermost rates on that side (3 for a one-rate grid). A grid on the 1-3-10 ladder stays on it (1e-3, 3e-3 ->
    3e-4, 1e-4, ... and 1e-2, 3e-2, ...): the step from 1 to 3 and from 3 to 10 is not the same ratio."""
    lower = edge == "lower"
    a = grid[0] if lower else grid[-1]
    ratio = (grid[1] / grid[0] if lower else grid[-1] / grid[-2]) if len(grid) > 1 else 3.0
    mantissa, exponent = (float(x) for x in f"{a:.0e}".split("e"))
    if _rate(a) == float(f"{a:.0e}") and mantissa in (1.0, 3.0) and 2.5 <= ratio <= 4.0:  # on the ladder
        m, e = {(1.0, True): (3.0, exponent - 1), (3.0, True): (1.0, exponent),
                (1.0, False): (3.0, exponent), (3.0, False): (1.0, exponent + 1)}[(mantissa, lower)]
        return float(f"{m:g}e{e:g}")
    return _rate(a / ratio if lower else a * ratio)


def _edge(grid: list[float], sweep: list[dict]) -> str | None:
    """Where the best rate of ``sweep`` sits on ``grid``: "lower", "upper" or None (interior). A diverged rate
    counts as worse than any that finished; when every rate diverged the answer is "lower" (go lower)."""
    done = [c for c in sweep if not c.get("diverged")]
    if not done:
        return "lower"
    best = min(done, key=lambda c: c["best_val_loss"])["lr"]
    if len(grid) == 1:
        return "lower"  # one rate is both edges; widening adds a rate on each side (see sweep_lr)
    return "lower" if best == grid[0] else "upper" if best == grid[-1] else None


def sweep_lr(base: TrainConfig, lrs: list[float], max_extensions: int = 3, what: str = "scratch",
             measure: CompareMeasure = SINGLE) -> tuple[dict, list[dict]]:
    """One full run of ``base`` per learning rate, each in ``<base.out>-lr<lr>``; returns the summary of the run
    with the lowest validation loss (with its ``lr`` and :func:`_run_facts`) and one record per rate tried.

    The figure is ``best_val_loss``, the validation loss after temperature scaling that already chose each run's
    epoch: continuous, where accuracy on a few hundred validation images moves in steps and ties, and blind to mere
    over-confidence. A rate whose training diverged loses; if every rate diverges the error is raised.

    A winner at an edge of the grid says only that the best rate may lie beyond it, so the grid widens: while the
    best rate is the lowest (or highest) tried, one more rate is run a step beyond that edge (:func:`next_rate`),
    at most ``max_extensions`` times. The summary records the grid tried (``lr_grid``) and ``lr_edge``: None when
    the winner is interior, else "lower" or "upper" (the cap was reached with the winner still at that edge).
    """
    if not lrs:
        raise UsageError(f"the {what} learning-rate grid is empty; give at least one rate, e.g. 1e-3,3e-3.")
    sweep: list[dict] = []
    best = None

    def run(lr: float, extension: int) -> None:
        nonlocal best
        out = Path(f"{base.out}-lr{lr:g}")
        log(f"   lr {lr:g}" + (f" (widening the grid, step {extension})" if extension else ""))
        try:
            summary = {"lr": lr, **train(replace(base, lr=lr, out=str(out)))}
        except TrainingDiverged as exc:
            log(f"   lr {lr:g} diverged: {exc}")
            sweep.append({"lr": lr, "diverged": True, "best_val_loss": None, "extension": extension})
            return
        summary.update(_run_facts(out))
        sweep.append({**{k: summary.get(k) for k in ("lr", "best_val_loss", measure.val, measure.score, "best_epoch",
                                                    "epochs_run", "seconds")}, "extension": extension})
        if best is None or summary["best_val_loss"] < best["best_val_loss"]:
            best = summary

    grid = sorted(set(lrs))
    for lr in grid:
        run(lr, 0)
    edge = _edge(grid, sweep)
    for extension in range(1, max_extensions + 1):
        if edge is None:
            break
        added = [next_rate(grid, "lower"), next_rate(grid, "upper")] if len(grid) == 1 else [next_rate(grid, edge)]
        for lr in added:
            run(lr, extension)
        grid = sorted(set(grid + added))
        edge = _edge(grid, sweep)
    if best is None:
        raise TrainingDiverged(f"every {what} learning rate in {', '.join(f'{lr:g}' for lr in grid)} diverged; "
                               "add lower ones to the grid.")
    if edge is not None:
        log(f"   lr {best['lr']:g} is still at the {edge} edge of the grid after {max_extensions} widening(s)")
    best.update(lr_grid=grid, lr_edge=edge)
    return best, sweep


def _single_label_subsets(cfg: CompareConfig, data: DataSplits, seed: int, out: Path) -> Iterator[tuple[int, Path]]:
    """Per labels-per-class budget, the manifest of ``seed``'s draw: that many training images per class, the seed's
    validation images (drawn once) and the test images."""
    rng = random.Random(1000 + seed)
    val = _draw(data.train, cfg.val_per_class, rng, set())
    val_paths = {p for p, _ in val}
    for n in cfg.labels_per_class:
        train_subset = _draw(data.train, n, random.Random(2000 + 97 * seed + n), val_paths)
        manifest = out / "subsets" / f"n{n}-seed{seed}.csv"
        _write_manifest(manifest, {"train": train_subset, "val": val, "test": data.test}, data.classes.__getitem__)
        yield n, manifest


def multilabel_pool_and_test(cfg: CompareConfig) -> MultiLabelSplits:
    """The training pool (``train``) and the fixed test images of a multi-label CSV: its test split, else a seeded
    hold-out by iterative stratification, capped at ``max_test`` by the same draw; unusable rows and files left out."""
    splits = discover_multilabel(cfg.data, val_fraction=0.0, seed=0)
    pool, test = splits.train + splits.val, splits.test
    if not test:
        pool, test = iterative_split(pool, cfg.test_fraction, seed=12345)
    if cfg.max_test and len(test) > cfg.max_test:
        test, _ = draw_subset(test, cfg.max_test, seed=0)
    for problem in splits.problems:  # unusable rows of the CSV, then (below) files that cannot be decoded
        if problem.skip:
            log(f"skipping: {problem.message}")
    pool, test = _readable(pool, test)
    return replace(splits, train=pool, val=[], test=test)


def multilabel_budgets(cfg: CompareConfig, data: MultiLabelSplits) -> tuple[int, list[int], list[int]]:
    """The validation images per seed, the training-image budgets that fit beside them in the pool, and those that do
    not (left out, and said)."""
    if any(n < 1 for n in cfg.train_images) or (cfg.val_images is not None and cfg.val_images < 1):
        raise UsageError(f"training and validation images must be 1 or more, e.g. 50,100,250 and 100; got "
                         f"{cfg.train_images} and {cfg.val_images}.")
    n_val = cfg.val_images or cfg.val_per_class * len(data.labels)
    room = len(data.train) - n_val
    if room < 1:
        raise DataError(f"{cfg.data} has {len(data.train)} training images: none left to train on beside {n_val} "
                        "validation images; ask for fewer validation images, or add images.")
    fit, skipped = [n for n in cfg.train_images if n <= room], [n for n in cfg.train_images if n > room]
    if not fit:
        raise UsageError(f"every budget ({', '.join(map(str, cfg.train_images))} training images) is more than the "
                         f"{room} images of {cfg.data} left beside {n_val} validation images; ask for {room} or fewer.")
    if skipped:
        log(f"leaving out the budget(s) of {', '.join(map(str, skipped))} training images: {cfg.data} has {room} "
            f"beside {n_val} validation images")
    return n_val, fit, skipped


def multilabel_subsets(data: MultiLabelSplits, budgets: list[int], n_val: int, seed: int, out: Path,
                       missing: dict[str, list[str]] | None = None) -> Iterator[tuple[int, Path]]:
    """Per budget, the manifest of ``seed``'s draw from a multi-label pool: ``n_val`` validation images drawn once
    for the seed, then that budget's training images from the rest, both by iterative stratification so that every
    label keeps positives where the number allows (:func:`draw_subset`), and the test images. Labels a training
    subset could not give a positive go into ``missing`` (manifest name -> labels)."""
    val, rest = draw_subset(data.train, n_val, 1000 + seed)
    for n in budgets:
        train_subset, _ = draw_subset(rest, n, 2000 + 97 * seed + n)
        manifest = out / "subsets" / f"n{n}-seed{seed}.csv"
        _write_manifest(manifest, {"train": train_subset, "val": val, "test": data.test},
                        lambda y: ";".join(names(data.labels, y)), "labels")
        present = {name for _, y in train_subset for name in names(data.labels, y)}
        pool = {name for _, y in rest for name in names(data.labels, y)}
        if lacking := [name for name in data.labels if name in pool and name not in present]:
            log(f"{n} training images (seed {seed}) hold no image of {', '.join(lacking)}")
            if missing is not None:
                missing[manifest.stem] = lacking
        yield n, manifest


def _multilabel_intro(cfg: CompareConfig, n_test: int, n_val: int, skipped: list[int],
                      missing: dict[str, list[str]]) -> str:
    text = (f"{n_test} test images, the same for every run; {cfg.seeds} seed(s). The budget is a number of labelled "
            f"training images (an image has several labels, so labels per class mean nothing): per seed, {n_val} "
            "validation images (not counted in the budget) are drawn once, then each budget's training images from "
            "the rest, both by iterative stratification so that every label keeps positives where the budget allows; "
            "every strategy trains on the same subset (subsets/). Test mAP is the macro mean over labels of each "
            "label's average precision (no threshold); exact match is the share of test images whose whole label set "
            "is predicted, at thresholds each run chose per label on its validation images. Figures are mean ± std "
            "over seeds.")
    if skipped:
        text += (f" Budgets left out: {', '.join(map(str, skipped))} training images (more than the pool holds "
                 "beside the validation images).")
    if missing:
        text += " Labels without a training image in a subset: " + "; ".join(
            f"{k}: {', '.join(v)}" for k, v in missing.items()) + "."
    return text


def compare(cfg: CompareConfig) -> dict:
    """Runs every strategy x budget x seed and writes compare.json, compare.md and the plots. The budget is labels
    per class, or on a multi-label CSV a number of labelled training images."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    multilabel = is_multilabel_csv(cfg.data)
    m = COMPARE_MEASURES[MULTILABEL if multilabel else None]
    task = {"task": MULTILABEL} if multilabel else {}
    missing: dict[str, list[str]] = {}
    if multilabel:
        data = multilabel_pool_and_test(cfg)
        n_val, budgets, skipped = multilabel_budgets(cfg, data)
    else:
        data = pool_and_test(cfg)
    side = _image_side(data.train)
    scratch_model = cfg.scratch_model or ("resnet20" if side <= 64 else cfg.model)
    get_spec(cfg.model), get_spec(scratch_model)  # fail early on a wrong name
    t_start, results = time.time(), []
    done_path = out / COMPARE_RESULTS
    for seed in range(cfg.seeds):
        subsets = (multilabel_subsets(data, budgets, n_val, seed, out, missing) if multilabel
                   else _single_label_subsets(cfg, data, seed, out))
        for n, manifest in subsets:
            for strategy in cfg.strategies:
                if cfg.budget_minutes and time.time() - t_start > 60 * cfg.budget_minutes:
                    log(f"budget of {cfg.budget_minutes} minutes spent; stopping before {strategy} n={n} seed={seed}")
                    break
                scratch = strategy == "scratch"
                model = scratch_model if scratch else cfg.model
                log(f"== {strategy} ({model}), {n} {m.budget_head}, seed {seed}")
                run = TrainConfig(
                    data=str(manifest), out=str(out / "runs" / f"{strategy}-n{n}-seed{seed}"), model=model,
                    strategy=strategy, epochs=cfg.scratch_epochs if scratch else cfg.epochs, seed=seed,
                    image_size=(cfg.scratch_image_size or cfg.image_size) if scratch else cfg.image_size,
                    batch_size=cfg.batch_size, workers=cfg.workers,
                    patience=cfg.scratch_patience if scratch else cfg.patience, refit=False, overwrite=True,
                    report=False)
                grid = cfg.scratch_lrs if scratch else cfg.lrs if trains_by_gradient(strategy) else None
                if grid:
                    summary, sweep = sweep_lr(run, grid, cfg.lr_extensions, what=strategy, measure=m)
                    # The rate was chosen by training every candidate: the wall time counts all of them.
                    extra = {"seconds": sum(c.get("seconds") or 0.0 for c in sweep), "lr_sweep": sweep,
                             "lr_source": "swept"}
                else:
                    summary = {**train(run), **_run_facts(Path(run.out))}
                    extra = {"lr_source": "default" if trains_by_gradient(strategy) else "not used"}
                results.append({"strategy": strategy, m.budget: n, "seed": seed, "model": model,
                                **{k: summary.get(k) for k in (m.score, m.second, "seconds", "best_epoch",
                                                               "trainable_params", m.val, "best_val_loss", "lr",
                                                               "lr_grid", "lr_edge", "image_size", "weights",
                                                               "epochs_run", "phases")},
                                **extra})
                rows = summarise(results, m)
                write_json(done_path, {"config": cfg.__dict__, **task, "test_images": len(data.test), "rows": rows,
                                       "runs": results})
    rows = summarise(results, m)
    figures = plot(rows, results, out, m)
    intro = _multilabel_intro(cfg, len(data.test), n_val, skipped, missing) if multilabel else None
    write_text(out / COMPARE_TABLE, markdown(rows, results, cfg, len(data.test), m, intro))
    write_json(done_path, {"config": cfg.__dict__, **task, "test_images": len(data.test), "rows": rows,
                           "runs": results, "figures": figures})
    try:
        log(f"report: {write_report(out)}")
    except (HeadstartError, OSError) as exc:
        log(f"could not write the report ({exc}); the comparison is complete. Try `headstart report {out}`.")
    return {"rows": rows, "runs": results, "test_images": len(data.test), "figures": figures, **task}
