"""Which labels look wrong when an image has several (``headstart check DATA.csv --labels`` on a multi-label CSV).

The single-label check (:mod:`headstart.curation.label_issues`) asks which one class an image shows; here every label
of every image is a yes/no question, and either answer can be wrong (a label the annotator forgot, one they added).
Each labelled image (train, validation and test) gets a probability per label from per-label logistic regressions
on frozen pretrained features that never saw it: the images are split into K folds stratified per label
(:func:`headstart.training.multilabel.label_folds`), each fold scored by heads fitted on the others
(:func:`~headstart.training.multilabel.cross_fitted_label_logits`), each label's C chosen on the first fold's
held-out images, each label calibrated by its own temperature fitted on all out-of-fold logits. Those go to
cleanlab's one-vs-rest confident learning per label (``find_multilabel_issues_per_class``, the reduction its
multi-label ``find_label_issues`` ORs over the labels), so a flagged image says which label looks missing or extra;
images are ranked by cleanlab's multi-label label quality (lowest first). Copies of one picture with different label
sets (the check's ``label-conflict``) are listed too.

A label with fewer than two images holding it (or fewer than two without it) cannot be judged: no fold can hold
one out and still learn it; it is left out of the judgement and said in a note. Measured on the mosaic set with
planted flips: ``benchmarks/label_issues_multilabel.py`` (docs/measurements, "Label issues, multi-label"): weak
there (precision 0.30-0.38, recall 0.50-0.62 at 5% of images with one label flipped, the default backbones),
because the probe is: it agrees with 90-91% of the yes/no answers where answering "no" everywhere gets 77%.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from headstart.core.errors import DataError
from headstart.core.hashing import KnownHashes
from headstart.core.runtime import Runtime
from headstart.curation import label_issues
from headstart.curation.label_issues import DEFAULT_FOLDS, FEW_PER_CLASS, features_text, probe_features
from headstart.data.multilabel import MultiLabelSplits, set_name
from headstart.predict.multilabel import fit_temperatures, sigmoid
from headstart.report.html import esc
from headstart.training.multilabel import cross_fitted_label_logits, fit_label_heads, label_folds

# A flagged label also needs the probe to give its given value (present or absent) less than this probability, as
# the single-label check's MAX_GIVEN: confident learning's count includes the probe's own confusions (shirt /
# T-shirt; without the cut-off it flags half the images of a clean mosaic set). Chosen by F1 on a tuning set
# disjoint from the reported one (benchmarks/label_issues_multilabel.py, "tuning").
MAX_GIVEN = 0.05
# given_label / suggested_label hold label sets ("a;b"), so the report's thumbnails read these rows as single-label
# ones; missing / extra say which labels look wrong.
COLUMNS = ["rank", "path", "split", "given_label", "suggested_label", "label_quality", "kind", "missing", "extra",
           "detail"]


class MultiLabelIssues(label_issues.LabelIssues):
    """What ``check --labels`` found on multi-label data, in the single-label record: ``rows`` (:data:`COLUMNS`,
    ranked: lowest label quality first, then the copies with different label sets), ``classes`` the labels,
    ``oof_accuracy`` the share of (image, label) answers at 0.5 that agree with the given ones, ``settings`` with a
    C and a temperature per label."""

    def summary(self) -> str:
        wrong = sum(len(r["missing"].split(";")) * bool(r["missing"]) + len(r["extra"].split(";")) * bool(r["extra"])
                    for r in self.rows if r["kind"] == "confident-learning")
        return (f"{self.flagged} of {self.images} images have labels that look wrong ({wrong} label(s) missing or "
                f"extra; confident learning per label on {self.folds}-fold out-of-fold probabilities; the probe "
                f"agrees with {self.oof_accuracy:.1%} of the given yes/no answers)" + self._copies())


def out_of_fold_label_probabilities(x: np.ndarray, y: np.ndarray, folds: int = DEFAULT_FOLDS,
                                    seed: int = 0) -> tuple[np.ndarray, int, dict]:
    """Calibrated probabilities per label of every image from per-label logistic regressions that never saw it.

    Args:
        x: features, one row per image.
        y: 0/1 per label, one row per image.
        folds: K of the folds stratified per label (fewer with fewer images).
        seed: the folds' assignment.

    Returns ``(probabilities (n, labels), folds used, {"C": per label, "temperature": per label})``.

    Raises:
        DataError: fewer than 2 images (nothing can be held out).
    """
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float64)
    parts = label_folds(y, min(folds, len(y)), seed) if len(y) >= 2 else []
    if len(parts) < 2:
        raise DataError(f"{len(y)} labelled image(s): finding wrong labels needs at least 2 (each image is judged by "
                        "heads fitted without it); add images.")
    held = parts[0]
    fit = np.setdiff1d(np.arange(len(y)), held)
    _, _, cs = fit_label_heads(x[fit], y[fit], x[held], y[held])
    logits, used = cross_fitted_label_logits(x, y, cs, parts=parts)  # the folds that chose the Cs, not made again
    temperatures = fit_temperatures(logits, y)
    return (sigmoid(logits / np.asarray(temperatures)), used,
            {"C": cs, "temperature": [round(float(t), 4) for t in temperatures]})


def judged_labels(y: np.ndarray) -> np.ndarray:
    """Indices of the labels that can be judged: at least 2 images with it and 2 without."""
    pos = np.asarray(y).sum(0)
    return np.flatnonzero((pos >= 2) & (len(y) - pos >= 2))


def confident_learning(probs: np.ndarray, y: np.ndarray, max_given: float | None = MAX_GIVEN
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cleanlab's per-label confident learning (prune by noise rate) on the labels :func:`judged_labels` keeps,
    keeping flags whose given value (present or absent) the probe gives less than ``max_given`` (None: all).

    Returns ``(indices of the images with a flagged label, lowest label quality first; the (n, labels) mask of the
    flagged labels; each image's label quality in [0, 1])``.
    """
    from cleanlab.multilabel_classification.filter import find_multilabel_issues_per_class  # loaded only here
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    y = np.asarray(y, np.int64)
    judged = judged_labels(y)
    mask = np.zeros(y.shape, bool)
    quality = np.ones(len(y))
    if not len(judged):
        return np.zeros(0, np.int64), mask, quality
    p, given = probs[:, judged], y[:, judged]
    lists = [np.flatnonzero(row).tolist() for row in given]
    per_label = np.asarray(find_multilabel_issues_per_class(lists, p), bool)  # (n, judged)
    if max_given is not None:
        p_given = np.where(given > 0, p, 1 - p)
        per_label &= p_given < max_given
    mask[:, judged] = per_label
    quality = get_label_quality_scores(lists, p)
    images = np.flatnonzero(mask.any(1))
    return images[np.argsort(quality[images], kind="stable")], mask, quality


