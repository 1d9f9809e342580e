"""What ``serve`` serves: a run directory or an exported model, behind one small interface.

Anything with ``classes``, ``predict(images, topk)`` (PIL images in, one dict per image out: ``label``, ``score``,
``topk``, or ``label`` None and ``error``) and ``info()`` can be served; :func:`load_model` opens it
(:func:`headstart.predict.open_predictor`). A model
that also has ``prepare(image, max_pixels)`` and ``predict_prepared(ready, topk, batch_size)`` (every predictor does) is
served with each upload prepared as soon as it is decoded, so a request never holds its full-size pictures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from headstart.predict import open_predictor


class ServableModel(Protocol):
    classes: list[str]

    def predict(self, images: list, topk: int = 1) -> list[dict]: ...

    def info(self) -> dict[str, Any]: ...


def load_model(path: str | Path, device: str = "auto") -> ServableModel:
    """A run directory (``headstart train --out``) or an exported ``.onnx`` file, ready to predict
    (:func:`headstart.predict.open_predictor`)."""
    return open_predictor(path, device=device)
