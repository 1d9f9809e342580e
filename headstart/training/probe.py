"""Linear probe: frozen features computed once (and cached on disk), a head fitted on them in seconds.

Passing every image through a frozen backbone at every epoch (the tutorial way) repeats the same computation.
Here the features come from :mod:`headstart.features` (computed only for images the cache does not hold yet), a
head is fitted on them (:mod:`headstart.training.heads`: logistic regression, nearest class mean or SGD, its
settings chosen on the validation split), and its weights become the model's ``nn.Linear`` head, so nothing
downstream needs to know how the head was trained.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from headstart.core.errors import UsageError
from headstart.core.hashing import KnownHashes
from headstart.core.preprocessing import Preprocessing
from headstart.core.progress import progress
from headstart.core.runtime import Runtime
from headstart.features.extract import extract_features
from headstart.features.forward import fast_forward
from headstart.predict.calibration import calibration_summary, run_temperature, selection_loss
from headstart.training.heads import HEADS, cross_fitted_logits, fit_head, refit_head
from headstart.zoo.model import TransferModel


@torch.inference_mode()
def features_from_loader(model: TransferModel, loader: DataLoader, runtime: Runtime, desc: str = "features"):
    """Pooled features (float32 numpy) and labels of every batch of ``loader``, not cached: for datasets that are
    not image files (tensors in memory, generated images)."""
    model.eval()
    feats, labels, forward = [], [], None
    for images, y in progress(loader, desc, runtime.is_main):
        x = runtime.to_input(images)
        forward = forward or fast_forward(model.backbone, runtime, x[:1], len(loader.dataset))
        with runtime.autocast():
            feats.append(forward(x).float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats).numpy(), torch.cat(labels).numpy()


def _features(model, loader: DataLoader, runtime: Runtime, preprocessing: Preprocessing | None, cache_dir,
              desc: str, known_hashes: KnownHashes | None = None):
    """(features, labels, images computed) from the cache when the loader reads image files, else from the loader."""
    x, y, computed = _feature_source(model, loader, runtime, preprocessing, cache_dir, desc, known_hashes)
    return (x if isinstance(x, np.ndarray) else x.array()), y, computed


def _feature_source(model, loader: DataLoader, runtime: Runtime, preprocessing: Preprocessing | None, cache_dir,
                    desc: str, known_hashes: KnownHashes | None = None):
    """As :func:`_features`, with cached features left in the cache (:class:`Features`, read when needed)."""
    samples = getattr(loader.dataset, "samples", None)
    if preprocessing is None or samples is None:
        x, y = features_from_loader(model, loader, runtime, desc)
        return x, y, len(y)
    feats = extract_features(model, [p for p, _ in samples], preprocessing, runtime, batch_size=loader.batch_size or 64,
                             workers=loader.num_workers, cache_dir=cache_dir, desc=desc, known_hashes=known_hashes)
    return feats, np.array([samples[i][1] for i in feats.positions], dtype=np.int64), feats.computed


def _stacked(parts: list) -> np.ndarray:
    """The features of ``parts`` (arrays or cached :class:`Features`) in one array, each read straight into its
    place: one copy of the features in memory, not the parts and their concatenation."""
    out = np.empty((sum(len(p) for p in parts), parts[0].shape[1] if isinstance(parts[0], np.ndarray) else
                    parts[0].dim), np.float32)
    at = 0
    for part in parts:
        if isinstance(part, np.ndarray):
            out[at:at + len(part)] = part
        elif len(part):
            part.cache.read(part.keys, out=out[at:at + len(part)])
        at += len(part)
    return out


def fit_linear_probe(model: TransferModel, train_loader: DataLoader, val_loader: DataLoader, runtime: Runtime,
                     head: str = "logreg", preprocessing: Preprocessing | None = None,
                     cache_dir: str | Path | None = None, class_weights: torch.Tensor | None = None,
                     known_hashes: KnownHashes | None = None) -> dict:
    """Fits ``model.head`` on frozen features of the train images; returns what was chosen.

    Args:
        model: the transfer model; its backbone is only run, never changed.
        train_loader, val_loader: the train and validation images with the evaluation transform.
        runtime: device and precision.
        head: ``logreg``, ``ncm`` or ``sgd`` (:data:`headstart.training.heads.HEADS`).
        preprocessing: the run's preprocessing. With it, and loaders over image files, features come from
            the on-disk cache; without it they are computed from the loaders every time.
        cache_dir: the feature cache folder (default ``$HEADSTART_CACHE`` or ``~/.cache/headstart/features``).
        class_weights: one loss weight per class for imbalanced data (``--balance``), or None.
        known_hashes: the images' content hashes computed so far (``DataSplits.hashes``), or None.
    """
    if head not in HEADS:
        raise UsageError(f"unknown head '{head}'; choose one of {', '.join(HEADS)} (e.g. --head logreg).")
    t0 = time.time()
    x_train, y_train, n_train = _features(model, train_loader, runtime, preprocessing, cache_dir, "features (train)",
                                          known_hashes)
    x_val, y_val, n_val = _features(model, val_loader, runtime, preprocessing, cache_dir, "features (val)",
                                    known_hashes)
    t1 = time.time()
    fitted = fit_head(head, x_train, y_train, x_val, y_val, model.num_classes, class_weight=class_weights)
    fitted.copy_to(model.head)
    # Scored as the trained phases are (after temperature scaling), so the run compares like with like.
    temperature, calibrated, all_correct = selection_loss(fitted.logits(x_val), y_val)
    return {**fitted.info, "probe_val_loss_calibrated": calibrated, "probe_temperature": temperature,
            "probe_val_all_correct": all_correct,
            "features_computed": n_train + n_val, "features_cached": len(y_train) + len(y_val) - n_train - n_val,
            "feature_seconds": round(t1 - t0, 3), "head_seconds": round(time.time() - t1, 3)}


def refit_linear_probe(model: TransferModel, loaders: list[DataLoader], runtime: Runtime, chosen: dict,
                       head: str = "logreg", preprocessing: Preprocessing | None = None,
                       cache_dir: str | Path | None = None, class_weights: torch.Tensor | None = None,
                       folds: int = 5, known_hashes: KnownHashes | None = None) -> dict:
    """Fits ``model.head`` again on the features of every image in ``loaders`` (train and validation) with the
    settings the first fit chose on validation (``chosen``: its info), so the shipped head has seen every label.

    The validation images now train the head, so they can no longer calibrate it, and the temperature fitted to
    the head before the refit does not carry over (measured, ``benchmarks/refit_calibration.py``). The shipped
    temperature is cross-fitted instead: fitted on out-of-fold logits of train + validation, each image scored by
    the head refitted with the same settings on the other ``folds`` (:func:`cross_fitted_logits`).

    The features come from the cache the first fit filled: this costs ``folds + 1`` head fits, not a pass through
    the backbone. Memory: the heads here need their features in memory (L-BFGS over all of them), read from the
    cache straight into one array: images x feature size x 4 bytes, 0.5 GB for 100,000 images of
    EfficientNet-Lite0's 1,280 features. From :data:`~headstart.training.heads.COPY_FREE_ABOVE` (0.13 GB) logreg
    makes no other copy (:mod:`~headstart.training.logreg_lbfgs`); below it, and for ``ncm`` and ``sgd``, a
    cross-fit fold holds about 2.6 times that. Returns what was refitted (for the run's summary) with
    ``temperature`` and ``temperature_source``, and ``calibration``: the out-of-fold figures at that temperature;
    without the last three when a class has a single image (no fold can hold it out): the caller keeps
    validation's temperature.
    """
    parts = [_feature_source(model, loader, runtime, preprocessing, cache_dir, "features (refit)", known_hashes)
             for loader in loaders]
    x, y = _stacked([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    del parts  # one copy of the features, not two: at 100,000 Lite0 images each is 0.5 GB
    fitted = refit_head(head, x, y, model.num_classes, chosen, class_weight=class_weights)
    fitted.copy_to(model.head)
    oof, used = cross_fitted_logits(head, x, y, model.num_classes, chosen, class_weight=class_weights, folds=folds)
    if oof is None:
        return fitted.info
    temperature = run_temperature(oof, y)
    source = (f"cross-fitted: {used}-fold, on out-of-fold logits of the {len(y)} train + validation images, each "
              f"from a {head} head refitted with the shipped settings on the other folds")
    if (oof.argmax(1) == y).all():
        source += "; every one of them right, nothing to fit (T = 1)"
    calibration = {**calibration_summary(oof, y, temperature),
                   "describes": f"train + validation images, out of fold ({used} folds): heads fitted as the shipped "
                                "one; T fitted here and shipped"}
    return {**fitted.info, "temperature": temperature, "temperature_source": source, "cross_fit_folds": used,
            "calibration": calibration}


@dataclass(frozen=True)
class ProbeOptions:
    """How a phase with ``fit="features"`` fits the head: the training loop calls it as
    ``probe(model, train_loader, val_loader, runtime)`` (it knows nothing about features or caches), and ``train``
    calls :meth:`refit` after validation has chosen.

    Attributes:
        head: ``logreg``, ``ncm`` or ``sgd`` (:data:`headstart.training.heads.HEADS`).
        preprocessing: the run's preprocessing; with it, features of image files come from the on-disk cache.
        class_weights: one loss weight per class (``--balance``), or None.
        cache_dir: the feature cache folder (default ``$HEADSTART_CACHE`` or ``~/.cache/headstart/features``).
        known_hashes: the images' content hashes computed so far (``DataSplits.hashes``): they are not read again.
    """

    head: str = "logreg"
    preprocessing: Preprocessing | None = None
    class_weights: torch.Tensor | None = None
    cache_dir: str | Path | None = None
    known_hashes: KnownHashes | None = None

    def __post_init__(self):
        if self.head not in HEADS:
            raise UsageError(f"unknown head '{self.head}'; choose one of {', '.join(HEADS)} (e.g. --head logreg).")

    def _kwargs(self) -> dict:
        return {"head": self.head, "preprocessing": self.preprocessing, "cache_dir": self.cache_dir,
                "class_weights": self.class_weights, "known_hashes": self.known_hashes}

    def __call__(self, model: TransferModel, train_loader: DataLoader, val_loader: DataLoader,
                 runtime: Runtime) -> dict:
        return fit_linear_probe(model, train_loader, val_loader, runtime, **self._kwargs())

    def refit(self, model: TransferModel, loaders: list[DataLoader], runtime: Runtime, chosen: dict) -> dict:
        return refit_linear_probe(model, loaders, runtime, chosen, **self._kwargs())