def find_multilabel_issues(splits: MultiLabelSplits, runtime: Runtime, model: str | Sequence[str] | None = None,
                           image_size: int | None = None, folds: int = DEFAULT_FOLDS, seed: int = 0,
                           max_given: float | None = MAX_GIVEN, conflicts: list[tuple[dict, dict]] = (),
                           cache_dir: str | Path | None = None, known_hashes: KnownHashes | None = None,
                           batch_size: int = 64, workers: int | None = None) -> MultiLabelIssues:
    """Ranks the labelled images of ``splits`` (every split) by how likely one of their labels is wrong.

    Args:
        splits: the usable labelled images (what the check kept).
        runtime: device and precision of the backbone pass.
        model: the pretrained backbone whose frozen features the probe reads, or several
            (:func:`headstart.curation.label_issues.label_backbones`; default the offline Lites side by side).
        image_size: the input size of every backbone (default: each backbone's own).
        folds: K of the K-fold scoring, folds stratified per label.
        seed: the folds' assignment.
        max_given: flag only labels whose given value the probe gives less than this probability (None: every one
            cleanlab flags).
        conflicts: pairs of copies with different label sets (``{"path", "split", "class"}`` each, ``class`` the
            set as ``a;b``), listed after the confident-learning findings.
        cache_dir, known_hashes, batch_size, workers: as in :func:`headstart.features.extract.extract_features`.
    """
    samples = [(p, y, s) for s in ("train", "val", "test") for p, y in getattr(splits, s)]
    feats = probe_features([p for p, _, _ in samples], runtime, model, image_size, cache_dir, known_hashes,
                           batch_size, workers)
    kept = [samples[i] for i in feats.positions]
    y = np.array([labels for _, labels, _ in kept], dtype=np.int64).reshape(-1, len(splits.labels))
    probs, used, settings = out_of_fold_label_probabilities(feats.x, y, folds, seed)
    ranked, mask, quality = confident_learning(probs, y, max_given)
    rows = [_row(kept[i][0], kept[i][2], y[i], probs[i], mask[i], quality[i], splits.labels) for i in ranked]
    rows += _conflict_rows(conflicts, {p: i for i, (p, _, _) in enumerate(kept)}, probs, quality, splits.labels)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    settings = {**feats.settings, "max_given": max_given, **settings}
    agreement = round(float(((probs > 0.5) == (y > 0)).mean()), 4)
    return MultiLabelIssues(rows, splits.labels, len(y), used, agreement, settings, _notes(y, splits.labels),
                            feats.bad)


