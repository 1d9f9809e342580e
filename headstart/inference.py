"""Loading a trained model back from its run directory, and predicting on image files or folders."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from headstart.data.dataset import make_loader
from headstart.data.images import BadImageError, is_image_file, load_image
from headstart.data.sources import list_images
from headstart.data.transforms import eval_transform
from headstart.engine.checkpoint import load_weights, weights_metadata
from headstart.engine.runtime import Runtime, make_runtime
from headstart.model import TransferModel, build_model

TRAIN_FINGERPRINTS = "train_fingerprints.json"  # a run's training images' hashes: evaluate leaves out their copies


@dataclass
class LoadedRun:
    model: TransferModel
    classes: list[str]
    preprocessing: dict
    config: dict
    runtime: Runtime
    path: Path
    temperature: float = 1.0  # fitted on the run's validation images; probabilities are softmax(logits / T)


def load_run(run_dir: str | Path, device: str = "auto", precision: str = "auto") -> LoadedRun:
    """Rebuilds the architecture from ``config.yaml`` and loads ``best.safetensors``; needs nothing else."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise FileNotFoundError(f"{run_dir} is not a headstart run directory (no config.yaml); pass the --out "
                                "folder of a `headstart train` run.")
    if not (run_dir / "best.safetensors").is_file():
        raise FileNotFoundError(f"{run_dir} has no best.safetensors: its training did not finish an epoch.")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    classes = json.loads((run_dir / "classes.json").read_text())
    model = build_model(config["model"], len(classes), pretrained=False)
    model.load_state_dict(load_weights(run_dir / "best.safetensors"))
    runtime = make_runtime(device, precision)
    runtime.prepare(model).eval()
    # Runs from before calibration have no temperature: their scores stay as they were (T = 1).
    temperature = float(weights_metadata(run_dir / "best.safetensors").get("temperature", 1.0))
    return LoadedRun(model, classes, config["preprocessing"], config, runtime, run_dir, temperature)


def expand_paths(paths: list[str | Path]) -> list[str]:
    """Files as given, folders expanded recursively to their image files."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise ValueError(f"{p} holds no image files.")
            out += found
        elif p.is_file():
            out.append(str(p))
        else:
            raise FileNotFoundError(f"{p} does not exist.")
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
