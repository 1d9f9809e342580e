"""The prediction record every predictor returns (a run through torch, an exported model through ONNX Runtime),
and the loop that turns images in memory or on disk into such records. Free of torch, so the ONNX path stays so."""

from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

import numpy as np

from headstart.data.images import BadImageError, as_rgb_image


def top_classes(probs, classes: Sequence[str], topk: int) -> dict[str, Any]:
    """``label``, ``score`` and ``topk`` (``label``, ``score`` pairs, best first) from one image's probabilities
    (a numpy row, or anything ``np.asarray`` reads); ``topk`` is clamped to the number of classes."""
    probs = np.asarray(probs, dtype=np.float64)
    k = max(1, min(topk, len(classes)))
    top = [{"label": classes[j], "score": round(float(probs[j]), 6)} for j in np.argsort(-probs, kind="stable")[:k]]
    return {"label": top[0]["label"], "score": top[0]["score"], "topk": top}


def predict_images(images, prepare: Callable[[Any], Any], probabilities: Callable[[list], Any],
                   record: Callable[[Any], dict], batch_size: int = 64) -> dict | list[dict]:
    """Top-k records for one image or a list of them (PIL images, numpy arrays or paths), ``batch_size`` at a time.

    Args:
        prepare: one RGB PIL image -> what ``probabilities`` batches (a tensor, an array).
        probabilities: a list of prepared images -> their calibrated probabilities, one row each.
        record: one row of probabilities -> the image's answer (:func:`top_classes`, or a multi-label decision's).

    An image that cannot be used gets ``label`` and ``score`` None and an ``error`` instead of stopping the others.
    """
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    results: list[dict | None] = [None] * len(items)
    for start in range(0, len(items), batch_size):
        ready, where = [], []
        for i in range(start, min(start + batch_size, len(items))):
            try:
                ready.append(prepare(as_rgb_image(items[i])))
                where.append(i)
            except BadImageError as exc:
                results[i] = {"label": None, "score": None, "error": exc.reason}
        if ready:
            for i, row in zip(where, probabilities(ready)):
                results[i] = record(row)
    return results[0] if single else results


def path_records(paths: Sequence[str], positions: Sequence[int], probs, bad: Sequence[tuple[str, str]],
                 record: Callable[[Any], dict]) -> list[dict]:
    """One record per path, in order: ``record`` of its row of ``probs`` (one row per position in ``positions``,
    the paths that could be used), or ``error`` (the reason in ``bad``, said on stderr)."""
    results: list[dict | None] = [None] * len(paths)
    for row, i in enumerate(positions):
        results[i] = {"path": paths[i], **record(probs[row])}
    reasons = dict(bad)
    for i, path in enumerate(paths):
        if results[i] is None:
            reason = reasons.get(path, "could not be decoded")
            print(f"cannot predict {path}: {reason}", file=sys.stderr)
            results[i] = {"path": path, "label": None, "score": None, "error": reason}
    return results