def _row(path: str, split: str, y: np.ndarray, p: np.ndarray, flagged: np.ndarray, quality: float,
         labels: list[str]) -> dict:
    """One flagged image: its given set, the set with the flagged labels flipped, and each flag's probability."""
    missing = [j for j in np.flatnonzero(flagged) if not y[j]]
    extra = [j for j in np.flatnonzero(flagged) if y[j]]
    suggested = y.copy()
    suggested[flagged] = 1 - suggested[flagged]
    detail = ", ".join([f"{labels[j]} missing (p {p[j]:.3f})" for j in missing]
                       + [f"{labels[j]} extra (p {p[j]:.3f})" for j in extra])
    return {"path": path, "split": split, "given_label": set_name(labels, y),
            "suggested_label": set_name(labels, suggested), "label_quality": round(float(quality), 4),
            "kind": "confident-learning", "missing": ";".join(labels[j] for j in missing),
            "extra": ";".join(labels[j] for j in extra), "detail": detail}


def _conflict_rows(conflicts, index: dict[str, int], probs: np.ndarray, quality: np.ndarray,
                   labels: list[str]) -> list[dict]:
    """One row per image of each pair of copies with different label sets, naming the other copy; the suggested
    set is the probe's (labels above 0.5)."""
    rows = []
    for a, b in conflicts:
        for this, other in ((a, b), (b, a)):
            i = index.get(this["path"])
            rows.append({"path": this["path"], "split": this["split"], "given_label": this["class"],
                         "suggested_label": set_name(labels, probs[i] > 0.5) if i is not None else "",
                         "label_quality": round(float(quality[i]), 4) if i is not None else "",
                         "kind": "label-conflict", "missing": "", "extra": "",
                         "detail": f"a copy of {other['path']}, labelled {other['class']}"})
    return rows


def _notes(y: np.ndarray, labels: list[str]) -> list[str]:
    pos = y.sum(0)
    judged = set(judged_labels(y).tolist())
    notes = []
    unjudged = [f"{labels[j]} ({pos[j]} of {len(y)})" for j in range(len(labels)) if j not in judged]
    if unjudged:
        notes.append(f"not judged: {', '.join(unjudged)}: a label needs at least 2 images with it and 2 without "
                     "before a head fitted without an image can say anything about it.")
    few = [f"{labels[j]} ({pos[j]})" for j in sorted(judged) if pos[j] < FEW_PER_CLASS]
    if few:
        notes.append(f"few images hold {', '.join(few)}: with under {FEW_PER_CLASS} per label the estimate of how "
                     "many of its answers are wrong rests on very little; treat these findings as hints.")
    return notes


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """The ranked rows as a CSV with :data:`COLUMNS`."""
    return label_issues.write_csv(rows, path, COLUMNS)


def write_page(found: MultiLabelIssues, path: str | Path, data: str, csv_name: str) -> Path:
    """One self-contained HTML page of the findings' thumbnails beside the CSV."""
    how = (f"{found.images} labelled images of {esc(data)}, each scored by per-label logistic-regression heads "
           f"fitted on the other {found.folds - 1} of {found.folds} folds ({esc(features_text(found.settings))}); "
           "flagged: cleanlab's confident learning for each label, keeping the answers the probe gives under "
           f"{found.settings['max_given']} probability. A suggested set is the given one with the flagged labels "
           "added (missing) or removed (extra).")
    return label_issues.write_findings_page(found, path, csv_name, how)
