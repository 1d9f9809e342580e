"""The ``onnxruntime`` engine: an exported ONNX model (``headstart export``), run by ONNX Runtime on the CPU.

``OnnxModel(path)`` reads the classes, preprocessing and temperature from the file's metadata
(:mod:`headstart.predict.metadata`) and answers as every :class:`~headstart.predict.base.Predictor` does.
``headstart predict MODEL.onnx`` and ``headstart serve MODEL.onnx`` use it.

Images are prepared by the run's own eval transform (:func:`headstart.data.transforms.eval_transform`: the same
decode, resize and crop as training's validation and the feature cache), so a file gives the run's probabilities
here up to float rounding. That costs importing torch and torchvision (a few seconds at start-up); a service that
ships without torch can prepare images from the preprocessing the metadata records, as PIL does it, within a few
levels of 255 of these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from headstart.core.choices import MAX_PIXELS
from headstart.core.errors import PathNotFoundError, WeightsError
from headstart.core.onnx import make_session
from headstart.core.preprocessing import Preprocessing
from headstart.data.images import BadImageError, load_image
from headstart.data.transforms import eval_transform
from headstart.predict.base import Predictor
from headstart.predict.metadata import INPUT, ExportMetadata
from headstart.predict.multilabel import Decision


class OnnxModel(Predictor):
    """An ONNX model exported by ``headstart export``, run by ONNX Runtime on the CPU.

    A stable interface (``headstart serve`` relies on it): :attr:`classes`, :attr:`preprocessing`,
    :attr:`temperature`, :attr:`metadata`, :meth:`predict`, :meth:`probabilities`, :meth:`info`.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime's intra-op threads (default: its own choice, the physical cores).

    Raises:
        PathNotFoundError: no such file.
        WeightsError: not an ONNX model, or one without headstart's metadata.
        UsageError: onnxruntime is not installed (a dependency of headstart since eval passes use it).
    """

    engine = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise PathNotFoundError(f"{self.path} does not exist; pass an .onnx file made by `headstart export`.")
        self.session = make_session(self.path, threads)
        self.metadata = ExportMetadata.from_props(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        self.decision = Decision.of(self.metadata.classes, self.metadata.decision)
        if [i.name for i in self.session.get_inputs()] != [INPUT]:
            raise WeightsError(f"{self.path} does not take one input named '{INPUT}'; export it again.")
        self._transforms: dict[int, object] = {}

    @property
    def classes(self) -> list[str]:
        return self.metadata.classes

    @property
    def preprocessing(self) -> Preprocessing:
        return self.metadata.preprocessing

    @property
    def temperature(self) -> float:
        """The run's calibration temperature; already applied inside the graph (``probabilities`` output)."""
        return self.metadata.temperature

    def graph_probabilities(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        """The graph's own ``probabilities`` output (``N x classes``, temperature inside) for a prepared float32
        ``N x 3 x crop x crop`` batch; with ``tta`` the mean over each image and its mirror image."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        probs = self.session.run(["probabilities"], {INPUT: batch})[0]
        if tta:
            mirrored = np.ascontiguousarray(batch[..., ::-1])
            probs = (probs + self.session.run(["probabilities"], {INPUT: mirrored})[0]) / 2
        return probs

    def prepare(self, image, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """One RGB PIL image as the model takes it: the run's eval transform, as a float32 array."""
        if max_pixels not in self._transforms:
            self._transforms[max_pixels] = eval_transform(self.preprocessing, max_pixels)
        return self._transforms[max_pixels](image).numpy()

    def prepared_logits(self, ready: list, tta: bool = False) -> np.ndarray:
        batch = np.ascontiguousarray(np.stack(ready), dtype=np.float32)
        views = [batch, np.ascontiguousarray(batch[..., ::-1])] if tta else [batch]
        return np.stack([self.session.run(["logits"], {INPUT: v})[0] for v in views]).astype(np.float32)

    def view_logits(self, paths, hashes=None, tta: bool = False, batch_size: int = 64, workers: int | None = None):
        paths, out, positions, bad = list(paths), [], [], []
        for start in range(0, len(paths), batch_size):
            ready = []
            for i in range(start, min(start + batch_size, len(paths))):
                try:
                    ready.append(self.prepare(load_image(paths[i])))
                    positions.append(i)
                except BadImageError as exc:
                    bad.append((paths[i], exc.reason))
            if ready:
                out.append(self.prepared_logits(ready, tta))
        logits = np.concatenate(out, axis=1) if out else np.empty((2 if tta else 1, 0, len(self.classes)), np.float32)
        return logits, positions, bad

    def info(self) -> dict[str, Any]:
        """What the model is, with the keys ``headstart serve`` shows for a run (``source``, ``run``, ``model``,
        ``strategy``, ``classes``, ``preprocessing``, ``temperature``, ``test_metrics``) and the export's own
        (``file``, ``quantization``, ``headstart_version``, ``outputs``, ``input``). Names only, no folders: a
        service shows this to its clients."""
        shape = self.session.get_inputs()[0].shape
        meta = self.metadata.info()
        return {"source": "onnx", "engine": self.engine, "file": self.path.name, **meta,
                "run": Path(meta["run"]).name if meta["run"] else "",
                "input": {"name": INPUT, "shape": [d if isinstance(d, int) else str(d) for d in shape],
                          "dtype": "float32"}}

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, model={self.metadata.model!r}, classes={len(self.classes)})"
