"""Loading a trained model back from its run directory, and predicting on image files or folders."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from headstart.core.errors import PathNotFoundError, UsageError
from headstart.core.preprocessing import Preprocessing
from headstart.core.runtime import Runtime, make_runtime
from headstart.data.dataset import make_loader
from headstart.data.images import BadImageError, is_image_file, load_image
from headstart.data.sources import list_images
from headstart.data.transforms import eval_transform
from headstart.model import TransferModel, build_model
from headstart.rundir import RunDir


@dataclass
class LoadedRun:
    model: TransferModel
    classes: list[str]
    preprocessing: Preprocessing
    config: dict
    runtime: Runtime
    path: Path
    temperature: float = 1.0  # fitted on the run's validation images; probabilities are softmax(logits / T)


def load_run(run_dir: str | Path, device: str = "auto", precision: str = "auto") -> LoadedRun:
    """Rebuilds the architecture from ``config.yaml`` and loads ``best.safetensors``; needs nothing else."""
    run = RunDir(run_dir).require_model()
    config, classes = run.config(), run.classes()
    model = build_model(config["model"], len(classes), pretrained=False)
    model.load_state_dict(run.weights(run.BEST))
    runtime = make_runtime(device, precision)
    runtime.prepare(model).eval()
    # Runs from before calibration have no temperature: their scores stay as they were (T = 1).
    temperature = float(run.weights_metadata(run.BEST).get("temperature", 1.0))
    return LoadedRun(model, classes, Preprocessing.of(config["preprocessing"]), config, runtime, run.path, temperature)


def expand_paths(paths: list[str | Path]) -> list[str]:
    """Files as given, folders expanded recursively to their image files."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise UsageError(f"{p} holds no image files.")
            out += found
        elif p.is_file():
            out.append(str(p))
        else:
            raise PathNotFoundError(f"{p} does not exist.")
    return out


class _PathDataset(torch.utils.data.Dataset):
    """Images for prediction; a broken file yields a flag instead of stopping the whole batch."""

    def __init__(self, paths: list[str], transform):
        self.paths, self.transform = paths, transform
        self._blank = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return self.transform(load_image(self.paths[i])), ""
        except BadImageError as exc:
            if self._blank is None:
                from PIL import Image

                self._blank = self.transform(Image.new("RGB", (8, 8)))
            return self._blank, exc.reason


@torch.no_grad()
def view_logits(model: torch.nn.Module, images: torch.Tensor, runtime: Runtime, tta: bool = False) -> torch.Tensor:
    """Logits (float32, CPU) of a batch of eval-transformed images, one row of views per image: (views, n, classes).
    With ``tta`` the views are the image and its mirror image."""
    x = runtime.to_input(images)
    views = [x, x.flip(-1)] if tta else [x]
    with runtime.autocast():
        return torch.stack([model(v).float() for v in views]).cpu()


def probs_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The softmax of ``logits / temperature`` averaged over the views (the first dimension of ``logits``)."""
    return (logits / temperature).softmax(-1).mean(0)


def predict_probs(model: torch.nn.Module, images: torch.Tensor, runtime: Runtime, tta: bool = False,
                  temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities (float32, CPU) for a batch of eval-transformed images.

    Args:
        tta: test-time augmentation: the mean of the softmax over the image and its mirror image; usually a fraction
            of a point more accurate and better calibrated, for twice the compute. Leave it off where mirroring
            changes the meaning (text, digits, left/right anatomy).
        temperature: the run's calibration temperature (:attr:`LoadedRun.temperature`); 1 leaves the scores raw.
    """
    return probs_from_logits(view_logits(model, images, runtime, tta), temperature)


def predict_loader(run: LoadedRun, loader, tta: bool = False,
                   desc: str = "predict") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every view (``(views, n, classes)``, see :func:`view_logits`) and labels for every batch of
    ``loader`` (``(images, labels)`` batches), in order. :func:`probs_from_logits` turns them into scores."""
    from tqdm.auto import tqdm

    run.model.eval()
    logits, labels = [], []
    for images, y in tqdm(loader, desc=desc, leave=False, disable=None):
        logits.append(view_logits(run.model, images, run.runtime, tta))
        labels.append(torch.as_tensor(y))
    return torch.cat(logits, dim=1), torch.cat(labels)


@torch.no_grad()
def predict_paths(run: LoadedRun, paths: list[str], topk: int = 1, batch_size: int = 64,
                  workers: int | None = None, tta: bool = False) -> list[dict]:
    """Top-k predictions for each image; a file that cannot be read gets an ``error`` instead.

    Args:
        tta: average the softmax over each image and its mirror image (:func:`predict_probs`).
    """
    topk = max(1, min(topk, len(run.classes)))
    ds = _PathDataset(paths, eval_transform(run.preprocessing))
    loader = make_loader(ds, batch_size, shuffle=False, workers=workers)
    results, i = [], 0
    for images, errors in loader:
        probs = predict_probs(run.model, images, run.runtime, tta, run.temperature)
        scores, idx = probs.topk(topk, dim=1)
        for row in range(len(images)):
            path = paths[i]
            i += 1
            if errors[row]:
                print(f"cannot predict {path}: {errors[row]}", file=sys.stderr)
                results.append({"path": path, "label": None, "score": None, "error": errors[row]})
                continue
            top = [{"label": run.classes[j], "score": round(float(s), 6)} for s, j in zip(scores[row], idx[row])]
            results.append({"path": path, "label": top[0]["label"], "score": top[0]["score"], "topk": top})
    return results


__all__ = ["LoadedRun", "expand_paths", "is_image_file", "load_run", "predict_loader", "predict_paths",
           "predict_probs", "probs_from_logits", "view_logits"]
