"""An honest evaluation: accuracy, per-class precision/recall/F1, the confusion matrix (JSON and PNG), calibration."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

from headstart.core.errors import PathNotFoundError, UsageError
from headstart.core.hardware import launched
from headstart.core.hashing import KnownHashes
from headstart.core.io import write_bytes
from headstart.data.check import inspect_files, known_hashes
from headstart.data.leakage import copies_of
from headstart.data.packed import is_packed, labelled_samples
from headstart.data.rundir import RunDir
from headstart.data.sources import read_class_folders
from headstart.predict.base import Predictor
from headstart.predict.calibration import compare_calibration, softmax


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/F1 and the confusion matrix (rows: true class).

    The definitions of scikit-learn's ``precision_recall_fscore_support(zero_division=0)`` and
    ``balanced_accuracy_score`` (the mean recall over the classes that occur), computed from the confusion matrix
    in numpy: importing scikit-learn costs two seconds of every ``evaluate`` on a small machine.
    """
    n = len(classes)
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    cm = np.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
    support, predicted, correct = cm.sum(1), cm.sum(0), np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(predicted > 0, correct / np.maximum(predicted, 1), 0.0)
        r = np.where(support > 0, correct / np.maximum(support, 1), 0.0)
        f = np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0.0)
    present = support > 0
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "balanced_accuracy": float(r[present].mean()) if present.any() else 0.0,
        "num_images": int(len(y_true)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
        "classes": classes,
    }


_CONFUSION_DATA = ("confusion_matrix", "classes", "accuracy", "num_images")  # all the drawn matrix shows


def plot_confusion(metrics: dict, path: str | Path, title: str = "") -> None:
    """Draws the confusion matrix of ``metrics`` as a PNG into ``path`` (a file name or a binary file object)."""
    title = title or f"accuracy {metrics['accuracy']:.3f} on {metrics['num_images']} images"
    data = _draw_confusion(metrics, title)
    if hasattr(path, "write"):
        path.write(data)
    else:
        write_bytes(path, data)


