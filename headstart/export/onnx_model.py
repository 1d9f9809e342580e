"""An exported ONNX model, used through ONNX Runtime with numpy and PIL only: no torch is imported.

``OnnxModel(path)`` reads the classes, preprocessing and temperature from the file's metadata
(:mod:`headstart.export.metadata`) and answers the same small interface as :class:`headstart.predict.run.LoadedRun`:
``classes``, ``preprocessing``, ``temperature``, ``predict(images, topk)`` and ``info()``. ``headstart predict
MODEL.onnx`` and ``headstart serve MODEL.onnx`` use it; so can a service that ships without torch (about 60 MB of
wheels instead of 1 GB).

Preprocessing is headstart's eval transform redone with PIL: the shorter side resized to ``resize`` (antialiased,
the stored interpolation), a centre crop of ``crop`` placed as torchvision places it, /255, (x - mean) / std.
torchvision resizes a uint8 tensor where PIL resizes the image; both implement the same antialiased filters, and
the pixels differ by at most a few levels of 255 (``export.json`` records the figures on the run's images: the same
top-1 on all of them when exported here, probabilities within about 1e-3).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from headstart.core.choices import MAX_PIXELS
from headstart.core.errors import PathNotFoundError, UsageError, WeightsError
from headstart.core.preprocessing import Preprocessing
from headstart.data.images import check_resize
from headstart.data.predictions import predict_images, top_classes
from headstart.export.metadata import INPUT, ExportMetadata

_PIL_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def preprocess(image: Image.Image, pre: Preprocessing, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An RGB PIL image -> float32 ``3 x crop x crop``, as :func:`headstart.data.transforms.eval_transform` makes it.

    Sizes and the crop's position follow torchvision exactly (the long side truncated, the offset rounded half to
    even); ``nearest`` samples as torch's tensor kernel does (``floor(i * in / out)``), not as PIL does.
    """
    w, h = image.size
    check_resize("image", w, h, pre.resize, max_pixels)  # a 20000 x 1 image would become 5,120,000 x 256
    new_w, new_h = _resized_size(w, h, pre.resize)
    if (new_w, new_h) != (w, h):
        if pre.interpolation == "nearest":
            arr = np.asarray(image)
            image = Image.fromarray(arr[_nearest_index(h, new_h)][:, _nearest_index(w, new_w)])
        else:
            image = image.resize((new_w, new_h), resample=_PIL_FILTERS[pre.interpolation])
    top, left = round((new_h - pre.crop) / 2.0), round((new_w - pre.crop) / 2.0)  # as torchvision: half to even
    arr = np.asarray(image.crop((left, top, left + pre.crop, top + pre.crop)), dtype=np.float32) / np.float32(255)
    arr = (arr - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _resized_size(w: int, h: int, short_side: int) -> tuple[int, int]:
    """torchvision's ``Resize(short_side)``: the shorter side becomes ``short_side``, the longer one is truncated."""
    if w <= h:
        return short_side, int(short_side * h / w)
    return int(short_side * w / h), short_side


def _nearest_index(size_in: int, size_out: int) -> np.ndarray:
    scale = np.float32(size_in) / np.float32(size_out)
    return np.minimum(np.floor(np.arange(size_out, dtype=np.float32) * scale).astype(np.int64), size_in - 1)


class OnnxModel:
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

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ModuleNotFoundError:
            raise UsageError(f"reading {path} needs ONNX Runtime: pip install onnxruntime.") from None
        self.path = Path(path)
        if not self.path.is_file():
            raise PathNotFoundError(f"{self.path} does not exist; pass an .onnx file made by `headstart export`.")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: its warnings about unused initializers are not the user's
        from onnxruntime.capi import onnxruntime_pybind11_state as errors

        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except (errors.Fail, errors.InvalidProtobuf, errors.InvalidGraph, errors.InvalidArgument,
                errors.NotImplemented, errors.NoSuchFile) as exc:
            reason = str(exc).strip().splitlines()[0].split(" : ")[-1][:200] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"{self.path} cannot be loaded as an ONNX model ({reason}).") from None
        self.metadata = ExportMetadata.from_props(self.session.get_modelmeta().custom_metadata_map, str(self.path))
        if [i.name for i in self.session.get_inputs()] != [INPUT]:
            raise WeightsError(f"{self.path} does not take one input named '{INPUT}'; export it again.")

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

    def probabilities(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        """Calibrated class probabilities (``N x classes``) for a preprocessed float32 ``N x 3 x crop x crop`` batch.

        Args:
            tta: the mean over each image and its mirror image, as :func:`headstart.predict.run.predict_probs`.
        """
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        probs = self.session.run(["probabilities"], {INPUT: batch})[0]
        if tta:
            mirrored = np.ascontiguousarray(batch[..., ::-1])
            probs = (probs + self.session.run(["probabilities"], {INPUT: mirrored})[0]) / 2
        return probs

    def predict(self, images, topk: int = 1, tta: bool = False, batch_size: int = 64) -> dict | list[dict]:
        """Top-k predictions, exactly as :meth:`headstart.predict.run.LoadedRun.predict` takes and gives them (PIL
        images, numpy arrays or paths; one dict per image, or ``error`` for one that cannot be used), with
        ``batch_size`` images per ONNX Runtime call."""
        return predict_images(images, self.prepare, lambda ready: self.probabilities(np.stack(ready), tta),
                              self.classes, topk, batch_size)

    def prepare(self, image: Image.Image, max_pixels: int = MAX_PIXELS) -> np.ndarray:
        """One RGB PIL image as the model takes it (:func:`preprocess`): what :meth:`predict_prepared` batches."""
        return preprocess(image, self.preprocessing, max_pixels)

    def predict_prepared(self, ready: list[np.ndarray], topk: int = 1, tta: bool = False,
                         batch_size: int = 64) -> list[dict]:
        """:meth:`predict` on images already through :meth:`prepare`, ``batch_size`` per ONNX Runtime call."""
        return [top_classes(row, self.classes, topk) for start in range(0, len(ready), batch_size)
                for row in self.probabilities(np.stack(ready[start:start + batch_size]), tta)]

    def predict_paths(self, paths: list[str], topk: int = 1, batch_size: int = 64, tta: bool = False) -> list[dict]:
        """:meth:`predict` on files, each result with its ``path`` first, as :func:`headstart.predict.run.predict_paths`
        gives them (a file that cannot be read is named on stderr and gets an ``error``)."""
        results = []
        for path, r in zip(paths, self.predict(list(paths), topk=topk, tta=tta, batch_size=batch_size)):
            if r.get("error"):
                print(f"cannot predict {path}: {r['error']}", file=sys.stderr)
            results.append({"path": path, **r})
        return results

    def info(self) -> dict[str, Any]:
        """What the model is, with the keys ``headstart serve`` shows for a run (``source``, ``run``, ``model``,
        ``strategy``, ``classes``, ``preprocessing``, ``temperature``, ``test_metrics``) and the export's own
        (``file``, ``quantization``, ``headstart_version``, ``outputs``, ``input``). Names only, no folders: a
        service shows this to its clients."""
        shape = self.session.get_inputs()[0].shape
        meta = self.metadata.info()
        return {"source": "onnx", "file": self.path.name, **meta, "run": Path(meta["run"]).name if meta["run"] else "",
                "input": {"name": INPUT, "shape": [d if isinstance(d, int) else str(d) for d in shape],
                          "dtype": "float32"}}

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, model={self.metadata.model!r}, classes={len(self.classes)})"
