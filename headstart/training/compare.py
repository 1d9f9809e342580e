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
"""

from __future__ import annotations

import csv
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path

from matplotlib.figure import Figure  # not pyplot: no global backend or state to set, nothing to close

from headstart.core.errors import HeadstartError, UsageError
from headstart.core.io import write_json, write_text
from headstart.core.preprocessing import Preprocessing
from headstart.data.check import scan
from headstart.data.images import load_image
from headstart.data.rundir import COMPARE_PLOTS, COMPARE_RESULTS, COMPARE_TABLE, RunDir
from headstart.data.sources import DataSplits, discover, stratified_split
from headstart.report import write_report
from headstart.training.config import CompareConfig
from headstart.training.loop import TrainingDiverged
from headstart.training.strategy import make_strategy
from headstart.training.train import TrainConfig, log, train
from headstart.zoo import get_spec


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


def _write_manifest(path: Path, classes: list[str], splits: dict[str, list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for split, samples in splits.items():
            for p, y in samples:
                w.writerow([str(Path(p).resolve()), classes[y], split])


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
                     **{f"{k}_mean": ms(k)[0] for k in ("test_acc", "test_balanced_acc", "seconds", "best_epoch",
                                                        "epochs_run")},
                     **{f"{k}_std": ms(k)[1] for k in ("test_acc", "test_balanced_acc", "seconds")},
                     "lrs": [r.get("lr") for r in rs],  # the rate each seed chose; None: the default
                     "lr_edges": [r.get("lr_edge") for r in rs],  # per seed: None (interior), "lower" or "upper"
                     "lr_source": rs[0].get("lr_source"),
                     **{k: rs[0].get(k) for k in ("trainable_params", "model", "image_size", "weights", "phases")}})
    return rows


def plot(rows: list[dict], results: list[dict], out: Path) -> list[str]:
    """Accuracy against labels per class, and against wall time, as PNGs in ``out``; returns their names."""
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
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
    fig.savefig(out / COMPARE_PLOTS[0], dpi=120)

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for s in strategies:
        rs = [r for r in results if r["strategy"] == s]
        ax.scatter([r["seconds"] for r in rs], [100 * r["test_acc"] for r in rs], label=s, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("wall time per run (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / COMPARE_PLOTS[1], dpi=120)
    return list(COMPARE_PLOTS)


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


def edge_warnings(results: list[dict]) -> list[str]:
    """One line per run whose chosen learning rate is still at the edge of its grid after the widening."""
    return [f"{r['strategy']}, {r['labels_per_class']} labels/class, seed {r['seed']}: {r['lr']:g} is the "
            f"{r['lr_edge']} edge of {{{_lrs(r['lr_grid'])}}}" for r in results if r.get("lr_edge")]


def setup_lines(rows: list[dict], cfg: CompareConfig) -> list[str]:
    """What each side got, in words, from the runs' own records: model, weights, input size, schedule, patience."""
    widening = (f"widened by one step beyond an edge (same ratio) while the winner sat there, at most "
                f"{cfg.lr_extensions} time(s), each rate a full run (the wall time counts them all)")
    lines = []
    scratch = [r for r in rows if r["strategy"] == "scratch"]
    if scratch:
        chosen = "; ".join(f"{r['labels_per_class']} labels: {lr_text(r)}" for r in scratch)
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
                    f"by seed: " + "; ".join(f"{o['labels_per_class']} labels: {lr_text(o)}" for o in ours))
        elif r.get("lr_source") == "default" or (r.get("lr_source") is None and trains_by_gradient(strategy)):
            rate = "default rate, not swept"
        else:
            rate = "its head is fitted in closed form and chooses its own C on the validation images (no learning rate)"
        lines.append(f"- **{strategy}**: {r['model']} with pretrained weights ({r['weights']}) at {r['image_size']} "
                     f"px; {r['phases']}; {rate}; no head refitted on the validation images.")
    return lines


def accuracy_text(row: dict, sign: str = "") -> str:
    """Mean test accuracy in percent (``sign``: "%" or nothing), with the spread over seeds when there was more than
    one (one seed has none to show: "± 0.0" would claim a precision nobody measured)."""
    mean = f"{100 * row['test_acc_mean']:.1f}{sign}"
    return f"{mean} ± {100 * row['test_acc_std']:.1f}" if row.get("seeds", 1) > 1 else f"{mean} (1 seed)"


