"""Loading a trained model back from its run directory, and predicting on image files or folders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from headstart.core.choices import MAX_PIXELS
from headstart.core.hashing import KnownHashes
from headstart.core.preprocessing import Preprocessing
from headstart.core.progress import progress
from headstart.core.runtime import Runtime, make_runtime
from headstart.data.dataset import ImageFiles, flagged_collate, make_loader
from headstart.data.images import as_rgb_image, is_image_file
from headstart.data.rundir import RunDir, shipped_backbone_is_frozen
from headstart.data.sources import expand_paths
from headstart.data.transforms import eval_transform
from headstart.features.extract import extract_features
from headstart.features.forward import choose_engine, model_forward
from headstart.predict.base import Predictor
from headstart.zoo.model import TransferModel, build_model


@torch.inference_mode()
def cached_logits(model: TransferModel, paths: list[str], preprocessing: Preprocessing, runtime: Runtime,
                  batch_size: int = 64, workers: int | None = None, cache_dir: str | Path | None = None,
                  desc: str = "features", known_hashes: KnownHashes | None = None
                  ) -> tuple[torch.Tensor, np.ndarray, list[tuple[str, str]]]:
    """Logits (float32, CPU, ``(n, classes)``) of the images in ``paths`` through the feature cache: the backbone
    runs only for images it does not hold, then the head. Exact for a model whose backbone is what the cache was
    filled with (the key holds its weights' fingerprint, so a changed backbone can never hit). Returns the logits, the
    positions in ``paths`` of the images that could be decoded, and ``(path, reason)`` for the others.
    ``known_hashes``: content hashes already computed (:func:`~headstart.features.extract.extract_features`)."""
    feats = extract_features(model, paths, preprocessing, runtime, batch_size=batch_size, workers=workers,
                             cache_dir=cache_dir, desc=desc, verbose=False, known_hashes=known_hashes)
    x = torch.from_numpy(feats.array()).to(model.head.weight.device, model.head.weight.dtype)
    model.eval()
    return model.head(x).float().cpu(), feats.positions, feats.bad


def cached_logits_of(model: TransferModel, samples: list[tuple[str, int]], preprocessing: Preprocessing,
                     runtime: Runtime, batch_size: int = 64, workers: int | None = None, desc: str = "features",
                     known_hashes: KnownHashes | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """:func:`cached_logits` of labelled ``(path, label)`` samples: the logits, the labels of the images that could
    be decoded (in order), and ``(path, reason)`` for the others."""
    logits, positions, bad = cached_logits(model, [p for p, _ in samples], preprocessing, runtime, batch_size,
                                           workers, desc=desc, known_hashes=known_hashes)
    return logits, torch.as_tensor([samples[i][1] for i in positions], dtype=torch.long), bad


@dataclass
class LoadedRun(Predictor):
    """The ``torch`` engine: a run's network rebuilt from its files (:func:`load_run`), in eval mode, BatchNorm
    folded (:func:`headstart.features.forward.model_forward`), channels-last, in the precision of ``runtime``. A
    frozen-backbone run's files are answered through the feature cache (:func:`cached_logits`) unless ``tta``."""

    model: TransferModel
    classes: list[str]
    preprocessing: Preprocessing
    config: dict
    runtime: Runtime
    path: Path
    temperature: float = 1.0  # the run's (summary.json's temperature_source); probabilities are softmax(logits / T)
    frozen_backbone: bool = False  # the shipped weights' backbone is the pretrained one: features can be cached
    known_hashes: KnownHashes | None = field(default=None, repr=False)  # images' content hashes already computed
    _forwards: dict = field(default_factory=dict, repr=False)  # engine -> (state of the weights, eval forward)
    _transforms: dict = field(default_factory=dict, repr=False)  # max_pixels -> eval transform

    engine = "torch"

    def prepare(self, image, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
        """One RGB PIL image as the network takes it (the eval transform, which refuses an image whose resize would
        exceed ``max_pixels``). A service runs it as each upload is decoded, so only the small result waits."""
        if max_pixels not in self._transforms:
            self._transforms[max_pixels] = eval_transform(self.preprocessing, max_pixels)
        return self._transforms[max_pixels](image)

    def prepared_logits(self, ready: list, tta: bool = False) -> np.ndarray:
        x = torch.stack(ready)
        return view_logits(self.forward_for(x, len(ready), tta), x, self.runtime, tta).numpy()

    def view_logits(self, paths, known=None, tta: bool = False, batch_size: int = 64, workers: int | None = None):
        paths = list(paths)
        if self.frozen_backbone and not tta:
            logits, positions, bad = cached_logits(self.model, paths, self.preprocessing, self.runtime, batch_size,
                                                   workers, desc="predict",
                                                   known_hashes=self.known_hashes if known is None else known)
            return logits[None].numpy(), list(positions), bad
        loader = make_loader(ImageFiles(paths, eval_transform(self.preprocessing)), batch_size, shuffle=False,
                             workers=workers, collate_fn=flagged_collate)
        out, positions, bad, i = [], [], [], 0
        with torch.no_grad():
            for images, _, errors in loader:
                logits = view_logits(self.forward_for(images, len(paths), tta), images, self.runtime, tta)
                keep = [row for row in range(len(images)) if not errors[row]]
                bad += [(paths[i + row], errors[row]) for row in range(len(images)) if errors[row]]
                positions += [i + row for row in keep]
                out.append(logits[:, keep])
                i += len(images)
        logits = torch.cat(out, dim=1) if out else torch.empty((2 if tta else 1, 0, len(self.classes)))
        return logits.numpy(), positions, bad

    def forward_for(self, images: torch.Tensor, count: int, tta: bool = False):
        """The model's eval forward for a pass over ``count`` images like ``images`` (twice as many views with
        ``tta``): BatchNorm folded, or ONNX Runtime for large CPU passes
        (:func:`headstart.features.forward.model_forward`).

        Made once per engine and kept while the weights stay as they are (a service calls :meth:`predict` for
        every request): any change to ``model``'s tensors, in place or by assignment, makes a new one. Changes
        through ``.data`` bypass autograd's version counter and are not seen: clear ``_forwards`` after them.
        """
        count *= 2 if tta else 1
        engine = choose_engine(self.runtime, count, images.shape[-2], images.shape[-1])
        state = tuple((id(t), t._version) for t in self.model.state_dict(keep_vars=True).values())
        kept = self._forwards.get(engine)
        if kept is None or kept[0] != state:
            kept = state, model_forward(self.model, self.runtime, self.runtime.to_input(images[:1]), count, engine)
            self._forwards[engine] = kept
        return kept[1]


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
    return LoadedRun(model, classes, Preprocessing.of(config["preprocessing"]), config, runtime, run.path, temperature,
                     frozen_backbone=shipped_backbone_is_frozen(config, run.summary()))


@torch.no_grad()
def view_logits(model, images: torch.Tensor, runtime: Runtime, tta: bool = False) -> torch.Tensor:
    """Logits (float32, CPU) of a batch of eval-transformed images, one row of views per image: (views, n, classes).
    With ``tta`` the views are the image and its mirror image. ``model``: the module, or any callable on input
    batches (:meth:`LoadedRun.forward_for`)."""
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

    run.model.eval()
    logits, labels = [], []
    for images, y in progress(loader, desc):
        logits.append(view_logits(run.forward_for(images, len(loader.dataset), tta), images, run.runtime, tta))
        labels.append(torch.as_tensor(y))
    return torch.cat(logits, dim=1), torch.cat(labels)


def predict_paths(run: LoadedRun, paths: list[str], topk: int = 1, batch_size: int = 64,
                  workers: int | None = None, tta: bool = False) -> list[dict]:
    """Top-k predictions for each image; a file that cannot be read gets an ``error`` instead
    (:meth:`LoadedRun.predict_paths`)."""
    return run.predict_paths(paths, topk=topk, batch_size=batch_size, tta=tta, workers=workers)


__all__ = ["LoadedRun", "as_rgb_image", "expand_paths", "is_image_file", "load_run", "predict_loader", "predict_paths",
           "predict_probs", "probs_from_logits", "view_logits"]
