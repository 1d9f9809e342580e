"""The README's measured figures, rendered from the result files stored in docs/measurements: one source.

Each figure sits in README.md between ``<!-- figures:NAME -->`` and ``<!-- /figures:NAME -->``; this script
rewrites what lies between from the stored json, and ``--check`` fails (exit 1, with a diff) when README.md differs
from what it would write. ``tests/test_readme_figures.py`` runs the check, so a figure edited by hand, or a result
file replaced without re-rendering, fails the tests.

    python scripts/readme_figures.py           # rewrite README.md's figures from docs/measurements
    python scripts/readme_figures.py --check   # exit 1 and show the difference when README.md is stale
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import statistics
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASUREMENTS = ROOT / "docs" / "measurements"
README = ROOT / "README.md"

# The strategies in the order the table shows them, with what each trains.
TRAINS = {"scratch": "from random weights, own lr", "linear-probe": "head on frozen features",
          "fine-tune": "later half", "full": "every layer"}
SHORT_MODEL = {"efficientnet_lite0": "Lite0", "resnet20": "resnet20"}


def _points(x: float) -> str:
    return f"{100 * x:+.1f}".replace("-", "−")


def _wrap(text: str, indent: str, width: int = 116) -> str:
    return "\n".join(textwrap.wrap(text, width=width, initial_indent=indent, subsequent_indent=indent,
                                   break_on_hyphens=False))


def _rate(value: float) -> str:
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}" if float(f"{value:.0e}") == value else f"{value:g}"  # 1e-3, not 0.001


def _rates(values) -> str:
    return ", ".join(_rate(v) for v in values)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def refit_gains(result: dict, source: str) -> str:
    """The refit's gains in test points, and the refitted probe against scikit-learn's C = 1, per budget (means
    over the seeds of ``benchmarks/refit.py``'s json)."""
    by_budget: dict[int, list[dict]] = {}
    for row in result["rows"]:
        by_budget.setdefault(row["labels_per_class"], []).append(row)
    budgets = sorted(by_budget)

    def mean(n: int, key: str) -> float:
        return statistics.mean(r[key] for r in by_budget[n])

    gains = [_points(mean(n, "refit_acc") - mean(n, "no_refit_acc")) for n in budgets]
    versus = [_points(mean(n, "refit_acc") - mean(n, "sklearn_c1_acc")) for n in budgets]
    seeds = len({r["seed"] for r in result["rows"]})
    text = (f"{_join(gains)} test points at {_join([str(n) for n in budgets])} labels per class (mean of {seeds} "
            f"seeds, `{source}`); against a plain scikit-learn `LogisticRegression(C=1)` fitted on the same train + "
            f"validation images the refitted probe is {_join(versus)} points.")
    return "\n" + _wrap(text, "  ")


def data_efficiency(result: dict, source: str) -> str:
    """The data-efficiency table (test accuracy %, mean ± sd over seeds) and what each side's learning rate was."""
    rows, runs, cfg = result["rows"], result["runs"], result["config"]
    budgets = sorted({r["labels_per_class"] for r in rows})
    strategies = [s for s in TRAINS if any(r["strategy"] == s for r in rows)]
    seeds = sorted({r["seed"] for r in runs})
    cell = {(r["strategy"], r["labels_per_class"]): r for r in rows}

    def text(r: dict | None) -> str:
        if r is None:
            return "not run"
        fewer = f" ({r['seeds']} of {len(seeds)} seeds)" if r["seeds"] < len(seeds) else ""
        if r["seeds"] == 1:
            return f"{100 * r['test_acc_mean']:.1f}{fewer}"
        return f"{100 * r['test_acc_mean']:.1f} ± {100 * r['test_acc_std']:.1f}{fewer}"

    lines = ["| labels per class | " + " | ".join(str(n) for n in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for s in strategies:
        model = next(r["model"] for r in rows if r["strategy"] == s)
        lines.append(f"| {s} ({SHORT_MODEL.get(model, model)}, {TRAINS[s]}) | "
                     + " | ".join(text(cell.get((s, n))) for n in budgets) + " |")
    margins = []
    for n in budgets:
        transfer = [cell[(s, n)]["test_acc_mean"] for s in strategies if s != "scratch" and (s, n) in cell]
        if transfer and ("scratch", n) in cell:
            margins.append(f"{_points(max(transfer) - cell[('scratch', n)]['test_acc_mean'])} at {n}")
    scratch = sorted((r for r in runs if r["strategy"] == "scratch"), key=lambda r: (r["labels_per_class"], r["seed"]))
    chosen = "; ".join(f"{n}: {_rates(r['lr'] for r in scratch if r['labels_per_class'] == n)}" for n in budgets
                       if any(r["labels_per_class"] == n for r in scratch))
    widened = "lr_edge" in (scratch[0] if scratch else {})
    edges = [f"{r['labels_per_class']} labels, seed {r['seed']} ({_rate(r['lr'])}, {r['lr_edge']} edge)"
             for r in runs if r.get("lr_edge")]
    grid = f"{{{_rates(cfg['scratch_lrs'])}}}"
    if widened:
        grid += (f", widened a step past a winning edge (same ratio) up to {cfg.get('lr_extensions', 3)} times; "
                 + (f"still at the edge of the grid: {'; '.join(edges)}" if edges else
                    "every chosen rate is interior to its final grid"))
    else:
        grid += ", not widened (this run predates the widening)"
    pretrained = ("the pretrained strategies ran at their default rates, not swept (linear-probe chooses its own C)"
                  if not cfg.get("lrs") else
                  f"the pretrained strategies' rates were swept from {{{_rates(cfg['lrs'])}}}")
    seed_text = (f"seed {seeds[0]} only" if len(seeds) == 1 else
                 f"mean ± sd (sample standard deviation) over seeds {_join([str(s) for s in seeds])}")
    facts = (f"Test accuracy %, {seed_text} (`{source}`), {result['test_images']:,} test images. Scratch's learning "
             f"rate, chosen per budget and seed by validation loss from {grid}; chosen, by budget (seeds in order): "
             f"{chosen}. {pretrained[0].upper() + pretrained[1:]}. Best transfer recipe minus scratch, in points: "
             f"{_join(margins)}.")
    return "\n\n" + "\n".join(lines) + "\n\n" + _wrap(facts, "") + "\n\n"


# marker name -> (the stored result file it renders, the renderer)
FIGURES = {
    "refit": ("refit_64px.json", refit_gains),
    "data-efficiency": ("data_efficiency_fashion_mnist.json", data_efficiency),
}


def render(readme: str, measurements: Path = MEASUREMENTS) -> str:
    """``readme`` with every figure between its markers rendered again from its stored json."""
    for name, (source, renderer) in FIGURES.items():
        pattern = re.compile(rf"(<!-- figures:{re.escape(name)} -->)(.*?)(<!-- /figures:{re.escape(name)} -->)",
                             re.DOTALL)
        if len(pattern.findall(readme)) != 1:
            raise SystemExit(f"README.md needs exactly one <!-- figures:{name} --> ... <!-- /figures:{name} --> "
                             f"pair; found {len(pattern.findall(readme))}.")
        body = renderer(json.loads((measurements / source).read_text()), f"docs/measurements/{source}")
        readme = pattern.sub(lambda m: m.group(1) + body + m.group(3), readme)
    return readme


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 when README.md differs from the rendering")
    args = p.parse_args(argv)
    current = README.read_text()
    rendered = render(current)
    if args.check:
        if rendered != current:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), rendered.splitlines(True),
                                                       "README.md", "rendered from docs/measurements"))
            print("README.md's figures differ from docs/measurements: run python scripts/readme_figures.py")
            return 1
        return 0
    if rendered != current:
        README.write_text(rendered)
        print("README.md: figures rewritten from docs/measurements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
