"""The report of a ``headstart compare`` folder: its tables and both plots in one self-contained page.

It reads the files ``compare`` writes (``compare.json``, ``compare.md``, ``accuracy_vs_labels.png``,
``accuracy_vs_time.png``; on multi-label data ``map_vs_train_images.png`` and ``map_vs_time.png``) and nothing else,
so a comparison still running (``compare.json`` is rewritten after every run; the markdown and the plots come at the
end) reports what it has so far. ``compare.json``'s ``task`` says which figures it holds (accuracy per labels per
class, or mAP per number of training images).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import headstart
from headstart.data.multilabel import TASK as MULTILABEL
from headstart.data.rundir import COMPARE_MEASURES, COMPARE_PLOTS, COMPARE_RESULTS, COMPARE_TABLE, CompareMeasure
from headstart.report.html import card, cards, details, duration, esc, figure, kv, page, para, pct, table

FIGURES = {**dict(zip(COMPARE_PLOTS, ("Test accuracy against labelled images per class (mean ± std over seeds; "
                                      "log scale).", "Test accuracy against wall time, one point per run (log "
                                                     "scale)."))),
           **dict(zip(COMPARE_MEASURES[MULTILABEL].plots,
                      ("Test mAP (macro) against labelled training images (mean ± std over seeds; log scale).",
                       "Test mAP (macro) against wall time, one point per run (log scale).")))}


def is_compare_folder(folder: str | Path) -> bool:
    return (Path(folder) / COMPARE_RESULTS).is_file()


def compare_report(folder: str | Path) -> str:
    """The HTML of a compare folder's report (see :func:`headstart.report.write_report`)."""
    folder = Path(folder)
    results = json.loads((folder / COMPARE_RESULTS).read_text())
    rows, runs, cfg = results.get("rows", []), results.get("runs", []), results.get("config", {})
    m = COMPARE_MEASURES[results.get("task")]
    sections = [("plots", "Data efficiency", _plots(folder, results, m)),
                ("table", "Results", _results(folder, rows, m)),
                ("runs", "Every run", _runs(runs, m)),
                ("settings", "Settings", kv([(k, f"<code>{esc(v)}</code>") for k, v in cfg.items()]))]
    title = f"headstart compare: {Path(str(cfg.get('data', folder))).name or folder.name}"
    subtitle = (f"<code>{esc(folder.resolve())}</code> · data <code>{esc(cfg.get('data', '?'))}</code> · "
                f"{datetime.fromtimestamp((folder / COMPARE_RESULTS).stat().st_mtime):%Y-%m-%d %H:%M}")
    footer = (f"Made by headstart {esc(headstart.__version__)} (<code>headstart report</code>) from compare.json, "
              "compare.md and the plots of this folder. Self-contained: it opens offline.")
    return page(title, subtitle, sections, lead=_lead(results, m), footer=footer)


def _lead(results: dict, m: CompareMeasure) -> str:
    rows, runs = results.get("rows", []), results.get("runs", [])
    items = []
    if rows:
        budget = max(r[m.budget] for r in rows)
        at = sorted((r for r in rows if r[m.budget] == budget and r.get(f"{m.score}_mean") is not None),
                    key=lambda r: -r[f"{m.score}_mean"])
        named = "" if m is COMPARE_MEASURES[None] else f"{m.score_head} · "  # accuracy goes without saying
        for i, r in enumerate(at):
            spread = (f"± {pct(r.get(f'{m.score}_std') or 0.0)} over {r['seeds']} seeds" if r["seeds"] > 1
                      else "1 seed")
            items.append(card(f"{r['strategy']} · {budget} {m.budget_head}", pct(r[f"{m.score}_mean"]),
                              f"{named}{spread} · {esc(r['model'])}", lead=i == 0))
    items.append(card("test images", f"{results.get('test_images', 0):,}", "the same for every run", small=True))
    items.append(card("runs", f"{len(runs):,}",
                      f"{duration(sum(r.get('seconds') or 0.0 for r in runs))} of training in all", small=True))
    text = para("Every strategy trained on the same labelled subsets, validated on the same images and was tested "
                "on the same held-out images; scratch chose its own learning rate (so did every strategy given a "
                "grid). The lead figures are the largest budget's." if rows else "No run has finished yet.")
    edges = [r for r in runs if r.get("lr_edge")]
    if edges:
        text += para(f"Warning: in {len(edges)} run(s) the chosen learning rate is at the edge of the grid (the "
                     "lowest or highest rate tried, after widening): a better rate may lie beyond it. compare.md "
                     "below lists them.", "note")
    if not results.get("figures"):
        text += para("This comparison has not finished (or was stopped): the plots and compare.md are written at "
                     "its end; the tables show the runs so far.", "note")
    return cards(items) + text


def _plots(folder: Path, results: dict, m: CompareMeasure) -> str:
    names = results.get("figures") or list(m.plots)
    shown = [figure((folder / n).read_bytes(), n, esc(FIGURES.get(n, n))) for n in names if (folder / n).is_file()]
    return f'<div class="pair">{"".join(shown)}</div>' if shown else para("No plots in this folder yet.", "note")


def _results(folder: Path, rows: list[dict], m: CompareMeasure) -> str:
    """compare.md as HTML (its setup notes and tables), or the rows of compare.json when it is not written yet."""
    md = folder / COMPARE_TABLE
    if md.is_file():
        return f'<div class="md">{markdown_html(md.read_text())}</div>'
    if not rows:
        return para("No results yet.", "note")
    body = [[esc(r["strategy"]), esc(r["model"]), str(r[m.budget]), esc(r.get("image_size")),
             f"{pct(r[f'{m.score}_mean'])} ± {pct(r.get(f'{m.score}_std') or 0.0)}", pct(r.get(f"{m.second}_mean")),
             duration(r.get("seconds_mean")), str(r["seeds"])] for r in rows]
    return table(["strategy", "model", m.budget_head, "px", m.score_head, m.second_head, "wall time", "seeds"], body,
                 left=2)


def _runs(runs: list[dict], m: CompareMeasure) -> str:
    if not runs:
        return para("No run has finished yet.", "note")
    body = [[esc(r["strategy"]), esc(r.get("model")), str(r[m.budget]), str(r["seed"]),
             pct(r.get(m.score)), pct(r.get(m.val)),
             f"{r['lr']:g}" if isinstance(r.get("lr"), (int, float)) else "default",
             esc(r.get("best_epoch")), esc(r.get("epochs_run")), duration(r.get("seconds"))] for r in runs]
    return details(f"all {len(runs)} runs", table(["strategy", "model", m.budget_head, "seed", m.score_head,
                                                   m.val_head, "lr", "best epoch", "epochs run", "wall time"], body,
                                                  left=2))


def markdown_html(text: str) -> str:
    """compare.md's markdown as HTML: its title dropped (the page has one) and its images left out (the plots
    section shows them inline). Raw HTML in the markdown is escaped, not passed through."""
    text = re.sub(r"\A# .*\n", "", text)
    text = re.sub(r"^!\[[^\]]*\]\([^)]*\)\s*$", "", text, flags=re.MULTILINE)
    try:
        from markdown_it import MarkdownIt  # markdown-it: only compare pages render markdown
    except ImportError:  # rich depends on it, so it is there; the text still shows without it
        return f"<pre>{esc(text)}</pre>"
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    return md.render(text)
