"""Which labels look wrong (``headstart check DATA --labels``): confident learning on out-of-fold probabilities.

With few labels each one matters: a wrong label costs more than a missing one. Every labelled image (train,
validation and test) gets class probabilities from a linear probe on frozen pretrained features that never saw it:
the images are split into K stratified folds and each fold is scored by a head fitted on the others
(:func:`headstart.training.heads.cross_fitted_logits`; the head's C chosen on the first fold's held-out images,
the scores calibrated by one temperature fitted on all out-of-fold logits). Those go to cleanlab's
``find_label_issues`` (confident learning, Northcutt et al. 2021, JAIR 70): it estimates how many images of each
given class belong to each other class and flags that many, least confident first. Copies of one picture labelled
differently (the check's ``label-conflict``) are listed too: one of each such pair is wrong whatever a model says.

The backbone is always the pretrained one, never a run's fine-tuned network, which has seen the labels it would
judge. Measured on Fashion-MNIST and digits with planted flips: ``benchmarks/label_issues.py``
(docs/measurements, "Label issues").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headstart.core.errors import DataError, OutputError
from headstart.core.hashing import KnownHashes
from headstart.core.io import write_csv_rows
from headstart.core.runtime import Runtime
from headstart.data.sources import DataSplits
from headstart.features.extract import extract_features
from headstart.predict.calibration import run_temperature, softmax
from headstart.report import label_issues as pages
from headstart.report.html import esc, page, para
from headstart.training.heads import cross_fitted_logits, fit_head
from headstart.zoo.model import build_model
from headstart.zoo.registry import get_spec
from headstart.zoo.weights import weights_available

DEFAULT_FOLDS = 5
# The probe reads, by default, the frozen features of the three offline EfficientNet-Lites, each at its native size,
# side by side: sharper out-of-fold probabilities than any one of them. On the tuning set (1,500 Fashion-MNIST images,
# 5% random flips) they flagged planted flips at precision 0.89 / recall 0.72 where Lite0 at 128 px had 0.83 / 0.64
# at the same cut-off (benchmarks/label_issues.py, docs/measurements "Label issues"); about three times Lite0's
# extraction time (each member's features are cached as that backbone's own, for training to reuse).
DEFAULT_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# A flagged label also needs the probe to give it less than this probability. Confident learning's count of wrong
# labels includes the probe's own confusions (shirt / T-shirt on Fashion-MNIST: 7.8% of a clean set flagged);
# this keeps the ones it is sure of. Chosen by F1 on tuning sets disjoint from the reported ones
# (benchmarks/label_issues.py, "tuning"): with the default backbones, and with one backbone (Lite0 at 128 px).
MAX_GIVEN = 0.05
MAX_GIVEN_ONE_BACKBONE = 0.02
FEW_PER_CLASS = 5  # below this many images in a class, its estimate rests on very little: said in a note
COLUMNS = ["rank", "path", "split", "given_label", "suggested_label", "label_quality", "kind", "detail"]


@dataclass
class LabelIssues:
    """What ``check --labels`` found: ``rows`` (:data:`COLUMNS`, ranked: confident learning's least likely
    labels first, then the copies labelled differently) and how they were found."""

    rows: list[dict]
    classes: list[str]
    images: int  # labelled images scored out of fold
    folds: int
    oof_accuracy: float  # how often the out-of-fold prediction agrees with the given label
    settings: dict  # backbone, image size, C, temperature
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): could not be decoded

    @property
    def flagged(self) -> int:
        return sum(r["kind"] == "confident-learning" for r in self.rows)

    def summary(self) -> str:
        return (f"{self.flagged} of {self.images} labels look wrong (confident learning on {self.folds}-fold "
                f"out-of-fold probabilities; the probe agrees with {self.oof_accuracy:.1%} of the given labels)"
                + self._copies())

    def _copies(self) -> str:
        """``; N image(s) are copies of a picture labelled differently``, or '' when there are none."""
        conflicts = sum(r["kind"] == "label-conflict" for r in self.rows)
        return f"; {conflicts} image(s) are copies of a picture labelled differently" if conflicts else ""


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, classes: list[str], folds: int = DEFAULT_FOLDS,
                              seed: int = 0) -> tuple[np.ndarray, int, dict]:
    """Calibrated class probabilities of every image from a logistic-regression head that never saw it.

    Returns ``(probabilities (n, classes), folds used, {"C", "temperature"})``; fewer folds than asked when the
    smallest class has fewer images.

    Raises:
        DataError: a class has a single image (no fold can hold it out and still train on it).
    """
    from sklearn.model_selection import StratifiedKFold  # sklearn: 1.5 s to import, paid only here

    counts = np.bincount(y, minlength=len(classes))
    single = [classes[c] for c in np.flatnonzero(counts == 1)]
    if single:
        raise DataError(f"class{'es' if len(single) > 1 else ''} {', '.join(single)} "
                        f"{'have' if len(single) > 1 else 'has'} a single labelled image; finding wrong labels needs "
                        "at least 2 per class (each image is judged by a head fitted without it): add images or "
                        "leave the class out.")
    k = min(folds, int(counts[counts > 0].min()))
    fit, held = next(StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y))
    chosen = fit_head("logreg", x[fit], y[fit], x[held], y[held], len(classes)).info
    logits, used = cross_fitted_logits("logreg", x, y, len(classes), chosen, folds=k, seed=seed)
    temperature = run_temperature(logits, y)
    return softmax(logits, temperature), used, {"C": chosen["C"], "temperature": round(float(temperature), 4)}


def confident_learning(probs: np.ndarray, y: np.ndarray, max_given: float | None = MAX_GIVEN
                       ) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's ``find_label_issues`` at its defaults (prune by noise rate) on the classes that have images,
    keeping those whose given label has a probability under ``max_given`` (None: all): ``(indices of the flagged
    images, least likely label first; each image's label quality in [0, 1])``."""
    from cleanlab.filter import find_label_issues  # cleanlab and pandas: loaded only by this check
    from cleanlab.rank import get_label_quality_scores

    present = np.flatnonzero(np.bincount(y, minlength=probs.shape[1]))
    p = probs[:, present]
    p = p / p.sum(1, keepdims=True)
    labels = np.searchsorted(present, y)
    quality = get_label_quality_scores(labels, p)
    ranked = np.asarray(find_label_issues(labels, p, return_indices_ranked_by="self_confidence"), dtype=np.int64)
    if max_given is not None:
        ranked = ranked[p[ranked, labels[ranked]] < max_given]
    return ranked, quality


