"""What ``serve`` serves: a run directory or an exported model, behind one small interface.

Anything with ``classes``, ``predict(images, topk)`` (PIL images in, one dict per image out: ``label``, ``score``,
``topk``, or ``label`` None and ``error``) and ``info()`` can be served; :func:`load_model` picks the loader. A model
that also has ``prepare(image, max_pixels)`` and ``predict_prepared(ready, topk, batch_size)`` (both loaders' do) is
served with each upload prepared as soon as it is decoded, so a request never holds its full-size pictures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from headstart.core.choices import MAX_PIXELS
from headstart.core.errors import PathNotFoundError, UsageError
from headstart.data.rundir import RunDir
from headstart.export.metadata import headline_test_metrics as _test_metrics


class ServableModel(Protocol):
    classes: list[str]

    def predict(self, images: list, topk: int = 1) -> list[dict]: ...

    def info(self) -> dict[str, Any]: ...


def load_model(path: str | Path, device: str = "auto") -> ServableModel:
    """A run directory (``headstart train --out``) or an exported ``.onnx`` file, ready to predict."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise PathNotFoundError(f"{path} does not exist; pass an exported .onnx file or a run directory.")
        from headstart.export.onnx_model import OnnxModel

        return OnnxModel(path)
    if path.is_file():
        raise UsageError(f"{path} is a file, not a run directory; pass the folder of a `headstart train` run or an "
                         "exported .onnx model.")
    from headstart.predict.run import load_run

    return RunModel(load_run(path, device=device))


class RunModel:
    """A :class:`~headstart.predict.run.LoadedRun` with what ``GET /info`` shows: its model, classes, preprocessing,
    calibration temperature and the run's test metrics."""

    def __init__(self, run):
        self.run = run
        self.classes = run.classes

    def predict(self, images: list, topk: int = 1) -> list[dict]:
        return self.run.predict(list(images), topk=topk)

    def prepare(self, image, max_pixels: int = MAX_PIXELS):
        return self.run.prepare(image, max_pixels)

    def predict_prepared(self, ready: list, topk: int = 1, batch_size: int = 64) -> list[dict]:
        return self.run.predict_prepared(ready, topk=topk, batch_size=batch_size)

    @property
    def preprocessing(self):
        return self.run.preprocessing

    def info(self) -> dict[str, Any]:
        run = RunDir(self.run.path)
        summary = run.summary()
        # The run's name, not its path: a client has no business knowing the server's folders.
        return {"source": "run", "run": self.run.path.name, "model": self.run.config.get("model"),
                "strategy": summary.get("strategy", self.run.config.get("strategy")),
                "classes": list(self.classes), "preprocessing": self.run.preprocessing.describe(),
                "temperature": self.run.temperature,
                "test_metrics": _test_metrics(run.read_json(RunDir.TEST_METRICS), summary)}
