"""What every predictor is: the one interface ``evaluate``, ``predict``, ``report``, ``serve`` and export parity use.

A predictor turns images into the run's calibrated class probabilities. Three engines implement it
(:func:`headstart.predict.open_predictor` picks one, once):

- ``torch``: the run's network in eval mode, BatchNorm folded, channels-last
  (:class:`~headstart.predict.run.LoadedRun`);
- ``cached``: a frozen-backbone run's head on the features the cache holds under the key ``train`` recorded
  (:class:`~headstart.predict.cached.CachedRun`; no torch when every image is there);
- ``onnxruntime``: an exported ``.onnx`` file (:class:`~headstart.predict.onnx.OnnxModel`).

Every engine prepares an image with the same function (:func:`headstart.data.transforms.eval_transform`: decode,
resize, crop, normalise), so the same file gives the same probabilities whichever engine answers, up to the
engines' arithmetic (fp32 against fp32: about 1e-6).

An engine implements :meth:`Predictor.view_logits` (files) and :meth:`Predictor.prepared_logits` (images already
prepared); the records (top-k, errors) are made here, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.choices import MAX_PIXELS
from headstart.core.hashing import KnownHashes
from headstart.core.preprocessing import Preprocessing
from headstart.data.rundir import RunDir
from headstart.predict.calibration import softmax
from headstart.predict.metadata import headline_test_metrics
from headstart.predict.multilabel import Decision
from headstart.predict.records import path_records, predict_images, top_classes


class Predictor:
    """Class probabilities from images, by one engine. Subclasses set the attributes and the two ``*_logits``."""

    engine: str  # "torch", "cached" or "onnxruntime": recorded in what a command writes
    classes: list[str]
    preprocessing: Preprocessing
    temperature: float  # probabilities are softmax(logits / T), averaged over the views
    path: Path  # the run directory, or the .onnx file
    frozen_backbone: bool = False
    # A multi-label run's sigmoid scores and per-label thresholds (:mod:`headstart.predict.multilabel`); None for
    # a single-label one, whose scores are the softmax. :func:`headstart.predict.open_predictor` sets it.
    decision: Decision | None = None

    def view_logits(self, paths: Sequence[str], known: KnownHashes | None = None, tta: bool = False,
                    batch_size: int = 64, workers: int | None = None
                    ) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
        """``(logits (views, n, classes) float32, positions in paths of the n images used, (path, reason) of the
        others)``. ``known``: content hashes the command computed already (the check's), so no file is hashed
        twice; ``tta``: two views, the image and its mirror image."""
        raise NotImplementedError

    def prepare(self, image, max_pixels: int = MAX_PIXELS) -> Any:
        """One RGB PIL image as the network takes it (refused when its resize would pass ``max_pixels``)."""
        raise NotImplementedError

    def prepared_logits(self, ready: list, tta: bool = False) -> np.ndarray:
        """Logits ``(views, n, classes)`` of images already through :meth:`prepare`."""
        raise NotImplementedError

    def probabilities(self, ready: list, tta: bool = False) -> np.ndarray:
        """Calibrated probabilities ``(n, classes)`` of prepared images (per-label scores for a multi-label run)."""
        return self.scores(self.prepared_logits(ready, tta))

    def scores(self, view_logits: np.ndarray) -> np.ndarray:
        """``(views, n, classes)`` logits -> calibrated ``(n, classes)`` scores, as the run's task defines them."""
        if self.decision is not None:
            return self.decision.scores(view_logits)
        return softmax(view_logits, self.temperature).mean(0)

    def record(self, row, topk: int = 1) -> dict[str, Any]:
        """One image's answer: top-k classes, or a multi-label run's labels above their thresholds."""
        return self.decision.record(row) if self.decision is not None else top_classes(row, self.classes, topk)

    def predict_paths(self, paths: Sequence[str], topk: int = 1, batch_size: int = 64, tta: bool = False,
                      workers: int | None = None) -> list[dict]:
        """One record per file, in order: ``path``, ``label``, ``score``, ``topk``; or ``error`` (said on stderr)
        for a file that cannot be used."""
        logits, positions, bad = self.view_logits(list(paths), tta=tta, batch_size=batch_size, workers=workers)
        return path_records(list(paths), positions, self.scores(logits), bad, lambda row: self.record(row, topk))

    def predict(self, images, topk: int = 1, tta: bool = False, batch_size: int = 64) -> dict | list[dict]:
        """Top-k records for one image or a list (PIL images, numpy arrays or paths), without writing anything;
        an image that cannot be used gets ``label`` None and an ``error`` instead of stopping the others."""
        return predict_images(images, self.prepare, lambda ready: self.probabilities(ready, tta),
                              lambda row: self.record(row, topk), batch_size)

    def predict_prepared(self, ready: list, topk: int = 1, tta: bool = False, batch_size: int = 64) -> list[dict]:
        """:meth:`predict` on images already through :meth:`prepare`, ``batch_size`` per pass."""
        return [self.record(row, topk) for start in range(0, len(ready), batch_size)
                for row in self.probabilities(ready[start:start + batch_size], tta)]

    def info(self) -> dict[str, Any]:
        """What ``GET /info`` shows of a run (an exported file has its own): names only, no folders."""
        run = RunDir(self.path)
        config, summary = run.config(), run.summary()
        # The run's name, not its path: a client has no business knowing the server's folders.
        return {"source": "run", "engine": self.engine, "run": self.path.name, "model": config.get("model"),
                "strategy": summary.get("strategy", config.get("strategy")), "classes": list(self.classes),
                "preprocessing": self.preprocessing.describe(), "temperature": self.temperature,
                **({"task": "multilabel", "thresholds": self.decision.thresholds} if self.decision else {}),
                "test_metrics": headline_test_metrics(run.read_json(RunDir.TEST_METRICS), summary)}