def find_label_issues(splits: DataSplits, runtime: Runtime, model: str | Sequence[str] | None = None,
                      image_size: int | None = None, folds: int = DEFAULT_FOLDS, seed: int = 0,
                      max_given: float | None | str = "auto", conflicts: list[tuple[dict, dict]] = (),
                      cache_dir: str | Path | None = None, known_hashes: KnownHashes | None = None,
                      batch_size: int = 64, workers: int | None = None) -> LabelIssues:
    """Ranks the labelled images of ``splits`` (every split) by how likely their label is wrong.

    Args:
        splits: the usable labelled images (what the check kept).
        runtime: device and precision of the backbone pass.
        model: the pretrained backbone whose frozen features the probe reads, or several (their features side by
            side); default :data:`DEFAULT_BACKBONES` whose weights are on this machine.
        image_size: the input size of every backbone (default: each backbone's own).
        folds: K of the stratified K-fold scoring (fewer when a class has fewer images).
        seed: the folds' shuffle.
        max_given: flag only labels the probe gives less than this probability (None: every one cleanlab flags;
            ``auto``: :data:`MAX_GIVEN` for several backbones, :data:`MAX_GIVEN_ONE_BACKBONE` for one).
        conflicts: pairs of copies labelled differently (``{"path", "split", "class"}`` each), listed after the
            confident-learning findings.
        cache_dir, known_hashes, batch_size, workers: as in :func:`headstart.features.extract.extract_features`.
    """
    samples = [(p, y, s) for s in ("train", "val", "test") for p, y in getattr(splits, s)]
    feats = probe_features([p for p, _, _ in samples], runtime, model, image_size, cache_dir, known_hashes,
                           batch_size, workers)
    if max_given == "auto":
        max_given = MAX_GIVEN if len(feats.settings["backbone"].split("+")) > 1 else MAX_GIVEN_ONE_BACKBONE
    positions, x = feats.positions, feats.x
    kept = [samples[i] for i in positions]
    y = np.array([label for _, label, _ in kept], dtype=np.int64)
    probs, used, settings = out_of_fold_probabilities(x, y, splits.classes, folds, seed)
    ranked, quality = confident_learning(probs, y, max_given)
    names = splits.classes
    rows = [{"path": kept[i][0], "split": kept[i][2], "given_label": names[y[i]],
             "suggested_label": names[int(probs[i].argmax())], "label_quality": round(float(quality[i]), 4),
             "kind": "confident-learning",
             "detail": f"p(given) {probs[i, y[i]]:.3f}, p(suggested) {probs[i].max():.3f}"} for i in ranked]
    rows += _conflict_rows(conflicts, {p: i for i, (p, _, _) in enumerate(kept)}, probs, quality, names)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    counts = np.bincount(y, minlength=len(names))
    few = [f"{names[c]} ({counts[c]})" for c in np.flatnonzero((counts > 0) & (counts < FEW_PER_CLASS))]
    notes = [f"few images in {', '.join(few)}: with under {FEW_PER_CLASS} per class the estimate of how many "
             "labels are wrong rests on very little; treat these findings as hints."] if few else []
    settings = {**feats.settings, "max_given": max_given, **settings}
    return LabelIssues(rows, names, len(y), used, round(float((probs.argmax(1) == y).mean()), 4), settings, notes,
                       feats.bad)


