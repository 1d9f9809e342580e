"""The report of a multi-label run: headline figures, training curves, each label's figures and precision-recall
curve with its threshold marked, the labels most often missed or taken for one another, and the held-out images
the model gets most wrong, as thumbnails. Built from the held-out images' scores (test first, else validation),
predicted once here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from headstart.data.rundir import RunDir
from headstart.evaluation.multilabel import multilabel_metrics
from headstart.predict import open_predictor, run_decision
from headstart.report import label_issues
from headstart.report.figures import css_width, figure, png, thumbnail, training_curves
from headstart.report.html import card, cards, esc, img, num, page, para, pct, table
from headstart.report.html import figure as html_figure
from headstart.report.run import adaptation_body, backbone_candidates

WORST = 16


def _held_out(run: RunDir, max_images: int) -> tuple[str, list]:
    splits = run.split()
    name = "test" if splits.test else "val"
    return name, getattr(splits, name)[:max_images]


def pr_curves(y: np.ndarray, scores: np.ndarray, labels: list[str], thresholds: list[float]) -> bytes:
    """One small precision-recall panel per label, with the point its threshold gives."""
    from sklearn.metrics import precision_recall_curve

    cols = min(5, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig = figure(figsize=(2.4 * cols, 2.2 * rows))
    for j, name in enumerate(labels):
        ax = fig.add_subplot(rows, cols, j + 1)
        if y[:, j].any():
            p, r, _ = precision_recall_curve(y[:, j], scores[:, j])
            ax.plot(r, p, color="#0969da", lw=1.2)
            given = scores[:, j] >= thresholds[j]
            tp = float((given & (y[:, j] > 0)).sum())
            ax.plot(tp / y[:, j].sum(), tp / max(1, given.sum()), "o", color="#d1242f", ms=4)
        ax.set_title(name, fontsize=8)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=6)
    fig.supxlabel("recall", fontsize=8)
    fig.supylabel("precision", fontsize=8)
    fig.tight_layout()
    return png(fig)


def _worst(paths: list[str], y: np.ndarray, scores: np.ndarray, given: np.ndarray, labels: list[str]) -> str:
    """Thumbnails of the images with the largest summed binary cross-entropy, with what was missed and added."""
    s = np.clip(scores, 1e-6, 1 - 1e-6)
    loss = -(y * np.log(s) + (1 - y) * np.log(1 - s)).sum(1)
    items = []
    for i in np.argsort(-loss)[:WORST]:
        missed = [labels[j] for j in np.flatnonzero(y[i] & ~given[i])]
        added = [labels[j] for j in np.flatnonzero(~y[i].astype(bool) & given[i])]
        try:
            data, mime = thumbnail(paths[i])
            picture = img(data, Path(paths[i]).name, mime)
        except Exception:  # a moved or unreadable file: the figures still stand
            picture = "(image not readable)"
        truth = ", ".join(labels[j] for j in np.flatnonzero(y[i])) or "(none)"
        items.append([picture, esc(Path(paths[i]).name), esc(truth), esc(", ".join(missed) or "-"),
                      esc(", ".join(added) or "-"), num(loss[i], 2)])
    return table(["image", "file", "labels", "missed", "given wrongly", "loss"], items, left=5)


def _sections(m: dict, y, scores, given, paths, labels, thresholds, where: str, records, summary) -> list:
    rows = [[esc(k), num(v["ap"]) if v["ap"] is not None else "-", num(v["precision"]), num(v["recall"]),
             num(v["f1"]), num(v["threshold"]), str(v["support"]), str(v["predicted"])]
            for k, v in m["per_class"].items()]
    curves = pr_curves(y, scores, labels, thresholds)
    missed = [[esc(r["label"]), pct(r["recall"]), f"{r['missed']} of {r['support']}"] for r in m["most_missed"]]
    confused = [[esc(r["missed"]), esc(r["given_instead"]), str(r["images"])] for r in m["confused"]]
    out = []
    if records:
        fig = training_curves(records, summary.get("best_epoch"))
        out.append(("curves", "Training", html_figure(fig, "training curves", width=css_width(fig))))
    out += [("labels", f"Each label ({where} images)",
             table(["label", "AP", "precision", "recall", "F1", "threshold", "images", "given"], rows)
             + para("Thresholds and temperatures were chosen on the validation images; AP needs no threshold.")),
            ("pr", "Precision-recall curves", html_figure(curves, "precision-recall curves", "red dot: the "
                                                          "label's threshold", width=css_width(curves))),
            ("missed", "Labels most often missed or confused",
             table(["label", "recall", "missed"], missed)
             + (table(["missed", "given instead, in the same image", "images"], confused) if confused
                else para("No image had one label missed while another was given wrongly."))),
            ("worst", f"The {where} images the model gets most wrong", _worst(paths, y, scores, given, labels))]
    return out


def multilabel_report(run_dir: str | Path, max_images: int = 2000, device: str = "auto", loaded=None) -> str:
    """The HTML page of a multi-label run (see :func:`headstart.report.write_report`)."""
    run = RunDir(run_dir)
    predictor = loaded if loaded is not None else open_predictor(run.path, device=device)
    decision = predictor.decision or run_decision(run.path, predictor.classes)
    labels, summary, config = list(predictor.classes), run.summary(), run.config()
    where, samples = _held_out(run, max_images)
    logits, positions, _ = predictor.view_logits([p for p, _ in samples])
    scores = decision.scores(logits)
    y = np.array([samples[i][1] for i in positions], dtype=np.int64).reshape(-1, len(labels))
    paths = [samples[i][0] for i in positions]
    m = multilabel_metrics(y, scores, decision.thresholds, labels)
    lead = cards([card("mAP (macro)", num(m["map"]), f"{where}, {m['num_images']} images", lead=True),
                  card("mAP (micro)", num(m["map_micro"])), card("exact match", pct(m["exact_match"])),
                  card("Hamming loss", num(m["hamming_loss"])),
                  card("labels per image", f"{m['label_cardinality']:.2f}",
                       f"{m['predicted_cardinality']:.2f} given")])
    subtitle = esc(f"{config.get('model')} · {summary.get('strategy')} · multi-label, {len(labels)} labels · "
                   f"{summary.get('train_images')} train / {summary.get('val_images')} val images")
    sections = _sections(m, y, scores, decision.given(scores), paths, labels, decision.thresholds, where,
                         run.metrics() if run.has(run.METRICS) else [], summary)
    if adapted := config.get("adapted"):  # headstart adapt: BatchNorm statistics of another domain
        sections.insert(0, ("adaptation", "Adaptation", adaptation_body(adapted) + para(
            "Its thresholds and temperatures are the source run's, chosen on its validation images before the "
            "adaptation.", "note")))
    if choice := run.read_json(run.BACKBONE_CHOICE):  # train --choose: every candidate's evidence
        sections.insert(1 if sections[0][0] == "curves" else 0, (
            "backbone", "Backbone chosen", para(esc(f"--choose {choice.get('preset')}: {choice.get('reason')}. "
                                                   "The test images were not looked at."))
            + backbone_candidates(choice)))
    if found := label_issues.run_section(run):  # check --labels --run: the labels that look wrong
        sections.append(found)
    return page(f"headstart: {run.path.name}", subtitle, sections, lead=lead)
