"""Heat maps of a run's predictions as pictures: the image the network saw with its Grad-CAM laid over it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from headstart.core.errors import OutputError, UsageError
from headstart.data.images import BadImageError, load_image
from headstart.data.transforms import eval_resize_crop, to_float_normalized
from headstart.explain.gradcam import grad_cam
from headstart.predict.base import Predictor
from headstart.predict.run import LoadedRun

ALPHA = 0.5  # the heat map's share of each pixel


def torch_run(predictor: Predictor) -> LoadedRun:
    """The run's network through torch, which gradients need: the predictor itself, or the run a cached-feature
    predictor loads (:meth:`~headstart.predict.cached.CachedRun.load`).

    Raises:
        UsageError: an exported ``.onnx`` model, which holds no gradients.
    """
    if isinstance(predictor, LoadedRun):
        return predictor
    if predictor.engine == "cached":
        return predictor.load()
    raise UsageError(f"{predictor.path} is an exported model without gradients; heat maps need the run directory "
                     "it was exported from.")


def overlay(picture: torch.Tensor, heatmap: np.ndarray, alpha: float = ALPHA) -> Image.Image:
    """``picture`` (``(3, H, W)`` uint8, what the network saw) blended with ``heatmap`` (``(H, W)`` in [0, 1]) in
    matplotlib's ``jet`` colours: red where the evidence for the class is strongest, blue where there is none."""
    from matplotlib import colormaps  # matplotlib: paid only when a heat map is drawn

    colours = (colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3] * 255).astype(np.float32)
    base = picture.permute(1, 2, 0).numpy().astype(np.float32)
    return Image.fromarray(((1 - alpha) * base + alpha * colours).round().astype(np.uint8))


def heatmap_images(run: LoadedRun, paths: Sequence[str], targets: Sequence[int],
                   batch_size: int = 16) -> list[Image.Image | str]:
    """The overlay of each image for its target class (usually its prediction), or the reason a file could not be
    read, in order."""
    crop, normalize = eval_resize_crop(run.preprocessing), to_float_normalized(run.preprocessing)
    results: list[Image.Image | str] = []
    for start in range(0, len(paths), batch_size):
        pictures, wanted, where = [], [], []
        for i in range(start, min(start + batch_size, len(paths))):
            try:
                pictures.append(crop(load_image(paths[i])))
            except BadImageError as exc:
                results.append(exc.reason)
                continue
            wanted.append(int(targets[i]))
            where.append(len(results))
            results.append("")
        if not pictures:
            continue
        maps = grad_cam(run.model, torch.stack([normalize(p) for p in pictures]), wanted, batch_size=batch_size)
        for slot, picture, heatmap in zip(where, pictures, maps):
            results[slot] = overlay(picture, heatmap)
    return results


def explain_records(run: LoadedRun, records: list[dict], out_dir: str | Path) -> list[dict]:
    """Writes the heat map of each prediction record (:meth:`Predictor.predict_paths`) for its predicted class as
    ``OUT_DIR/<name>.gradcam.png`` and records its path under ``heatmap``; records with an ``error`` are left as
    they are.

    Raises:
        OutputError: ``out_dir`` is a file or cannot be written.
    """
    out = _output_folder(out_dir)
    index = {c: i for i, c in enumerate(run.classes)}
    todo = [r for r in records if not r.get("error") and r.get("label") in index]
    pictures = heatmap_images(run, [r["path"] for r in todo], [index[r["label"]] for r in todo])
    names: set[str] = set()
    for record, picture in zip(todo, pictures):
        if isinstance(picture, str):
            record["heatmap_error"] = picture
            continue
        target = out / _unique(Path(record["path"]).stem, names)
        picture.save(target)
        record["heatmap"] = str(target)
    return records


def _output_folder(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file; pass a folder for the heat maps.")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot make the heat-map folder {out} ({exc.strerror or exc}); pass a folder you can "
                          "write to.") from None
    return out


def _unique(stem: str, taken: set[str]) -> str:
    """``stem.gradcam.png``; two inputs with the same name (in different folders) get ``stem-2...`` and so on."""
    name, n = f"{stem}.gradcam.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.gradcam.png"
    taken.add(name)
    return name