def _draw_confusion(metrics: dict, title: str) -> bytes:

    from matplotlib.figure import Figure  # not pyplot: no global state, and half a second less to import

    cm = np.array(metrics["confusion_matrix"])
    classes = metrics["classes"]
    n = len(classes)
    fig = Figure(figsize=(max(5, 0.6 * n + 2), max(4, 0.6 * n + 1.5)))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues", interpolation="nearest")
    threshold = cm.max() / 2 if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > threshold else "black")
    ax.set(xticks=range(n), yticks=range(n), xlabel="Predicted label", ylabel="True label")
    ax.set_xticklabels(classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticklabels(classes)
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    return buf.getvalue()


def evaluate_run(run: Predictor, data: str | Path, batch_size: int = 64, workers: int | None = None,
                 tta: bool = False, keep_leaked: bool = False, duplicates: str = "near") -> dict:
    """Evaluates a trained run on a folder of class subfolders named like the run's classes (or WebDataset shards
    or a Hugging Face dataset labelled with them: every image in it, :mod:`headstart.data.packed`).

    Writes ``evaluation.json`` and ``confusion_matrix.png`` into the run directory and returns the metrics. Scores
    use the run's calibration temperature; ``calibration`` holds the expected calibration error before and after it.
    Images that are themselves a confirmed copy of an image whose label the shipped weights were fitted on (the
    training images, and the validation images after a refit; ``duplicates`` says what counts as a copy) are left
    out of the scores and counted (``leaked_excluded``, with ``leaked_label_conflicts``), unless ``keep_leaked``.
    With ``tta`` the predictions average the softmax over each image and its mirror image.

    ``run``: the run's predictor (:func:`headstart.predict.open_predictor`); its ``engine`` is recorded.
    """
    packed = is_packed(data)
    data = Path(data)
    if not packed and not data.is_dir():
        raise PathNotFoundError(f"{data} is not a folder; pass a folder of class subfolders named like the run's "
                                f"classes ({', '.join(run.classes[:5])}{', ...' if len(run.classes) > 5 else ''}).")
    samples = labelled_samples(str(data), run.classes) if packed else read_class_folders(data, run.classes)[1]
    facts = inspect_files([p for p, _ in samples])  # one decode per image: readability and fingerprints
    bad = [(p, f.error.reason) for p, f in facts.items() if f.error is not None]
    for path, reason in bad:
        print(f"skipping {path}: {reason}", file=sys.stderr)
    samples = [s for s in samples if facts[s[0]].error is None]
    copies = _copies_of_fitted_images(run.path, {p: facts[p] for p, _ in samples}, duplicates)
    leaked, conflicts = set(copies), _label_conflicts(run, samples, copies)
    if leaked and not keep_leaked:
        print(f"left out {len(leaked)} image(s) that are copies of images {run.path} was fitted on (listed in "
              "evaluation.json; --keep-leaked scores them)"
              + (f"; {len(conflicts)} of them labelled differently from their copy" if conflicts else ""),
              file=sys.stderr)
        samples = [s for s in samples if s[0] not in leaked]
    if not samples:
        raise UsageError(f"no readable images in {data}" + (" that are not copies of training images." if leaked
                                                            else "."))
    logits, labels, unreadable = _view_logits(run, samples, known_hashes(facts), batch_size,
                                              workers, tta)
    for path, reason in unreadable:  # readable when checked, not when its features were computed
        print(f"skipping {path}: {reason}", file=sys.stderr)
    bad += unreadable
    raw = softmax(logits).mean(0)
    probs = softmax(logits, run.temperature).mean(0)
    metrics = classification_metrics(labels, probs.argmax(1), run.classes)
    metrics.update({"data": str(data), "tta": tta, "engine": run.engine,
                    "skipped": [{"path": p, "reason": r} for p, r in bad],
                    "calibration": compare_calibration(raw, probs, labels, run.temperature),
                    "duplicates": duplicates,
                    "leaked_excluded": 0 if keep_leaked else len(leaked), "leaked_kept": len(leaked) if keep_leaked
                    else 0, "leaked": sorted(leaked), "leaked_copy_of": {p: c["copy_of"] for p, c in copies.items()},
                    "leaked_label_conflicts": conflicts})
    rundir = RunDir(run.path)
    before, written = rundir.read_json(rundir.EVALUATION, {}), json.loads(json.dumps(metrics))  # as JSON reads back
    # Rewritten only when it changed, so the report's figures (drawn again when the files they show are newer) are
    # not: the same images scored through the network and from cached features differ in the 7th digit of a score.
    if launched()[0] != 0:  # under torchrun every rank has the metrics; rank 0 writes them
        return metrics
    if not _same_evaluation(written, before):
        rundir.write_json(rundir.EVALUATION, metrics)
    drawn = all(before.get(k) == written[k] for k in _CONFUSION_DATA)
    if not (drawn and (rundir / rundir.CONFUSION).is_file()):  # the run's file is this matrix already
        plot_confusion(metrics, rundir / rundir.CONFUSION)
    return metrics


def _view_logits(run: Predictor, samples: list[tuple[str, int]], known: KnownHashes, batch_size: int,
                 workers: int | None, tta: bool) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Logits of every view, ``(views, n, classes)`` float32, the labels of the n images scored, and ``(path,
    reason)`` of the images that could not be used after all. ``known``: the check's content hashes."""
    logits, positions, unreadable = run.view_logits([p for p, _ in samples], known, tta, batch_size, workers)
    return logits, np.array([samples[i][1] for i in positions], dtype=np.int64), unreadable


def _same_evaluation(new: dict, old: dict) -> bool:
    """Whether two evaluations say the same: every prediction and count alike (so every accuracy), calibration
    figures to the 4 significant digits the report shows them with, whichever engine computed them (the file keeps
    the engine of the evaluation that wrote it: the torch engine the first time, the cache's features after)."""
    rest = [{k: v for k, v in e.items() if k not in ("calibration", "engine")} for e in (new, old)]
    return rest[0] == rest[1] and _digits(new.get("calibration"), 4) == _digits(old.get("calibration"), 4)


def _digits(value, digits: int):
    """``value`` with every float to ``digits`` significant digits."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _digits(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_digits(v, digits) for v in value]
    return value


def _label_conflicts(run: Predictor, samples: list[tuple[str, int]], copies: dict[str, dict]) -> list[dict]:
    """The copies of fitted images whose label differs from their original's."""
    fitted_labels = _fitted_labels(run.path, run.classes)
    return [{"path": p, "label": run.classes[y], "copy_of": copies[p]["copy_of"],
             "copy_label": fitted_labels.get(copies[p]["copy_of"])}
            for p, y in samples if p in copies and fitted_labels.get(copies[p]["copy_of"], run.classes[y])
            != run.classes[y]]


def _copies_of_fitted_images(run_dir: Path, facts: dict, duplicates: str) -> dict[str, dict]:
    """:func:`~headstart.data.leakage.copies_of` the images the run's shipped weights were fitted on (runs from
    before fingerprints were recorded: none can be found)."""
    recorded = RunDir(run_dir).fitted_fingerprints()
    return {} if recorded is None else copies_of(recorded, facts, duplicates)


def _fitted_labels(run_dir: Path, classes: list[str]) -> dict[str, str]:
    """The label of each train and val image of the run (from ``split.json``), by path."""
    rundir = RunDir(run_dir)
    if not rundir.has(rundir.SPLIT):
        return {}
    splits = rundir.split()
    return {p: splits.classes[y] for name in ("train", "val") for p, y in getattr(splits, name)}
