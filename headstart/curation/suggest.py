"""What to label next (``headstart suggest RUN FOLDER --n 100``): uncertain images, spread over feature space.

The images a model is least sure of teach it most (uncertainty sampling: the margin between its two highest
calibrated probabilities, or their entropy). Taken alone, the most uncertain images of a real folder are often
near-copies of each other (bursts of photos, frames of a video, the same part on the line), and fifty labels on one
ambiguous picture teach what one would. So the batch is chosen in two steps: a pool of the ``pool_factor * n``
most uncertain images, then a k-center greedy pass over the pool (Sener & Savarese 2018, "core-set"), each pick the
image whose cosine distance to everything picked so far, times its uncertainty, is largest. A copy of a picked
image is at distance ~0 and is never picked (nor one within :data:`DUPLICATE_DISTANCE`).

The images stream through in chunks of :data:`CHUNK` files: their features go into the feature cache
(:func:`headstart.features.extract.extract_features`, the run's own backbone and preprocessing), and only a
label, a score and an uncertainty per image stay in memory; the pool's features are read back from the cache.
Measured against random choice in a simulated labelling loop: ``benchmarks/suggest.py`` (docs/measurements,
"What to label next").
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headstart.core.errors import OutputError, UsageError
from headstart.core.io import write_csv_rows
from headstart.data.rundir import RunDir
from headstart.data.sources import expand_paths
from headstart.features.extract import extract_features
from headstart.predict import open_predictor
from headstart.predict.calibration import softmax

UNCERTAINTIES = ("margin", "entropy")
POOL_FACTOR = 3  # chosen on the tuning seeds of benchmarks/suggest.py, from {3, 10, 30}
CHUNK = 2048  # files per pass through the cache: memory holds one chunk's features at a time
DUPLICATE_DISTANCE = 0.01  # cosine distance under which two images count as copies (re-encoded: ~0.001)
COLUMNS = ["rank", "path", "predicted_label", "score", "uncertainty"]


def uncertainty(probs: np.ndarray, kind: str = "margin") -> np.ndarray:
    """How unsure each row of probabilities is, in [0, 1]: ``1 - (p1 - p2)`` (margin) or the entropy over
    ``log(classes)`` (entropy)."""
    if kind == "margin":
        top = np.sort(probs, axis=1)[:, -2:]
        return 1.0 - (top[:, 1] - top[:, 0])
    if kind == "entropy":
        p = np.clip(probs, 1e-12, 1.0)
        return -(p * np.log(p)).sum(1) / np.log(probs.shape[1])
    raise UsageError(f"uncertainty must be one of {', '.join(UNCERTAINTIES)}, got '{kind}'.")


def k_center_greedy(embeddings: np.ndarray, n: int, weights: np.ndarray | None = None,
                    min_distance: float = DUPLICATE_DISTANCE) -> list[int]:
    """Up to ``n`` row indices, each the row whose cosine distance to those picked, times its weight, is largest
    (the first: the largest weight). Rows within ``min_distance`` of a picked one are never picked, so the list
    is shorter than ``n`` when the rows hold fewer distinct images."""
    z = np.asarray(embeddings, dtype=np.float32)
    z = z / (np.linalg.norm(z, axis=1, keepdims=True) + 1e-12)
    w = np.ones(len(z), np.float32) if weights is None else np.asarray(weights, np.float32)
    distance = np.full(len(z), 2.0, np.float32)  # the largest cosine distance: the first pick is the heaviest
    picked: list[int] = []
    while len(picked) < min(n, len(z)):
        score = np.where(distance > min_distance, distance * np.maximum(w, 1e-6), -1.0)
        best = int(score.argmax())
        if score[best] < 0:
            break
        picked.append(best)
        distance = np.minimum(distance, 1.0 - z @ z[best])
    return picked


def rank_for_labelling(u: np.ndarray, embeddings_of, n: int, pool_factor: int = POOL_FACTOR) -> list[int]:
    """The images to label next, in order: of those with uncertainties ``u`` (:func:`uncertainty`), the
    ``pool_factor * n`` most uncertain, spread by :func:`k_center_greedy` weighted by their uncertainty.
    ``embeddings_of(indices)`` gives those images' features (read from the cache: only the pool's are in memory)."""
    pool = np.argsort(-u, kind="stable")[:max(n, n * pool_factor)]
    if len(pool) == 0:
        return []
    return [int(pool[i]) for i in k_center_greedy(embeddings_of(pool), n, u[pool])]


@dataclass
class Suggestions:
    """The images to label next, best first (:data:`COLUMNS`), and what was looked at."""

    rows: list[dict]
    images: int  # unlabelled images scored
    pool: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): could not be decoded
    already_labelled: int = 0  # images left out: copies of an image the run was fitted on


def suggest(run_dir: str | Path, folder: str | Path, n: int = 100, kind: str = "margin",
            pool_factor: int = POOL_FACTOR, device: str = "auto", precision: str = "auto", batch_size: int = 64,
            workers: int | None = None, cache_dir: str | Path | None = None, chunk: int = CHUNK) -> Suggestions:
    """Ranks the images under ``folder`` for labelling by the run at ``run_dir`` (module docstring).

    Raises:
        UsageError: ``n`` or ``pool_factor`` below 1, an unknown ``kind``, or an exported model instead of a run.
        PathNotFoundError, RunNotFoundError: ``folder`` or the run is not there.
    """
    if n < 1 or pool_factor < 1:
        raise UsageError(f"the number of images to suggest and the pool factor must be at least 1, got {n} and "
                         f"{pool_factor}.")
    uncertainty(np.full((1, 2), 0.5), kind)  # an unknown kind is said before any image is read
    predictor = open_predictor(run_dir, device=device, precision=precision, cache_dir=cache_dir)
    if predictor.engine == "onnxruntime":
        raise UsageError(f"{run_dir} is an exported model; suggest needs the run directory (its backbone's features "
                         "go through the feature cache).")
    run = predictor.load() if predictor.engine == "cached" else predictor
    paths = expand_paths([folder])
    fitted = {r.get("sha") for r in (RunDir(run.path).fitted_fingerprints() or {}).values()}
    scored = _score_chunks(run, paths, fitted, kind, batch_size, workers, cache_dir, chunk)
    keys, labels, scores, probs_u, kept, bad, cache, labelled = scored
    order = rank_for_labelling(probs_u, lambda idx: cache.read([keys[i] for i in idx]), n, pool_factor)
    rows = [{"rank": r, "path": kept[i], "predicted_label": run.classes[labels[i]], "score": round(scores[i], 4),
             "uncertainty": round(float(probs_u[i]), 4)} for r, i in enumerate(order, 1)]
    return Suggestions(rows, len(kept), min(len(kept), max(n, n * pool_factor)), bad, labelled)


def _score_chunks(run, paths: list[str], fitted: set, kind: str, batch_size: int, workers: int | None, cache_dir,
                  chunk: int):
    """One pass over ``paths`` in chunks: features into the cache, then the run's calibrated probabilities; keeps
    per image only its cache key, label, score and uncertainty. Copies of a fitted image are left out."""
    weight = run.model.head.weight.detach().float().cpu().numpy()
    bias = run.model.head.bias.detach().float().cpu().numpy()
    keys, labels, scores, u, kept, bad, cache, labelled = [], [], [], [], [], [], None, 0
    for start in range(0, len(paths), chunk):
        part = paths[start:start + chunk]
        feats = extract_features(run.model, part, run.preprocessing, run.runtime, batch_size=batch_size,
                                 workers=workers, cache_dir=cache_dir, desc=f"suggest {start + len(part)}/{len(paths)}",
                                 verbose=False)
        cache, bad = feats.cache, bad + feats.bad
        probs = softmax(feats.array() @ weight.T + bias, run.temperature)
        new = [j for j, key in enumerate(feats.keys) if key not in fitted]
        labelled += len(feats.keys) - len(new)
        keys += [feats.keys[j] for j in new]
        kept += [feats.paths[j] for j in new]
        labels += probs[new].argmax(1).tolist()
        scores += probs[new].max(1).tolist()
        u.append(uncertainty(probs[new], kind))
    return keys, labels, scores, np.concatenate(u) if u else np.zeros(0), kept, bad, cache, labelled


def write_csv(rows: list[dict], path: str | Path) -> Path:
    """The suggestions as a CSV with :data:`COLUMNS` (a labelling tool imports ``path``)."""
    return write_csv_rows(path, COLUMNS, rows, "a file in a folder")


def copy_images(rows: list[dict], dest: str | Path) -> list[str]:
    """Copies the suggested images into ``dest``, named ``<rank>_<name>`` (rank first: they sort in order, and
    two files of one name from different folders cannot collide). Returns the new paths."""
    dest = Path(dest)
    width = len(str(len(rows)))
    out = []
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for row in rows:
            target = dest / f"{row['rank']:0{width}d}_{Path(row['path']).name}"
            shutil.copy2(row["path"], target)
            out.append(str(target))
    except OSError as exc:
        raise OutputError(f"cannot copy into {dest} ({exc.strerror or exc}); pass a folder you can write to.") from exc
    return out