@dataclass
class ProbeFeatures:
    """The frozen features a label-issue probe reads: of the images every backbone could decode (``positions``
    into the paths asked for), the backbones' side by side."""

    positions: list[int]
    x: np.ndarray
    bad: list  # (path, reason) of the images that could not be decoded
    settings: dict  # "backbone" (names joined by +), "image_size" (one, or one per backbone)


def probe_features(paths: list[str], runtime: Runtime, model: str | Sequence[str] | None = None,
                   image_size: int | None = None, cache_dir: str | Path | None = None,
                   known_hashes: KnownHashes | None = None, batch_size: int = 64,
                   workers: int | None = None) -> ProbeFeatures:
    """The features of ``paths`` from :func:`label_backbones` ``(model)``, each at ``image_size`` or its own size,
    through the feature cache (each backbone's features cached as its own, for training to reuse)."""
    parts, sizes, positions, bad = [], [], None, []
    models = label_backbones(model)
    for name in models:
        net = build_model(name, 2, pretrained=True)  # the head is never used: features only
        runtime.prepare(net).eval()
        pre = net.spec.preprocessing(image_size=image_size)
        found = extract_features(net, paths, pre, runtime, batch_size=batch_size, workers=workers,
                                 cache_dir=cache_dir, desc=f"features (labels, {name})", verbose=False,
                                 known_hashes=known_hashes)
        parts.append(dict(zip(found.positions, found.array())))
        sizes.append(pre.crop)
        positions = list(found.positions) if positions is None else [i for i in positions if i in parts[-1]]
        bad = found.bad  # the same files for every backbone: decoding does not depend on it
    x = np.stack([np.concatenate([part[i] for part in parts]) for i in positions]).astype(np.float32) if positions \
        else np.zeros((0, 0), np.float32)
    return ProbeFeatures(positions, x, bad, {"backbone": "+".join(models),
                                             "image_size": sizes[0] if len(sizes) == 1 else sizes})


def features_text(settings: dict) -> str:
    """What the probe read, e.g. ``efficientnet_lite0 features at 224 px``, several backbones side by side."""
    names, sizes = settings["backbone"].split("+"), settings["image_size"]
    if len(names) == 1:
        return f"{names[0]} features at {sizes} px"
    each = [f"{n} at {s} px" for n, s in zip(names, sizes)]
    return f"the features of {', '.join(each[:-1])} and {each[-1]}, side by side"


def label_backbones(model: str | Sequence[str] | None = None) -> list[str]:
    """The backbones whose features the probe reads: ``model`` (one name or several), or the
    :data:`DEFAULT_BACKBONES` whose weights are on this machine (Lite0's always are: it ships in a pip package)."""
    if model is not None:
        return [model] if isinstance(model, str) else list(model)
    return [name for name in DEFAULT_BACKBONES if weights_available(get_spec(name))] or [DEFAULT_BACKBONES[0]]


def _conflict_rows(conflicts, index: dict[str, int], probs: np.ndarray, quality: np.ndarray,
                   names: list[str]) -> list[dict]:
    """One row per image of each pair of copies labelled differently, naming the other copy."""
    rows = []
    for a, b in conflicts:
        for this, other in ((a, b), (b, a)):
            i = index.get(this["path"])
            rows.append({"path": this["path"], "split": this["split"], "given_label": this["class"],
                         "suggested_label": names[int(probs[i].argmax())] if i is not None else "",
                         "label_quality": round(float(quality[i]), 4) if i is not None else "",
                         "kind": "label-conflict",
                         "detail": f"a copy of {other['path']}, labelled {other['class']}"})
    return rows


def write_csv(rows: list[dict], path: str | Path, columns: list[str] = COLUMNS) -> Path:
    """The ranked rows as a CSV with ``columns`` (:data:`COLUMNS`)."""
    return write_csv_rows(path, columns, rows, "a folder")


def write_page(found: LabelIssues, path: str | Path, data: str, csv_name: str) -> Path:
    """One self-contained HTML page of the findings' thumbnails beside the CSV."""
    how = (f"{found.images} labelled images of {esc(data)}, each scored by a logistic-regression head fitted on "
           f"the other {found.folds - 1} of {found.folds} folds ({esc(features_text(found.settings))}); flagged: "
           f"cleanlab's confident learning, keeping labels the probe gives under {found.settings['max_given']} "
           "probability.")
    return write_findings_page(found, path, csv_name, how)


def write_findings_page(found, path: str | Path, csv_name: str, how: str) -> Path:
    """The page of a check's findings (``rows``, ``notes``, ``summary()``): their thumbnails, then ``how`` they were
    found."""
    body = pages.section_body(found.rows, csv_name) + para(how, "note")
    body += "".join(para(esc(n), "note") for n in found.notes)
    html = page("Labels that look wrong", esc(found.summary()), [("label-issues", "Labels that look wrong", body)])
    path = Path(path)
    try:
        path.write_text(html)
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}); pass a folder you can write to.") from exc
    return path