def markdown(rows: list[dict], results: list[dict], cfg: CompareConfig, n_test: int) -> str:
    lines = [f"# headstart compare: {cfg.data}", "",
             f"{n_test} test images; validation {cfg.val_per_class} images per class; {cfg.seeds} seed(s). "
             "Accuracy is mean ± std over seeds.", "", "What each side got:", "", *setup_lines(rows, cfg), ""]
    warnings = edge_warnings(results)
    if warnings:
        lines += [f"**Warning: at the edge of the grid.** In {len(warnings)} run(s) the chosen learning rate is still "
                  f"the lowest or highest tried after {cfg.lr_extensions} widening(s); a better rate may lie beyond "
                  "it:", "", *[f"- {w}" for w in warnings], ""]
    lines += ["| labels/class | strategy | model | px | test acc | balanced acc | wall time (s) | epochs run "
              "| best epoch | lr | trainable params |",
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['labels_per_class']} | {r['strategy']} | {r['model']} | {r['image_size']} | "
                     f"{accuracy_text(r)} | "
                     f"{100 * r['test_balanced_acc_mean']:.1f} | {r['seconds_mean']:.1f} | "
                     f"{r['epochs_run_mean']:.1f} | {r['best_epoch_mean']:.1f} | {lr_text(r)} | "
                     f"{r['trainable_params']:,} |")
    sweeps = [(r, c) for r in results for c in r.get("lr_sweep", [])]
    if sweeps:
        lines += ["", "Learning-rate sweeps (every candidate, in the order run; the lowest validation loss is "
                  "chosen; widening step 0 is the given grid):",
                  "", "| strategy | labels/class | seed | lr | step | val loss (calibrated) | val acc | test acc "
                  "| epochs run | best epoch | chosen |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r, c in sweeps:
            head = (f"| {r['strategy']} | {r['labels_per_class']} | {r['seed']} | {c['lr']:g} | "
                    f"{c.get('extension', 0)} |")
            if c.get("diverged"):
                lines.append(f"{head} diverged | | | | | |")
                continue
            chosen = ("yes" + (f" ({r['lr_edge']} edge)" if r.get("lr_edge") else "")) if c["lr"] == r["lr"] else ""
            lines.append(f"{head} {c['best_val_loss']:.3f} | {100 * c['val_acc']:.1f} | {100 * c['test_acc']:.1f} | "
                         f"{c['epochs_run']} | {c['best_epoch']} | {chosen} |")
    return "\n".join(lines + ["", f"![accuracy vs labels]({COMPARE_PLOTS[0]})", ""])


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


def sweep_lr(base: TrainConfig, lrs: list[float], max_extensions: int = 3,
             what: str = "scratch") -> tuple[dict, list[dict]]:
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
        sweep.append({**{k: summary.get(k) for k in ("lr", "best_val_loss", "val_acc", "test_acc", "best_epoch",
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


def compare(cfg: CompareConfig) -> dict:
    """Runs every strategy x labels-per-class x seed and writes compare.json, compare.md and the plots."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    data = pool_and_test(cfg)
    side = _image_side(data.train)
    scratch_model = cfg.scratch_model or ("resnet20" if side <= 64 else cfg.model)
    get_spec(cfg.model), get_spec(scratch_model)  # fail early on a wrong name
    t_start, results = time.time(), []
    done_path = out / COMPARE_RESULTS
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
                log(f"== {strategy} ({model}), {n} labels/class, seed {seed}")
                run = TrainConfig(
                    data=str(manifest), out=str(out / "runs" / f"{strategy}-n{n}-seed{seed}"), model=model,
                    strategy=strategy, epochs=cfg.scratch_epochs if scratch else cfg.epochs, seed=seed,
                    image_size=(cfg.scratch_image_size or cfg.image_size) if scratch else cfg.image_size,
                    batch_size=cfg.batch_size, workers=cfg.workers,
                    patience=cfg.scratch_patience if scratch else cfg.patience, refit=False, overwrite=True,
                    report=False)
                grid = cfg.scratch_lrs if scratch else cfg.lrs if trains_by_gradient(strategy) else None
                if grid:
                    summary, sweep = sweep_lr(run, grid, cfg.lr_extensions, what=strategy)
                    # The rate was chosen by training every candidate: the wall time counts all of them.
                    extra = {"seconds": sum(c.get("seconds") or 0.0 for c in sweep), "lr_sweep": sweep,
                             "lr_source": "swept"}
                else:
                    summary = {**train(run), **_run_facts(Path(run.out))}
                    extra = {"lr_source": "default" if trains_by_gradient(strategy) else "not used"}
                results.append({"strategy": strategy, "labels_per_class": n, "seed": seed, "model": model,
                                **{k: summary.get(k) for k in ("test_acc", "test_balanced_acc", "seconds",
                                                               "best_epoch", "trainable_params", "val_acc",
                                                               "best_val_loss", "lr", "lr_grid", "lr_edge",
                                                               "image_size", "weights", "epochs_run", "phases")},
                                **extra})
                rows = summarise(results)
                write_json(done_path, {"config": cfg.__dict__, "test_images": len(data.test), "rows": rows,
                                       "runs": results})
    rows = summarise(results)
    figures = plot(rows, results, out)
    write_text(out / COMPARE_TABLE, markdown(rows, results, cfg, len(data.test)))
    write_json(done_path, {"config": cfg.__dict__, "test_images": len(data.test), "rows": rows, "runs": results,
                           "figures": figures})
    try:
        log(f"report: {write_report(out)}")
    except (HeadstartError, OSError) as exc:
        log(f"could not write the report ({exc}); the comparison is complete. Try `headstart report {out}`.")
    return {"rows": rows, "runs": results, "test_images": len(data.test)}
