"""AdaBN: BatchNorm statistics recomputed on images of the target domain, without labels or gradients.

A network's BatchNorm layers normalise with a mean and variance per channel. When the images it meets later differ
in a systematic way (another scanner, camera, lighting, stain, season), the activations they produce are shifted
and scaled differently, and accuracy drops even though the features are still useful. Li et al. 2016 ("Revisiting
Batch Normalization for Practical Domain Adaptation") replace the statistics by the target domain's own: forward
passes over unlabelled target images, nothing else changes. Use ``headstart adapt RUN TARGET_DIR --out RUN2`` when
a trained model is deployed on images that look different from its training images and a few hundred of them
(unlabelled) are at hand; evaluate both runs on labelled target images if there are any. Models without BatchNorm
(ViTs, ConvNeXt's LayerNorm) have nothing to adapt.

Two methods:

- ``classic`` (Li et al.): each layer's statistics become the target's. This assumes the model's statistics are
  those of its training images, so that target features normalised by target statistics look like training
  features did. A fine-tuned model with frozen BatchNorm (headstart's default) kept ImageNet's statistics instead,
  and its head learned features normalised by those: swapping in the target's changes the features even for
  images like the training ones, and ruins such a model (measured in ``benchmarks/recipes.py``).
- ``aligned`` (the default when the run's training images are at hand): per channel, the new statistics map the
  target's activations onto the distribution the *training* images' activations had under the model as trained:
  with ``(mu0, var0)`` the layer's statistics, ``(mu_s, var_s)`` its input's on the training images and
  ``(mu_t, var_t)`` on the target, the new ``sd = sqrt(var_t) * sqrt(var0 + eps) / sqrt(var_s)`` and
  ``mean = mu_t - sd * (mu_s - mu0) / sqrt(var0 + eps)``. When the model's statistics are its training images'
  (``--bn train`` or ``--bn adabn``) this is exactly classic AdaBN; for a model with frozen ImageNet statistics it
  is what AdaBN means to do. Fed its own training images it changes nothing.

``auto`` (the default) is aligned when the training images are at hand (``source``, or the run's ``split.json``).
Without them it is classic only when the run's statistics are its training images' (``--bn adabn``, or ``--bn
train`` on every layer, as ``scratch`` does); for any other run it is an error, never a silent fallback to classic
(measured on frozen-BatchNorm runs, ``docs/recipes.md``: 15 to 27% accuracy where aligned kept 67 to 74%).

Both measure each layer's input after the layers before it have been adapted, in one pass: every batch is
normalised with the statistics adapted to that batch (as train-mode BatchNorm does), and the statistics pooled over
all batches are kept. Every image counts: a last batch smaller than the others (one image, say, whose variance over
a 1x1 feature map is zero) is normalised with the statistics pooled so far, itself included, not its own.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Iterable

import torch
import yaml
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from headstart.data.sources import DataSplits
from headstart.engine.runtime import Runtime
from headstart.strategy import resolve_train_from

METHODS = ("auto", "aligned", "classic")
SOURCE_IMAGES = 2000  # training images sampled for the source statistics: plenty for a mean and variance


class _Moments:
    """Per-channel mean and variance of a BatchNorm layer's input, pooled over every image seen (batches combined
    by Chan et al.'s parallel update, so large means do not swamp small variances in float32)."""

    def __init__(self):
        self.mean = self.m2 = None
        self.n = self.largest_batch = 0

    def add(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Adds a batch; returns the batch's own mean and (population) variance per channel."""
        x = x.float()
        dims = [d for d in range(x.ndim) if d != 1]
        var, mean = torch.var_mean(x, dims, correction=0)
        k = x.shape[0]
        if self.mean is None:
            self.mean, self.m2 = mean.clone(), var * k
        else:
            delta = mean - self.mean
            total = self.n + k
            self.mean = self.mean + delta * (k / total)
            self.m2 = self.m2 + var * k + delta * delta * (self.n * k / total)
        self.n += k
        self.largest_batch = max(self.largest_batch, k)
        return mean, var

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean, self.m2 / self.n


def _batchnorms(model: torch.nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _run(model, loaders: Iterable[DataLoader], runtime: Runtime, desc: str) -> int:
    seen = 0
    for loader in loaders:
        for images, _ in tqdm(loader, desc=desc, leave=False, disable=None if runtime.is_main else True):
            with runtime.autocast():
                model(runtime.to_input(images))
            seen += len(images)
    return seen


@torch.no_grad()
def batchnorm_input_statistics(model: torch.nn.Module, loaders: Iterable[DataLoader], runtime: Runtime,
                               desc: str = "statistics") -> dict[_BatchNorm, tuple[torch.Tensor, torch.Tensor]]:
    """Mean and variance of every BatchNorm layer's input over the images of ``loaders``, the model in eval mode
    and unchanged (what the layers see at inference)."""
    bns = _batchnorms(model)
    moments = {m: _Moments() for m in bns}

    def record(bn, args):
        moments[bn].add(args[0])

    hooks = [m.register_forward_pre_hook(record) for m in bns]
    model.eval()
    try:
        if _run(model, loaders, runtime, desc) < 2:
            raise ValueError("measuring BatchNorm statistics needs at least 2 images; give it more images.")
    finally:
        for h in hooks:
            h.remove()
    return {m: moments[m].result() for m in bns}


def _aligned(bn: _BatchNorm, original: tuple, source: tuple | None, mean_t: torch.Tensor, var_t: torch.Tensor):
    """The statistics that give target inputs (mean_t, var_t) the normalised distribution the source inputs had
    (the module docstring's formula); classic AdaBN without ``source``."""
    if source is None:
        return mean_t, var_t
    mu0, var0 = original
    mu_s, var_s = source
    sd0 = (var0 + bn.eps).sqrt()
    usable = var_s > 1e-12  # a channel silent on the training images has nothing to align to: left as it was
    a = (mu_s - mu0) / sd0
    b = var_s.clamp_min(1e-12).sqrt() / sd0
    sd = var_t.sqrt() / b
    mean = torch.where(usable, mean_t - a * sd, mu0)
    var = torch.where(usable, (sd * sd - bn.eps).clamp_min(0), var0)
    return mean, var


@torch.no_grad()
def adapt_batchnorm(model: torch.nn.Module, loaders: Iterable[DataLoader], runtime: Runtime,
                    source: Iterable[DataLoader] | None = None, desc: str = "adabn") -> int:
    """Sets every BatchNorm layer's running mean and variance for the images of ``loaders`` (the target domain);
    parameters, dropout and everything else stay as they are. Returns the number of target images seen.

    Without ``source``, classic AdaBN: the statistics become the target's. With ``source`` (loaders of the
    training images), aligned AdaBN: the target's activations are mapped onto the training images' (module
    docstring). The model is left in eval mode.
    """
    bns = _batchnorms(model)
    if not bns:
        return 0
    reference = batchnorm_input_statistics(model, source, runtime, desc=f"{desc} (training images)") \
        if source is not None else {}
    original = {m: (m.running_mean.clone(), m.running_var.clone()) for m in bns}
    moments = {m: _Moments() for m in bns}

    def use_batch_statistics(bn, args):
        pooled = moments[bn]
        leftover = len(args[0]) < pooled.largest_batch
        mean, var = pooled.add(args[0])
        if leftover:  # a few images' own statistics are noise (one image's may have no variance at all)
            mean, var = pooled.result()
        new_mean, new_var = _aligned(bn, original[bn], reference.get(bn), mean, var)
        bn.running_mean.copy_(new_mean)
        bn.running_var.copy_(new_var)

    hooks = [m.register_forward_pre_hook(use_batch_statistics) for m in bns]
    model.eval()
    try:
        seen = _run(model, loaders, runtime, desc)
        if seen < 2:
            raise ValueError(f"AdaBN needs at least 2 images to measure statistics, got {seen}; give it more images.")
    except BaseException:
        for bn in bns:  # interrupted: the model is left as it was, not with one batch's statistics
            bn.running_mean.copy_(original[bn][0])
            bn.running_var.copy_(original[bn][1])
        raise
    finally:
        for h in hooks:
            h.remove()
    for bn in bns:
        new_mean, new_var = _aligned(bn, original[bn], reference.get(bn), *moments[bn].result())
        bn.running_mean.copy_(new_mean)
        bn.running_var.copy_(new_var)
    return seen


def _split_bases(run_dir: Path, config: dict) -> list[Path]:
    """Folders that relative ``split.json`` paths may be relative to, most likely first: the current folder, the
    folder ``train`` ran in (the run's location less the config's ``out``), folders above the run that hold the
    config's ``data``, and the data folder itself and its parent (for a CSV manifest, the CSV's folder)."""
    bases = [Path.cwd()]
    runs = [run_dir.resolve()] + ([Path(config["adapted"]["from_run"])] if config.get("adapted") else [])
    if config.get("out") and not Path(config["out"]).is_absolute():
        bases += [a for run in runs for a in run.parents if (a / config["out"]).resolve() == run]
    if config.get("data"):
        data = Path(config["data"])
        if not data.is_absolute():
            bases += [a for run in runs for a in run.parents if (a / data).exists()]
        if (found := next((b / data for b in bases if (b / data).exists()), None)) is not None:
            folder = found.resolve() if found.is_dir() else found.resolve().parent
            bases += [folder, folder.parent]
    return list(dict.fromkeys(bases))


def training_images(run_dir: Path, limit: int = SOURCE_IMAGES, seed: int = 0) -> list[str]:
    """The run's training images (``split.json``) that can be found, at most ``limit`` of them, sampled.

    Paths are absolute in runs made since ``split.json`` stored them so; older runs hold paths relative to the folder
    ``train`` ran in, which are looked for from the folders :func:`_split_bases` lists, so they are found from any
    current folder while the run and its data stay where they were (or move together).
    """
    split, config = run_dir / "split.json", run_dir / "config.yaml"
    if not split.is_file():
        return []
    train = [Path(p) for p, _ in DataSplits.from_json(json.loads(split.read_text())).train]
    paths = [str(p) for p in train if p.is_absolute() and p.is_file()]
    relative = [p for p in train if not p.is_absolute()]
    if relative:
        probe = relative[:: max(1, len(relative) // 20)]
        bases = _split_bases(run_dir, yaml.safe_load(config.read_text()) if config.is_file() else {})
        base = next((b for b in bases if any((b / p).is_file() for p in probe)), None)
        if base is not None:
            paths += [str(base / p) for p in relative if (base / p).is_file()]
    if len(paths) > limit:
        paths = random.Random(seed).sample(paths, limit)
    return paths


def statistics_are_training_images(config: dict, num_groups: int) -> bool:
    """Whether a run's BatchNorm statistics are its training images' (the assumption of classic AdaBN): some phase
    recomputed them on those images (``bn: adabn``), or let every layer's follow them (``bn: train`` with every
    group training, as ``scratch`` does). Frozen BatchNorm keeps the pretrained statistics."""
    return any(p.get("bn") == "adabn" or (p.get("bn") == "train"
                                          and resolve_train_from(p.get("train_from", -1), num_groups) == 0)
               for p in config.get("strategy_phases") or [])


def _missing_training_images(run_dir: Path, own_statistics: bool) -> ValueError:
    found = (f"{run_dir}'s training images cannot be found (split.json's paths, tried from here, from the folder it "
             "was trained in and from its data folder), and aligned AdaBN needs them")
    if own_statistics:  # only --method aligned gets here
        return ValueError(f"{found}. Pass a folder of its training images with --source DIR, or use --method classic, "
                          "which suits this run: its BatchNorm statistics are its training images'.")
    return ValueError(
        f"{found}: this run's BatchNorm statistics are not its training images' (frozen BatchNorm keeps the "
        "pretrained ones). Pass a folder of its training images with --source DIR, or --method classic knowing that "
        "classic AdaBN assumes the run's BatchNorm statistics are its training images' (on frozen-BatchNorm runs it "
        "measured 15-27% accuracy where aligned kept 67-74%).")


def adapt_run(run_dir: str | Path, target: str | Path, out: str | Path, batch_size: int = 64,
              workers: int | None = None, device: str = "auto", overwrite: bool = False, method: str = "auto",
              source: str | Path | None = None) -> dict:
    """Writes a copy of the run in ``run_dir`` to ``out``, its BatchNorm statistics adapted to every image found
    (recursively) in ``target``; ``predict`` and ``evaluate`` use it like any run. Returns what was done.

    Args:
        run_dir: a ``headstart train`` run.
        target: a folder of unlabelled images from the target domain (class subfolders are fine; labels unused).
        out: the new run directory.
        batch_size: images per forward pass (at least 2); larger batches give steadier statistics.
        method: ``aligned``, ``classic`` or ``auto``: aligned when the training images are at hand (``source`` or
            ``split.json``); without them classic if the run's statistics are its training images'
            (:func:`statistics_are_training_images`), else a ``ValueError`` saying what to pass.
        source: a folder of the training domain's images for ``aligned``; default the run's own training images
            (:func:`training_images`).
    """
    from headstart.data.dataset import ImageDataset, make_loader, scan
    from headstart.data.transforms import eval_transform
    from headstart.engine.checkpoint import save_weights, write_json
    from headstart.inference import TRAIN_FINGERPRINTS, expand_paths, load_run

    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got '{method}'.")
    if method == "classic" and source is not None:
        raise ValueError("--source is for aligned AdaBN and classic does not use it; drop --source or --method "
                         "classic.")
    if batch_size < 2:
        raise ValueError(f"--batch-size must be at least 2 for AdaBN (one image's statistics are not a domain's), "
                         f"got {batch_size}.")
    run_dir, out = Path(run_dir), Path(out)
    if out.resolve() == run_dir.resolve():
        raise ValueError(f"--out must be a new folder, not the run itself ({run_dir}); the original run is kept.")
    if (out / "config.yaml").exists() and not overwrite:
        raise ValueError(f"{out} already holds a run; pass another --out, or --overwrite to replace it.")
    run = load_run(run_dir, device=device)
    n_bn = len(_batchnorms(run.model))
    own_statistics = statistics_are_training_images(run.config, len(run.model.group_names))

    def folder_images(folder, what: str) -> list[str]:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder} is not a folder; pass a folder of {what} images.")
        return expand_paths([folder])

    def loader_for(paths: list[str], name) -> tuple[DataLoader, list]:
        samples, bad = scan([(p, 0) for p in paths])
        if len(samples) < 2:
            raise ValueError(f"{name} holds {len(samples)} readable image(s); AdaBN needs at least 2 (a few hundred "
                             "give steady statistics).")
        # Every image is used: a small last batch is normalised with the pooled statistics (adapt_batchnorm).
        return make_loader(ImageDataset(samples, eval_transform(run.preprocessing)), min(batch_size, len(samples)),
                           shuffle=False, workers=workers), bad

    loader, bad = loader_for(folder_images(target, "(unlabelled) target-domain"), target)
    source_loader, source_from = None, None
    if method != "classic" and n_bn:
        if source is not None:
            source_loader, _ = loader_for(folder_images(source, "training-domain"), source)
            source_from = str(Path(source).resolve())
        elif (found := training_images(run_dir)):
            source_loader, _ = loader_for(found, "the run's training images")
            source_from = f"{len(found)} of the run's training images (split.json)"
        elif method == "aligned" or not own_statistics:
            raise _missing_training_images(run_dir, own_statistics)
    seen = adapt_batchnorm(run.model, [loader], run.runtime,
                           source=[source_loader] if source_loader is not None else None) if n_bn else 0

    out.mkdir(parents=True, exist_ok=True)
    for name in ("classes.json", "split.json", "skipped.json", TRAIN_FINGERPRINTS):  # the same training images
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)
    used = "aligned" if source_loader is not None else "classic"
    info = {"from_run": str(run_dir.resolve()), "target": str(Path(target).resolve()), "images": seen,
            "batchnorm_layers": n_bn, "unreadable": len(bad), "method": used,
            "reference": "AdaBN (Li et al. 2016)" + (", aligned to the training images' statistics" if
                                                      used == "aligned" else "")}
    if source_from:
        info["source"] = source_from
    if n_bn and used == "classic" and not own_statistics:
        info["warning"] = (f"{run_dir}'s BatchNorm statistics are not its training images' (frozen BatchNorm keeps "
                           "the pretrained ones), so classic AdaBN may make it worse; pass its training images with "
                           "--source DIR (aligned AdaBN), and check on labelled target images.")
    config = {**run.config, "adapted": info}
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    save_weights(out / "best.safetensors", run.model, {"model": run.config["model"], "classes": run.classes,
                                                       "preprocessing": run.preprocessing, "adapted": info})
    write_json(out / "adapt.json", info)
    return info
