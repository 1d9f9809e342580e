"""A frozen-backbone run answered from the feature cache alone, without importing torch.

A linear-probe run (or a recipe whose head phase won) ships the pretrained backbone unchanged and a new linear
head. For an image the feature cache already holds, its logits are one matrix product away: the backbone's
features are on disk, found by (backbone, weights fingerprint, preprocessing, precision) and the image's content
hash. Loading the run through torch costs about 8 s on a 2-core machine (torch, torchvision and timm imports),
more than the whole answer; so here the cache namespace is the one ``train`` recorded in the run
(``summary.json``'s ``feature_key``: the features the head was fitted on, in the precision they were computed in),
the head is read with safetensors' numpy loader and the logits are ``features @ W.T + b``.

Where it cannot answer (a run that adapted its backbone or records no key, a GPU or another precision asked for,
weights numpy cannot read), :func:`open_cached_run` returns None and the torch engine answers; an image not in the
cache is computed by the run loaded through torch on the CPU in the recorded precision (:meth:`CachedRun.load`),
and its features are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headstart.core.choices import MAX_PIXELS
from headstart.core.hashing import KnownHashes, content_hashes
from headstart.core.io import load_weights_numpy
from headstart.core.preprocessing import Preprocessing
from headstart.data.rundir import RunDir, shipped_backbone_is_frozen
from headstart.features.cache import FeatureCache
from headstart.predict.base import Predictor

_SHORT = {"fp32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # a feature key's precision -> --precision


@dataclass
class CachedRun(Predictor):
    """The ``cached`` engine: the parts of a frozen-backbone run its predictions need (classes, calibration
    temperature, the head's weights and the feature-cache namespace of its backbone). ``load()`` gives the
    :class:`~headstart.predict.run.LoadedRun` when an answer needs the backbone: images not in the cache (their
    features are computed and kept), images in memory, or ``tta``."""

    path: Path
    classes: list[str]
    preprocessing: Preprocessing
    temperature: float
    weight: np.ndarray  # (classes, features), float32
    bias: np.ndarray  # (classes,)
    cache: FeatureCache
    device: str = "auto"
    precision: str = "auto"
    frozen_backbone: bool = True
    _loaded: object = field(default=None, repr=False)

    def logits(self, paths: list[str], known: KnownHashes | None = None
               ) -> tuple[np.ndarray, list[int], list[tuple[str, str]]] | None:
        """``(logits (n, classes) float32, positions in paths of the n decodable images, (path, reason) of the
        others)`` when the cache holds every image (or knows it cannot be decoded); None when any must be computed.
        ``known``: hashes the command computed already (the check's), taken from it while the files are unchanged,
        and the others added to it.
        """
        hashes = content_hashes(paths, known)
        good, bad, keys = [], [], []
        located = self.cache.locate([h for h in hashes if isinstance(h, str)])
        found = iter(located[:, 0] >= 0)
        for i, h in enumerate(hashes):
            if not isinstance(h, str):
                bad.append((paths[i], f"cannot be read ({h.strerror or h})"))
            elif h in self.cache.bad:
                next(found)
                bad.append((paths[i], self.cache.bad[h]))
            elif next(found):
                good.append(i)
                keys.append(h)
            else:
                return None
        features = self.cache.read(keys) if keys else np.empty((0, self.weight.shape[1]), dtype=np.float32)
        return features @ self.weight.T + self.bias, good, bad

    engine = "cached"

    def view_logits(self, paths, known=None, tta: bool = False, batch_size: int = 64, workers: int | None = None):
        got = None if tta else self.logits(list(paths), known)
        if got is None:  # an image to compute (or mirror views): through the backbone, features kept in the cache
            return self.load().view_logits(paths, known, tta, batch_size, workers)
        logits, positions, bad = got
        return logits[None], positions, bad

    def prepare(self, image, max_pixels: int = MAX_PIXELS):
        return self.load().prepare(image, max_pixels)

    def prepared_logits(self, ready: list, tta: bool = False) -> np.ndarray:
        return self.load().prepared_logits(ready, tta)

    def load(self):
        """The run loaded through torch (:func:`headstart.predict.run.load_run`), once."""
        if self._loaded is None:
            from headstart.predict.run import load_run  # torch: only when an answer needs the backbone

            self._loaded = load_run(self.path, device=self.device, precision=self.precision)
        return self._loaded


def open_cached_run(run_dir: str | Path, device: str = "auto", precision: str = "auto",
                    cache_dir: str | Path | None = None) -> CachedRun | None:
    """The run at ``run_dir`` as a :class:`CachedRun` when its shipped backbone is the frozen pretrained one and
    the feature cache still holds the namespace ``train`` recorded for it (``summary.json``'s ``feature_key``: the
    features the head was fitted and validated on); else None, and the torch engine answers. Also None where the
    caller asks for something the recorded features are not: a GPU (``--device cuda``) or another precision.

    Raises:
        RunNotFoundError: ``run_dir`` is not a run with a model (as :func:`~headstart.predict.run.load_run` does).
    """
    run = RunDir(run_dir).require_model()
    config, summary = run.config(), run.summary()
    key = summary.get("feature_key")  # runs from before it was recorded: the torch engine
    if not key or not shipped_backbone_is_frozen(config, summary) or device not in ("auto", "cpu"):
        return None
    recorded = _SHORT.get(key.get("precision"))
    if recorded is None or precision not in ("auto", recorded):
        return None
    try:
        tensors = load_weights_numpy(run / run.BEST)
        metadata = run.weights_metadata(run.BEST)
    except (OSError, TypeError):  # unreadable, or bf16 weights numpy cannot hold: the torch path decides
        return None
    weight, bias = tensors.pop("head.weight", None), tensors.pop("head.bias", None)
    if weight is None or bias is None or any(not k.startswith("backbone.") for k in tensors):
        return None
    cache = FeatureCache.existing(key, cache_dir)
    if cache is None or cache.dim not in (None, weight.shape[1]):
        return None
    return CachedRun(run.path, run.classes(), Preprocessing.of(config["preprocessing"]),
                     float(metadata.get("temperature", 1.0)), weight.astype(np.float32), bias.astype(np.float32),
                     cache, "cpu", recorded)
