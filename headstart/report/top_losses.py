"""Top losses: the held-out images the model gets most confidently wrong (fastai's ``plot_top_losses``).

They are where a user learns most in a minute: a mislabelled file, a class that two folders share, a kind of
picture training never showed. The run is loaded from its directory and predicts its own test and validation
images (``split.json``) with its calibrated scores; an image's loss is ``-log p(true class)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from headstart.data.rundir import RunDir
from headstart.predict import open_predictor

CHUNK = 256  # images predicted per call


@dataclass
class Prediction:
    path: str
    split: str
    true: str
    predicted: str
    score: float  # calibrated probability of the predicted class
    p_true: float  # of the true class

    @property
    def loss(self) -> float:
        return -math.log(max(self.p_true, 1e-12))

    @property
    def wrong(self) -> bool:
        return self.predicted != self.true


@dataclass
class HeldOutPredictions:
    """The run's predictions on (up to ``max_images`` of) its test and validation images."""

    predictions: list[Prediction]
    available: dict[str, int]  # images per split in split.json
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): moved or damaged since

    def top_losses(self, n: int) -> tuple[list[Prediction], bool]:
        """The ``n`` wrong predictions with the highest loss; when none is wrong, the ``n`` least sure right ones
        (and False: they are not mistakes)."""
        ranked = sorted(self.predictions, key=lambda p: p.loss, reverse=True)
        wrong = [p for p in ranked if p.wrong]
        return (wrong[:n], True) if wrong else (ranked[:n], False)


def held_out_predictions(run_dir: str, max_images: int = 2000, device: str = "auto", batch_size: int = 64,
                         loaded=None) -> HeldOutPredictions:
    """Predicts the run's test images, then its validation images, ``max_images`` at most in all.

    ``loaded`` is the run's predictor when the caller has it (e.g. ``evaluate``); by default
    :func:`headstart.predict.open_predictor` opens ``run_dir`` on ``device``.

    Raises:
        RunNotFoundError: the run has no model or no ``split.json``.
    """
    run = RunDir(run_dir)
    splits = run.split()
    loaded = loaded if loaded is not None else open_predictor(run.path, device=device)
    chosen = []
    for name in ("test", "val"):
        chosen += [(p, y, name) for p, y in getattr(splits, name)][: max(0, max_images - len(chosen))]
    index = {c: i for i, c in enumerate(loaded.classes)}
    predictions, unreadable = [], []
    for start in range(0, len(chosen), CHUNK):
        part = chosen[start:start + CHUNK]
        # A frozen backbone's features come from the cache train filled (the head only runs), without torch when
        # they are all there.
        results = loaded.predict_paths([p for p, _, _ in part], topk=len(loaded.classes), batch_size=batch_size)
        for (path, y, split), r in zip(part, results):
            if r.get("error"):
                unreadable.append((path, r["error"]))
                continue
            true = splits.classes[y]
            scores = {t["label"]: t["score"] for t in r["topk"]}
            predictions.append(Prediction(path, split, true, r["label"], r["score"],
                                          scores.get(true, 0.0) if true in index else 0.0))
    return HeldOutPredictions(predictions, {"test": len(splits.test), "val": len(splits.val)}, unreadable)

