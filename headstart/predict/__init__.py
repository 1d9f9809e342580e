"""From a run, or its exported model, to class probabilities: one way for every command.

:func:`open_predictor` is the one door. ``evaluate``, ``predict``, ``report``, ``serve`` and export's parity check
all go through it, and get a :class:`~headstart.predict.base.Predictor` whose ``engine`` says which of the three
answers (``torch``, ``cached`` or ``onnxruntime``); the choice is made here, once, and commands record it.
"""

from __future__ import annotations

from pathlib import Path

from headstart.core.errors import PathNotFoundError, UsageError
from headstart.data.rundir import RunDir
from headstart.predict.base import Predictor
from headstart.predict.cached import open_cached_run
from headstart.predict.multilabel import Decision


def open_predictor(path: str | Path, device: str = "auto", precision: str = "auto", tta: bool = False,
                   cache_dir: str | Path | None = None) -> Predictor:
    """The predictor for ``path``: an exported ``.onnx`` file (ONNX Runtime), a frozen-backbone run whose
    features the cache can give (its head on them; not with ``tta``, which needs mirrored images), or any other
    run (its network through torch).

    Raises:
        PathNotFoundError: no such file or run.
        UsageError: a file that is neither a run nor an ``.onnx`` model (a weights or ``.pt2`` file).
        RunNotFoundError: a folder that is not a run with a model.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise PathNotFoundError(f"{path} does not exist; pass an exported .onnx file or a run directory.")
        from headstart.predict.onnx import OnnxModel  # torch and ONNX Runtime: loaded only for this engine

        return OnnxModel(path)  # a multi-label export's decision is in its metadata
    if path.is_file():
        raise UsageError(f"{path} is a file, not a run directory; pass the folder of a `headstart train` run or an "
                         "exported .onnx model (a .pt2 loads in Python with torch.export.load).")
    predictor = None if tta else open_cached_run(path, device=device, precision=precision, cache_dir=cache_dir)
    if predictor is None:
        from headstart.predict.run import load_run  # torch: a cached run answers without it

        predictor = load_run(path, device=device, precision=precision)
    predictor.decision = run_decision(path, predictor.classes)
    return predictor


def run_decision(path: str | Path, classes: list[str]) -> Decision | None:
    """A multi-label run's decision (temperatures and thresholds, stored with its shipped weights), else None."""
    return Decision.of(classes, RunDir(path).weights_metadata(RunDir.BEST).get("decision"))


__all__ = ["Decision", "Predictor", "open_predictor", "run_decision"]
